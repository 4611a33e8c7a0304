"""The ``art-ssni`` command: evaluate defences, compute reference statistics, sanity checks.

``art-ssni evaluate`` with no arguments runs the embedded default (scikit-learn digits, the
shipped classifier and diffusion model): no defence, DiffPure with a fixed level, and DiffPure
with SSNI-L and SSNI-N, under the paper's PGD-EOT attack and the selector-aware attack.
``--method`` picks DiffPure, GDMP, GNS, DAC or MANI-Pure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from .diffusion.model import DiffusionModel
from .evaluation.runner import ATTACKS, Evaluation, Row, barrier
from .models.defended import DefendedClassifier
from .noise import ATTENTION_LAYERS, EPSNorm, ReferenceStats, SSNILinear, SSNISigmoid
from .purification import DAC, GDMP, GNS, DiffPure, MANIPure

NOISES = ("fixed", "ssni-l", "ssni-n")
METHODS = {"diffpure": DiffPure, "gdmp": GDMP, "gns": GNS, "dac": DAC, "mani-pure": MANIPure}
LABELS = {"diffpure": "DiffPure", "gdmp": "GDMP", "gns": "GNS", "dac": "DAC"}
LABELS["mani-pure"] = "MANI-Pure"


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


@dataclass
class Setup:
    """Everything an evaluation needs, whatever its source (embedded default or a preset)."""

    name: str
    diffusion: DiffusionModel
    classifier: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    stats: ReferenceStats | None
    defaults: dict[str, Any]
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    purify_size: tuple[int, int] | None = None
    purifier_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)


# The embedded default's settings, chosen by benchmarks/sweep_embedded.py (benchmarks/README.md).
DIGITS_DEFAULTS: dict[str, Any] = {
    "t_star": 60,
    "steps": 10,
    "surrogate_steps": 5,
    "gradient": "full",
    "num_levels": 20,
    "tau": None,
    "bias": 0,
    "norm": "Linf",
    "eps": 0.2,
    "step": 0.025,
    "iterations": 10,
    "eot": 2,
    "n_images": 128,
    "draws": 8,
    "batch_size": 64,
    "selector_weight": 0.5,
}
QUICK = {"iterations": 3, "eot": 2, "n_images": 32, "draws": 3, "batch_size": 32}

# --- heterogeneous noise on the embedded default (issue 10) --------------------------------
# DAC and MANI-Pure at DiffPure's t* = 60 and 10 network rows per image: DAC's grid stride 6
# gives 5 + 5 steps (t_small = 30, the published ratio 1/2), its surrogate 2 calls; its mask
# reads the last ReLU of each conv stage of the digits classifier (8x8 and 4x4 maps) with
# threshold 0.5, our choice: the published 0.9 marks 7 % of an 8x8 digit, 0.5 about 36 %
# (measured on 200 test digits). MANI-Pure on 8x8 images:
# 4 radial bands and a low-frequency disk of radius 2 (of at most 5.7).
EMBEDDED_KWARGS: dict[str, dict[str, Any]] = {
    "dac": {
        "t_large": 60,
        "t_small": 30,
        "stride": 6,
        "resample": 3,
        "surrogate_stride": 30,
        "votes": 20,
        "mask_layers": ATTENTION_LAYERS["digits"],
        "threshold": 0.5,
    },
    "mani-pure": {"radius": 2.0, "delta": 0.3, "bands": 4, "gamma": 1.8},
}


def _method_kwargs(
    args: argparse.Namespace, setup: Setup, settings: dict[str, Any], classifier: torch.nn.Module
) -> dict[str, Any]:
    """The purifier's constructor arguments: the setup's, at the run's t* and steps. DAC's
    t* is t_large (t_small keeps its ratio) and ``--steps`` sets its grid stride."""
    from .presets import materialise_kwargs

    kwargs = dict(setup.purifier_kwargs.get(args.method, {}))
    if args.method == "dac":
        t_large = settings["t_star"]
        ratio = Fraction(kwargs["t_small"], kwargs["t_large"])
        kwargs.update(t_large=t_large, t_small=max(1, round(t_large * ratio)))
        if getattr(args, "steps", None) is not None:
            kwargs["stride"] = -(-t_large // args.steps)
    elif args.method != "gns":
        kwargs.update(
            t_star=settings["t_star"],
            steps=settings["steps"],
            surrogate_steps=settings["surrogate_steps"],
        )
    return materialise_kwargs(args.method, kwargs, classifier)


# --- end of heterogeneous noise --------------------------------------------------------------


def _parse_eps(text: str) -> float:
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError) as err:
        raise argparse.ArgumentTypeError(
            f"epsilon must be a number such as 0.03 or 8/255, got {text!r}"
        ) from err
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"epsilon must lie in (0, 1] for images in [0, 1], got {text}"
        )
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _choices(allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        bad = [item for item in items if item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad) or 'empty value'}; choose from {', '.join(allowed)}"
            )
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="art-ssni", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="digits", help="digits (embedded) or a paper preset")
        p.add_argument("--method", default="diffpure", choices=sorted(METHODS))
        p.add_argument("--diffusion-checkpoint", help="diffusion model file or folder")
        p.add_argument("--classifier-checkpoint", help="classifier checkpoint file")
        p.add_argument("--data-dir", help="data set location (CIFAR-10 / ImageNet presets)")
        p.add_argument("--stats", help="reference statistics file (safetensors)")
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    ev = sub.add_parser("evaluate", help="attack and evaluate defences, write a report")
    common(ev)
    ev.add_argument(
        "--noise",
        type=_choices(NOISES),
        default=list(NOISES),
        help="comma-separated noise policies (fixed, ssni-l, ssni-n)",
    )
    ev.add_argument(
        "--attack",
        type=_choices(sorted(ATTACKS)),
        default=["pgd-eot", "selector-aware"],
        help="comma-separated attacks; selector-aware applies to SSNI rows only",
    )
    ev.add_argument("--norm", choices=("Linf", "L2"))
    ev.add_argument("--eps", type=_parse_eps, help="attack budget, e.g. 8/255 or 0.5")
    ev.add_argument("--step", type=_parse_eps, help="attack step size")
    ev.add_argument("--iterations", type=_positive_int)
    ev.add_argument("--eot", type=_positive_int, help="EOT draws per gradient")
    ev.add_argument("--n-images", type=_positive_int)
    ev.add_argument("--draws", type=_positive_int, help="defence draws to judge accuracy")
    ev.add_argument("--batch-size", type=_positive_int)
    ev.add_argument("--gradient", choices=("full", "surrogate", "bpda"))
    ev.add_argument("--t-star", type=_positive_int)
    ev.add_argument("--steps", type=_positive_int, help="reverse steps of the defence")
    ev.add_argument("--tau", type=float, help="SSNI-N temperature")
    ev.add_argument("--bias", type=float, help="SSNI bias b (steps)")
    ev.add_argument("--selector-weight", type=float)
    ev.add_argument("--no-baseline", action="store_true", help="skip the undefended row")
    ev.add_argument("--quick", action="store_true", help="smoke run: few images and steps")
    ev.add_argument("--out", default="runs/evaluate", help="output folder (resumable)")
    ev.add_argument("--overwrite", action="store_true", help="discard a previous run in --out")

    sa = sub.add_parser("sanity", help="gradient-masking checks on one defence")
    common(sa)
    sa.add_argument("--noise", choices=NOISES, default="ssni-n")
    sa.add_argument("--norm", choices=("Linf", "L2"))
    sa.add_argument("--eps", type=_parse_eps)
    sa.add_argument("--step", type=_parse_eps)
    sa.add_argument("--iterations", type=_positive_int)
    sa.add_argument("--eot", type=_positive_int)
    sa.add_argument("--n-images", type=_positive_int)
    sa.add_argument("--draws", type=_positive_int)
    sa.add_argument("--quick", action="store_true")
    sa.add_argument("--out", default="runs/sanity", help="output folder")

    st = sub.add_parser("stats", help="compute reference EPS statistics of clean images")
    common(st)
    st.add_argument("--n-images", type=_positive_int, default=5000)
    st.add_argument("--num-levels", type=_positive_int)
    st.add_argument("--batch-size", type=_positive_int, default=256)
    st.add_argument("--out", required=True, help="statistics file to write (.safetensors)")
    return parser


def _zoo_stats_path() -> Path:
    from .models.zoo import zoo_root

    return zoo_root() / "digits_stats.safetensors"


def _subset(n_total: int, n: int, seed: int) -> torch.Tensor:
    """The fixed-seed subset of n indices out of n_total (sorted)."""
    from .data.cifar10 import fixed_subset

    if n > n_total:
        raise CommandError(f"asked for {n} images but the split holds only {n_total}")
    return fixed_subset(n, n_total, seed=seed).sort().values


def embedded_setup(args: argparse.Namespace, split: str = "test") -> Setup:
    """The digits default: shipped classifier, diffusion model and reference statistics."""
    from .data.digits import load_digits
    from .models.zoo import load_embedded_classifier, load_embedded_eps_net

    diffusion = DiffusionModel(load_embedded_eps_net(), image_shape=(1, 8, 8), name="digits")
    x, y = load_digits(split)
    stats = None
    path = Path(args.stats) if getattr(args, "stats", None) else _zoo_stats_path()
    if path.exists():
        stats = ReferenceStats.load(path)
    elif getattr(args, "stats", None):
        raise CommandError(f"no statistics file at {path}")
    return Setup(
        "digits",
        diffusion,
        load_embedded_classifier(),
        x,
        y,
        stats,
        DIGITS_DEFAULTS,
        purifier_kwargs=EMBEDDED_KWARGS,
    )


PRESET_EXTRAS: dict[str, dict[str, Any]] = {
    "cifar10": {"draws": 10, "batch_size": 64, "selector_weight": 0.5},
    "imagenet": {"draws": 10, "batch_size": 8, "selector_weight": 0.5},
}


def preset_setup(args: argparse.Namespace, split: str = "test") -> Setup:
    """A paper preset with the user's checkpoints and data (nothing is downloaded)."""
    from .presets import (
        get_preset,
        load_preset_classifier,
        load_preset_diffusion,
        load_preset_images,
    )

    preset = get_preset(args.preset)
    method = preset.method(args.method)
    kwargs = method.kwargs()
    if not args.diffusion_checkpoint:
        raise CommandError(f"preset {args.preset!r} needs --diffusion-checkpoint PATH")
    if split == "test" and not args.classifier_checkpoint:
        raise CommandError(f"preset {args.preset!r} needs --classifier-checkpoint PATH")
    stats = ReferenceStats.load(args.stats) if args.stats else None
    n_images = getattr(args, "n_images", None)
    x, y = load_preset_images(preset, split, args.data_dir, n_images=n_images, seed=args.seed)
    defaults = {
        "t_star": method.t_star,
        "steps": kwargs.get("steps"),
        "surrogate_steps": kwargs.get("surrogate_steps"),
        "gradient": preset.attack.gradient,
        "num_levels": preset.ssni.num_levels,
        "tau": preset.ssni.tau,
        "bias": preset.ssni.bias,
        "norm": preset.attack.norm,
        "eps": preset.attack.epsilon,
        "step": preset.attack.step,
        "iterations": preset.attack.iterations,
        "eot": preset.attack.eot,
        "n_images": preset.num_images,
        **PRESET_EXTRAS[preset.dataset],
    }
    classifier = (
        load_preset_classifier(preset, args.classifier_checkpoint)
        if args.classifier_checkpoint
        else torch.nn.Identity()
    )
    return Setup(
        preset.dataset,
        load_preset_diffusion(preset, args.diffusion_checkpoint),
        classifier,
        x,
        y,
        stats,
        defaults,
        purifier_kwargs={m.method: m.kwargs() for m in preset.methods},
    )


def load_setup(args: argparse.Namespace, split: str = "test") -> Setup:
    if args.preset == "digits":
        return embedded_setup(args, split)
    from .presets import list_presets

    if args.preset not in list_presets():
        raise CommandError(
            f"unknown preset {args.preset!r}; choose from digits, {', '.join(list_presets())}"
        )
    return preset_setup(args, split)


def _settings(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    settings = dict(setup.defaults)
    if args.quick:
        settings.update(QUICK)
    for name in (
        "t_star",
        "steps",
        "gradient",
        "tau",
        "bias",
        "norm",
        "eps",
        "step",
        "iterations",
        "eot",
        "n_images",
        "draws",
        "batch_size",
        "selector_weight",
    ):
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    return settings


def _policy(noise: str, setup: Setup, settings: dict[str, Any], eps_norm: EPSNorm | None):
    if noise == "fixed":
        return None
    if setup.stats is None:
        raise CommandError(
            "SSNI needs reference statistics: pass --stats FILE (make one with `art-ssni stats`)"
        )
    t_star, bias = settings["t_star"], settings["bias"]
    if noise == "ssni-l":
        return SSNILinear(eps_norm, setup.stats, t_star, bias)
    tau = settings["tau"] if settings["tau"] is not None else setup.stats.std
    return SSNISigmoid(eps_norm, setup.stats, t_star, bias, tau)


def build_rows(args: argparse.Namespace, setup: Setup, settings: dict[str, Any]) -> list[Row]:
    device = torch.device(args.device)
    diffusion = setup.diffusion.to(device)
    classifier = setup.classifier.to(device)
    attack = {
        "norm": settings["norm"],
        "eps": settings["eps"],
        "step": settings["step"],
        "iterations": settings["iterations"],
        "eot": settings["eot"],
    }
    rows = []
    if not args.no_baseline:
        undefended = DefendedClassifier(None, classifier, setup.mean, setup.std)
        rows.append(Row("none-pgd", "No defence", undefended, "pgd-eot", {**attack, "eot": 1}))
    eps_norm = EPSNorm(diffusion, settings["num_levels"]) if setup.stats is not None else None
    method = METHODS[args.method]
    label = LABELS[args.method]
    for noise in args.noise:
        policy = _policy(noise, setup, settings, eps_norm)
        kwargs = _method_kwargs(args, setup, settings, classifier)
        purifier = method(diffusion, noise=policy, gradient=settings["gradient"], **kwargs)
        model = DefendedClassifier(
            purifier, classifier, setup.mean, setup.std, purify_size=setup.purify_size
        )
        name = (
            f"{label} (t*={purifier.t_star})" if noise == "fixed" else f"{label} + {noise.upper()}"
        )
        for attack_name in args.attack:
            if attack_name == "selector-aware" and policy is None:
                continue
            kwargs_attack = dict(attack)
            if attack_name == "selector-aware":
                kwargs_attack["weight"] = settings["selector_weight"]
            rows.append(
                Row(f"{args.method}-{noise}-{attack_name}", name, model, attack_name, kwargs_attack)
            )
    return rows


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return torch.distributed.get_rank(), world


def cmd_evaluate(args: argparse.Namespace) -> int:
    setup = load_setup(args)
    settings = _settings(args, setup)
    index = _subset(setup.x.shape[0], settings["n_images"], args.seed)
    x, y = setup.x[index], setup.y[index]
    rank, world = _distributed()
    rows = build_rows(args, setup, settings)
    out = Path(args.out)
    if args.overwrite and rank == 0 and out.exists():
        shutil.rmtree(out)
    barrier(world)
    config = {
        "preset": args.preset,
        "dataset": setup.name,
        "method": args.method,
        "noise": args.noise,
        "attacks": args.attack,
        "seed": args.seed,
        "rows": [row.key for row in rows],
        "indices": index.tolist(),
        **{k: v for k, v in settings.items() if k != "batch_size"},
        "batch_size": settings["batch_size"],
    }
    evaluation = Evaluation(
        out,
        config,
        batch_size=settings["batch_size"],
        draws=settings["draws"],
        seed=args.seed,
        rank=rank,
        world=world,
        progress=not args.no_progress,
    )
    if rank == 0:
        evaluation.check_config()
    barrier(world)
    merged = evaluation.run(rows, x, y)
    if rank != 0:
        return 0
    from .evaluation.report import format_table, write_report

    results = {
        "config": {
            "dataset": setup.name,
            "preset": args.preset,
            "n_images": int(x.shape[0]),
            "draws": settings["draws"],
            "seed": args.seed,
            "processes": world,
            "attack": {k: settings[k] for k in ("norm", "eps", "iterations", "eot", "step")},
            "defence": {
                k: settings[k]
                for k in (
                    "t_star",
                    "steps",
                    "surrogate_steps",
                    "gradient",
                    "num_levels",
                    "tau",
                    "bias",
                )
            },
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.device}",
        },
        "rows": merged,
    }
    print(format_table(results))
    written = write_report(results, out)
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def cmd_sanity(args: argparse.Namespace) -> int:
    from .evaluation.runner import atomic_write_bytes
    from .evaluation.sanity import sanity_checks

    setup = load_setup(args)
    settings = _settings(args, setup)
    index = _subset(setup.x.shape[0], settings["n_images"], args.seed)
    device = torch.device(args.device)
    x, y = setup.x[index].to(device), setup.y[index].to(device)
    args.noise, args.attack, args.no_baseline = [args.noise], ["pgd-eot"], False
    baseline, defended = build_rows(args, setup, settings)[:2]
    defended.model.purifier.generator = torch.Generator().manual_seed(args.seed)
    report = sanity_checks(
        defended.model,
        baseline.model,
        x,
        y,
        norm=settings["norm"],
        eps=settings["eps"],
        step=settings["step"],
        iterations=settings["iterations"],
        eot=settings["eot"],
        draws=settings["draws"],
        seed=args.seed,
    )
    report["defence"] = defended.method
    report["gradient"] = settings["gradient"]
    text = json.dumps(report, indent=2)
    print(text)
    atomic_write_bytes(Path(args.out) / "sanity.json", text.encode())
    return 0 if report["passed"] else 1


def cmd_stats(args: argparse.Namespace) -> int:
    setup = load_setup(args, split="train")
    num_levels = args.num_levels or setup.defaults["num_levels"]
    n = min(args.n_images, setup.x.shape[0])
    index = _subset(setup.x.shape[0], n, args.seed)
    diffusion = setup.diffusion.to(torch.device(args.device))
    eps_norm = EPSNorm(diffusion, num_levels)
    stats = ReferenceStats.from_images(
        eps_norm,
        setup.x[index],
        batch_size=args.batch_size,
        generator=args.seed,
        progress=not args.no_progress,
    )
    stats.save(args.out)
    print(json.dumps({"file": args.out, **stats.summary()}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"evaluate": cmd_evaluate, "sanity": cmd_sanity, "stats": cmd_stats}
    try:
        return commands[args.command](args)
    except (CommandError, ValueError, FileNotFoundError) as err:
        print(f"art-ssni: error: {err}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
