"""The ``art-ssni`` command: evaluate defences, compute reference statistics, sanity checks.

``art-ssni evaluate`` with no arguments runs the embedded default (the shipped CIFAR-10
classifier, diffusion model and images): no defence, DiffPure with a fixed level, and DiffPure
with SSNI-L and SSNI-N, under the paper's PGD-EOT attack and the selector-aware attack.
``--method`` picks DiffPure, GDMP, GNS, DAC or MANI-Pure. The command only parses and checks its
flags; the work is :func:`art_ssni.evaluate` and its configuration :mod:`art_ssni.config`.
Every user error ends as one line, ``art-ssni: error: ...``, and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
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

from . import leaderboard
from .config import ComputeConfig, Overrides
from .diffusion.model import CONVENTIONS
from .diffusion.sampler import SAMPLERS
from .evaluation.registry import ATTACKS
from .hardware import DTYPES
from .noise.registry import NOISES
from .presets import list_presets
from .purification.engine import GRADIENT_MODES
from .purification.registry import METHODS
from .sources import Sources
from .validation import SEED_LIMIT, check_device

DESCRIPTION = (
    "Evaluate diffusion-based adversarial purification (DiffPure, GDMP, GNS, DAC, MANI-Pure with "
    "fixed or SSNI noise) under adaptive attacks, compute reference statistics, and run "
    "gradient-masking checks."
)


def _number(convert, test, wanted: str):
    """An argparse type: ``convert(text)`` that passes ``test``, else an error naming it."""

    def parse(text: str):
        try:
            value = convert(text)
        except (ValueError, ZeroDivisionError, OverflowError):
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


_fraction = _number(lambda t: float(Fraction(t)), lambda v: 0 < v <= 1, "a number in (0, 1]")
POSITIVE = _number(int, lambda v: v >= 1, "an integer >= 1")
COUNT = _number(int, lambda v: v >= 0, "an integer >= 0")
SEED = _number(int, lambda v: 0 <= v < SEED_LIMIT, "an integer in [0, 2**63)")
FINITE = _number(float, math.isfinite, "a finite number")
POSITIVE_NUMBER = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def _choices(allowed: Sequence[str]):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        bad = [item for item in items if item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad) or 'empty value'}; choose from {', '.join(allowed)}"
            )
        twice = sorted({item for item in items if items.count(item) > 1})
        if twice:
            raise argparse.ArgumentTypeError(
                f"{', '.join(twice)} given more than once (each would be a duplicate row)"
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
PRESET_VALUE = "the preset's"


class _HelpFormatter(argparse.HelpFormatter):
    """Says every option's default ("the preset's" where the preset decides) and wraps the
    epilog between words only, so preset names such as imagenet-linf stay whole."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text
        if action.default is None:
            preset = action.dest in Overrides.__dataclass_fields__
            return f"{text} (default: {PRESET_VALUE})" if preset else text
        return f"{text} (default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
            break_on_hyphens=False,
        )  # fmt: skip


Flags = list[tuple[str, dict[str, Any]]]
COMMON: Flags = [
    ("--preset", {"default": "cifar10-embedded", "choices": list_presets(), "metavar": "PRESET",
                  "help": "the setting: models, data, attack budget (listed below)"}),
    ("--method", {"choices": tuple(METHODS), "help": "purification method"}),
    ("--diffusion-checkpoint", {"type": _path, "help": "diffusion model file or folder"}),
    ("--classifier-checkpoint", {"type": _path, "help": "classifier checkpoint file"}),
    ("--classifier", {"metavar": "MODULE:CALLABLE", "help": "your classifier's factory"}),
    ("--data", {"type": _path,
                "help": "your images: .npz of x (NCHW) and y, or an ImageFolder tree"}),
    ("--data-dir", {"type": _path, "help": "data set location (CIFAR-10 / ImageNet presets)"}),
    ("--stats", {"type": _path, "help": "reference statistics file (safetensors)"}),
    ("--sampler", {"choices": SAMPLERS, "help": "reverse sampler"}),
    ("--convention", {"choices": CONVENTIONS, "help": "how the diffusion model is queried"}),
    ("--device", {"help": "cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)"}),
    ("--dtype", {"choices": DTYPES, "help": "the diffusion network's compute dtype"}),
    ("--channels-last", {"action": "store_true", "default": None,
                         "help": "channels-last memory order for the diffusion network"}),
    ("--compile", {"action": "store_true", "default": None, "help": "torch.compile the network"}),
    ("--network-rows", {"type": POSITIVE, "help": "most images per diffusion-network call "
                        "(default: 65,536 pixels' worth on a CPU, 1024 elsewhere)"}),
    ("--seed", {"type": SEED, "default": 0, "help": "seed of the image subset and every draw"}),
    ("--no-progress", {"action": "store_true", "help": "hide progress bars"}),
]  # fmt: skip
BUDGET: Flags = [
    ("--norm", {"choices": ("Linf", "L2"), "help": "attack norm"}),
    ("--eps", {"type": _fraction, "help": "attack budget, e.g. 8/255 or 0.5"}),
    ("--step", {"type": _fraction, "help": "attack step size"}),
    ("--iterations", {"type": POSITIVE, "help": "attack iterations"}),
    ("--eot", {"type": POSITIVE, "help": "EOT draws per gradient"}),
    ("--n-images", {"type": POSITIVE, "help": "images to evaluate"}),
    ("--draws", {"type": POSITIVE, "help": "defence draws to judge accuracy"}),
    ("--quick", {"action": "store_true", "help": "smoke run: few images and steps"}),
]
EVALUATE: Flags = [
    ("--noise", {"dest": "noises", "type": _choices(tuple(NOISES)), "help": "policies, a,b"}),
    ("--attack", {"dest": "attacks", "type": _choices(tuple(ATTACKS)), "help": "attacks, a,b"}),
    ("--restarts", {"type": POSITIVE, "help": "random restarts, best kept"}),
    ("--judge-draws", {"type": COUNT, "help": "N > 0: in-loop rows judged over N draws"}),
    ("--criterion", {"dest": "criteria", "type": _choices(("worst", "vote")),
                     "help": "in-loop criteria, a,b"}),
    ("--max-rows", {"type": POSITIVE, "help": "rows per defence pass when EOT is batched"}),
    ("--batch-size", {"type": POSITIVE, "help": "images per unit of work"}),
    ("--gradient", {"choices": GRADIENT_MODES, "help": "the defence's gradient for attacks"}),
    ("--t-star", {"type": POSITIVE, "help": "the defence's noise level t*"}),
    ("--steps", {"type": POSITIVE, "help": "reverse steps of the defence"}),
    ("--tau", {"type": POSITIVE_NUMBER, "help": "SSNI-N temperature"}),
    ("--bias", {"type": FINITE, "help": "SSNI bias b (steps)"}),
    ("--selector-weight", {"type": POSITIVE_NUMBER,
                           "help": "selector-aware attack's weight on the EPS norm"}),
    ("--no-baseline", {"dest": "baseline", "action": "store_false", "default": None,
                       "help": "leave out the undefended row"}),
    ("--out", {"type": _path, "default": "runs/evaluate", "help": "output folder (resumable)"}),
    ("--overwrite", {"action": "store_true",
                     "help": "delete the files a previous run wrote in --out first"}),
    ("--runs", {"type": POSITIVE, "help": "repeat with seeds seed..seed+N-1: mean ± std"}),
    ("--save-adversarial", {"action": "store_true", "default": None,
                            "help": "also write each row's adversarial examples"}),
]  # fmt: skip
SANITY: Flags = [
    ("--noise", {"choices": tuple(NOISES), "default": "ssni-n", "help": "noise policy"}),
    ("--out", {"type": _path, "default": "runs/sanity", "help": "output folder"}),
]
STATS: Flags = [
    ("--n-images", {"type": POSITIVE, "default": 5000, "help": "clean training images"}),
    ("--num-levels", {"type": POSITIVE, "help": "levels T' of the EPS norm"}),
    ("--batch-size", {"type": POSITIVE, "default": 256, "help": "images per batch"}),
    ("--out", {"type": _path, "required": True,
               "help": "statistics file to write (.safetensors)"}),
]  # fmt: skip
COMMANDS = {
    "evaluate": ("attack and evaluate defences, write a report", COMMON + BUDGET + EVALUATE),
    "sanity": ("gradient-masking checks on one defence", COMMON + BUDGET + SANITY),
    "stats": ("compute reference EPS statistics of clean images", COMMON + STATS),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; flags named as the :class:`~art_ssni.config.Overrides`
    fields they set (``--noise`` sets ``noises``, ``--attack`` ``attacks``)."""
    style = {"epilog": EPILOG, "formatter_class": _HelpFormatter}
    parser = argparse.ArgumentParser(prog="art-ssni", description=DESCRIPTION, **style)
    parser.add_argument("--version", action="version", version=f"art-ssni {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, (text, flags) in COMMANDS.items():
        command_parser = sub.add_parser(command, help=text, description=text, **style)
        for flag, options in flags:
            command_parser.add_argument(flag, **options)
    leaderboard.add_parser(sub)
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
        # O_EXCL: never follow or truncate a file (or link) already at the probe's name
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write to --out {out}: {err.strerror or err}") from err
    return out


def check_previous_run(out: Path) -> None:
    """A previous run's ``config.json`` must be a readable JSON file (it is what a resumed
    run is compared with)."""
    path = out / "config.json"
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_file():
        raise ValueError(f"{path} is not a file; a run folder's config.json must be one")
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is unreadable or truncated ({err}); the run that wrote it was interrupted "
            "or the file was edited: rerun with --overwrite to start the run afresh"
        ) from None


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def preflight(args: argparse.Namespace) -> None:
    """Every check that needs no model or data: device, output, overwrite permission, a
    previous run's files; removes the temporary files a killed run left behind."""
    from .evaluation.rundir import check_clearable, check_run_dir, clean_stale_tmp

    if args.device:
        check_device(args.device)
    out = Path(args.out)
    if args.command == "stats":
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; give a file name such as stats.safetensors")
        if out.parent.exists() and not out.parent.is_dir():
            raise ValueError(f"cannot write --out {out}: {out.parent} is a file, not a folder")
        check_out_dir(out.parent)
        return
    if args.command == "evaluate":
        if args.overwrite:
            check_clearable(out)
        else:
            check_run_dir(out)
            check_previous_run(out)
            if _rank() == 0:
                clean_stale_tmp(out)
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
    from .io import atomic_write_with
    from .pipeline import reference_stats

    stats = reference_stats(
        args.preset, sources=sources_of(args), n_images=args.n_images, seed=args.seed,
        num_levels=args.num_levels, batch_size=args.batch_size, convention=args.convention,
        compute=compute_of(args), progress=not args.no_progress,
    )  # fmt: skip
    atomic_write_with(stats.save, args.out)
    print(json.dumps({"file": args.out, **stats.summary()}, indent=2))
    return 0


def evaluate(
    diffusion: Any, classifier: Any, x: Any, y: Any, *, out: str | os.PathLike, **options: Any
) -> dict[str, Any] | None:
    """:func:`art_ssni.evaluate` on your own models and images (kept for older callers): the
    command's flag names are accepted (``noise=``, ``attack=``, ``criterion=``,
    ``no_baseline=True``, ``no_progress=True``), ``preset=`` names the protocol, ``stats=`` is
    a :class:`~art_ssni.ReferenceStats` (SSNI needs one). ``x`` and ``y`` may be tensors or
    numpy arrays (images in [0, 1], integer labels). Everything is checked before any work; a
    bad value raises ``ValueError`` or ``TypeError`` naming it, never ``SystemExit``."""
    from .evaluation.rundir import check_clearable, check_run_dir
    from .noise.registry import get_noise
    from .pipeline import check_own_inputs, prepare, run_evaluation
    from .validation import check_seed, check_unique

    if not str(out).strip():
        raise ValueError("out must name a folder for the results, got an empty path")
    renamed = {"noise": "noises", "attack": "attacks", "criterion": "criteria"}
    options = {renamed.get(k, k): v for k, v in options.items()}
    for flag, name in (("no_baseline", "baseline"), ("no_progress", "progress")):
        if flag in options:
            options[name] = not options.pop(flag)
    for name in ("noises", "attacks", "criteria"):
        if options.get(name) is not None:
            check_unique(options[name], name)
    if "seed" in options:
        check_seed(options["seed"])
    if options.get("device") is not None:
        check_device(options["device"])
    x, y = check_own_inputs(diffusion, classifier, x, y)
    preset = options.pop("preset", None)
    overwrite = bool(options.pop("overwrite", False))
    if overwrite:
        check_clearable(out)
    else:
        check_run_dir(out)
    progress = bool(options.pop("progress", True))
    config, setup = prepare(preset, diffusion=diffusion, classifier=classifier, x=x, y=y, **options)
    needing = [n for n in config.defence.noises if get_noise(n).uses_scores]
    if needing and setup.stats is None:
        raise ValueError(
            f"{', '.join(needing)} need reference statistics: pass stats=ReferenceStats.load(FILE) "
            "(make the file with `art-ssni stats`), or noise='fixed'"
        )
    return run_evaluation(config, setup, out=out, overwrite=overwrite, progress=progress)


def _one_line(err: BaseException) -> str:
    """A user error as one line: an OSError names its file and cause."""
    if isinstance(err, OSError) and err.errno is not None:
        where = f"{err.filename}: " if err.filename else ""
        if err.errno == errno.ENOSPC:
            return f"{where}no space left on device; free some space or choose another --out"
        return f"{where}{(err.strerror or str(err)).lower()}"
    if isinstance(err, torch.OutOfMemoryError):
        return "out of memory on the device; lower --batch-size or --max-rows"
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "leaderboard":
        return leaderboard.run(args)
    commands = {"evaluate": cmd_evaluate, "sanity": cmd_sanity, "stats": cmd_stats}
    try:
        preflight(args)
        return commands[args.command](args)
    except (ValueError, OSError, torch.OutOfMemoryError) as err:
        print(f"art-ssni: error: {_one_line(err)}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
