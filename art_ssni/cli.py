"""The ``art-ssni`` command: evaluate defences, compute reference statistics, sanity checks.

``art-ssni evaluate`` with no arguments runs the embedded default (scikit-learn digits, the
shipped classifier and diffusion model): no defence, DiffPure with a fixed level, and DiffPure
with SSNI-L and SSNI-N, under the paper's PGD-EOT attack and the selector-aware attack.
``--method`` picks DiffPure, GDMP, GNS, DAC or MANI-Pure. The command only parses its flags;
the work is :func:`art_ssni.evaluate` and its configuration :mod:`art_ssni.config`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from .config import ComputeConfig, Overrides
from .diffusion.model import CONVENTIONS
from .diffusion.sampler import SAMPLERS
from .evaluation.registry import ATTACKS
from .hardware import DTYPES, pick_device
from .noise.registry import NOISES
from .presets import list_presets
from .purification.engine import GRADIENT_MODES
from .purification.registry import METHODS
from .sources import Sources


def _number(convert, test, wanted: str):
    """An argparse type: ``convert(text)`` that passes ``test``, else an error naming it."""

    def parse(text: str):
        try:
            value = convert(text)
        except (ValueError, ZeroDivisionError):
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


_fraction = _number(lambda t: float(Fraction(t)), lambda v: 0 < v <= 1, "a number in (0, 1]")
POSITIVE = _number(int, lambda v: v >= 1, "an integer >= 1")
COUNT = _number(int, lambda v: v >= 0, "an integer >= 0")
FINITE = _number(float, math.isfinite, "a finite number")
POSITIVE_NUMBER = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def _choices(allowed: Sequence[str]):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        bad = [item for item in items if item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad) or 'empty value'}; choose from {', '.join(allowed)}"
            )
        return items

    return parse


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("art-ssni")
    except PackageNotFoundError:
        return "unknown (not installed)"


EPILOG = (
    f"presets: {', '.join(list_presets())} (the first two ship their models); "
    f"methods: {', '.join(METHODS)}; noise: {', '.join(NOISES)}; attacks: {', '.join(ATTACKS)}"
)


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps the epilog between words only, so preset names such as imagenet-linf stay whole."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
            break_on_hyphens=False,
        )  # fmt: skip


Flags = list[tuple[str, dict[str, Any]]]
COMMON: Flags = [
    ("--preset", {"default": "cifar10-embedded", "choices": list_presets(), "metavar": "PRESET"}),
    ("--method", {"choices": tuple(METHODS)}),
    ("--diffusion-checkpoint", {"help": "diffusion model file or folder"}),
    ("--classifier-checkpoint", {"help": "classifier checkpoint file"}),
    ("--classifier", {"metavar": "MODULE:CALLABLE", "help": "your classifier's factory"}),
    ("--data", {"help": "your images: .npz of x (NCHW) and y, or an ImageFolder tree"}),
    ("--data-dir", {"help": "data set location (CIFAR-10 / ImageNet presets)"}),
    ("--stats", {"help": "reference statistics file (safetensors)"}),
    ("--sampler", {"choices": SAMPLERS, "help": "reverse sampler (default ddpm)"}),
    ("--convention", {"choices": CONVENTIONS, "help": "how the diffusion model is queried"}),
    ("--device", {"help": "cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)"}),
    ("--dtype", {"choices": DTYPES, "help": "diffusion network's compute dtype (default float32)"}),
    ("--channels-last", {"action": "store_true", "default": None}),
    ("--compile", {"action": "store_true", "default": None, "help": "torch.compile the network"}),
    ("--seed", {"type": int, "default": 0}),
    ("--no-progress", {"action": "store_true", "help": "hide progress bars"}),
]
BUDGET: Flags = [
    ("--norm", {"choices": ("Linf", "L2")}),
    ("--eps", {"type": _fraction, "help": "attack budget, e.g. 8/255 or 0.5"}),
    ("--step", {"type": _fraction, "help": "attack step size"}),
    ("--iterations", {"type": POSITIVE}),
    ("--eot", {"type": POSITIVE, "help": "EOT draws per gradient"}),
    ("--n-images", {"type": POSITIVE}),
    ("--draws", {"type": POSITIVE, "help": "defence draws to judge accuracy"}),
    ("--quick", {"action": "store_true", "help": "smoke run: few images and steps"}),
]
EVALUATE: Flags = [
    ("--noise", {"dest": "noises", "type": _choices(tuple(NOISES)), "help": "policies, a,b"}),
    ("--attack", {"dest": "attacks", "type": _choices(tuple(ATTACKS)), "help": "attacks, a,b"}),
    ("--restarts", {"type": POSITIVE, "help": "random restarts, best kept"}),
    ("--judge-draws", {"type": COUNT, "help": "N > 0: in-loop rows judged over N draws"}),
    ("--criterion", {"dest": "criteria", "type": _choices(("worst", "vote"))}),
    ("--max-rows", {"type": POSITIVE, "help": "rows per defence pass when EOT is batched"}),
    ("--batch-size", {"type": POSITIVE}),
    ("--gradient", {"choices": GRADIENT_MODES}),
    ("--t-star", {"type": POSITIVE}),
    ("--steps", {"type": POSITIVE, "help": "reverse steps of the defence"}),
    ("--tau", {"type": POSITIVE_NUMBER, "help": "SSNI-N temperature"}),
    ("--bias", {"type": FINITE, "help": "SSNI bias b (steps)"}),
    ("--selector-weight", {"type": POSITIVE_NUMBER}),
    ("--no-baseline", {"dest": "baseline", "action": "store_false", "default": None}),
    ("--out", {"default": "runs/evaluate", "help": "output folder (resumable)"}),
    ("--overwrite", {"action": "store_true", "help": "discard a previous run in --out"}),
    ("--runs", {"type": POSITIVE, "help": "repeat with seeds seed..seed+N-1: mean ± std"}),
    ("--save-adversarial", {"action": "store_true", "default": None}),
]
SANITY: Flags = [
    ("--noise", {"choices": tuple(NOISES), "default": "ssni-n"}),
    ("--out", {"default": "runs/sanity", "help": "output folder"}),
]
STATS: Flags = [
    ("--n-images", {"type": POSITIVE, "default": 5000}),
    ("--num-levels", {"type": POSITIVE}),
    ("--batch-size", {"type": POSITIVE, "default": 256}),
    ("--out", {"required": True, "help": "statistics file to write (.safetensors)"}),
]
COMMANDS = {
    "evaluate": ("attack and evaluate defences, write a report", COMMON + BUDGET + EVALUATE),
    "sanity": ("gradient-masking checks on one defence", COMMON + BUDGET + SANITY),
    "stats": ("compute reference EPS statistics of clean images", COMMON + STATS),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; flags named as the :class:`~art_ssni.config.Overrides`
    fields they set (``--noise`` sets ``noises``, ``--attack`` ``attacks``)."""
    style = {"epilog": EPILOG, "formatter_class": _HelpFormatter}
    parser = argparse.ArgumentParser(prog="art-ssni", description=__doc__.splitlines()[0], **style)
    parser.add_argument("--version", action="version", version=f"art-ssni {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, (text, flags) in COMMANDS.items():
        command_parser = sub.add_parser(command, help=text, **style)
        for flag, options in flags:
            command_parser.add_argument(flag, **options)
    return parser


def sources_of(args: argparse.Namespace) -> Sources:
    """The user's files named on the command line."""
    return Sources(**{name: getattr(args, name) for name in Sources.__dataclass_fields__})


def compute_of(args: argparse.Namespace) -> ComputeConfig:
    """The device and speed flags (absent flags keep the defaults)."""
    given = {name: getattr(args, name) for name in ("device", "dtype", "channels_last", "compile")}
    return ComputeConfig(**{name: value for name, value in given.items() if value is not None})


def overrides_of(args: argparse.Namespace) -> Overrides:
    """The configuration flags given on the command line (absent flags stay None)."""
    given = {name: getattr(args, name, None) for name in Overrides.__dataclass_fields__}
    return Overrides(**{name: value for name, value in given.items() if value is not None})


def check_out_dir(path: str | os.PathLike) -> Path:
    """Create the output folder and prove it writable before any work."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".art-ssni-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write to --out {out}: {err.strerror or err}") from err
    return out


def preflight(args: argparse.Namespace) -> None:
    """Every check that needs no model or data: device, output, overwrite permission."""
    from .evaluation.runner import check_clearable

    if args.device:
        pick_device(args.device)
    out = Path(args.out)
    if args.command == "stats":
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; give a file name such as stats.safetensors")
        if out.parent.exists() and not out.parent.is_dir():
            raise ValueError(f"cannot write --out {out}: {out.parent} is a file, not a folder")
        check_out_dir(out.parent)
        return
    if args.command == "evaluate" and args.overwrite:
        check_clearable(out)
    check_out_dir(out)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .pipeline import evaluate

    options = overrides_of(args).given()
    evaluate(args.preset, out=args.out, sources=sources_of(args), quick=args.quick,
             overwrite=args.overwrite, progress=not args.no_progress, **options)  # fmt: skip
    return 0


def cmd_sanity(args: argparse.Namespace) -> int:
    from .io import atomic_write_text
    from .pipeline import sanity

    report = sanity(
        args.preset, noise=args.noise, sources=sources_of(args), quick=args.quick,
        progress=not args.no_progress, **{**overrides_of(args).given(), "seed": args.seed},
    )  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    atomic_write_text(Path(args.out) / "sanity.json", text)
    return 0 if report["passed"] else 1


def cmd_stats(args: argparse.Namespace) -> int:
    from .pipeline import reference_stats

    stats = reference_stats(
        args.preset, sources=sources_of(args), n_images=args.n_images, seed=args.seed,
        num_levels=args.num_levels, batch_size=args.batch_size, convention=args.convention,
        compute=compute_of(args), progress=not args.no_progress,
    )  # fmt: skip
    stats.save(args.out)
    print(json.dumps({"file": args.out, **stats.summary()}, indent=2))
    return 0


def evaluate(
    diffusion: Any, classifier: Any, x: Any, y: Any, *, out: str | os.PathLike, **options: Any
) -> dict[str, Any] | None:
    """:func:`art_ssni.evaluate` on your own models and tensors (kept for older callers): the
    command's flag names are accepted (``noise=``, ``attack=``, ``criterion=``,
    ``no_baseline=True``, ``no_progress=True``), and ``preset=`` names the protocol."""
    from .pipeline import evaluate as run

    renamed = {"noise": "noises", "attack": "attacks", "criterion": "criteria"}
    options = {renamed.get(k, k): v for k, v in options.items()}
    for flag, name in (("no_baseline", "baseline"), ("no_progress", "progress")):
        if flag in options:
            options[name] = not options.pop(flag)
    return run(options.pop("preset", None), diffusion=diffusion, classifier=classifier, x=x, y=y,
               out=out, **options)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"evaluate": cmd_evaluate, "sanity": cmd_sanity, "stats": cmd_stats}
    try:
        preflight(args)
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"art-ssni: error: {err}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
