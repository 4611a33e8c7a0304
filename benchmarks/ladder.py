"""The strength ladder: every method x noise policy x attack (and the ensemble) on one preset.

For each method of the preset (DiffPure, GDMP, GNS, DAC, MANI-Pure) the evaluation of
``art-ssni evaluate`` runs with every noise policy (fixed, SSNI-L, SSNI-N) and every
registered attack that applies to the defence (the adaptive ones need their target: SSNI's
selector, DAC's mask, MANI-Pure's spectrum), the adaptive ensemble included, each method in
its own resumable folder ``OUT/<method>``. ``ladder.json`` and ``ladder.md`` then list, per
defence, the attacks from the strongest (lowest robust vote) to the weakest, with the images,
budget, gradient mode, Wilson intervals and wall time. AutoAttack joins only where its package
is installed.

    python benchmarks/ladder.py --preset cifar10-embedded --out benchmarks/results/ladder
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from art_ssni.evaluation.registry import ATTACKS
from art_ssni.io import atomic_write_text
from art_ssni.noise.registry import NOISES, get_noise
from art_ssni.pipeline import prepare, run_evaluation
from art_ssni.presets import get_preset
from art_ssni.purification.registry import get_method


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # imported already, without a spec (a stand-in module)
        return True


def default_attacks() -> tuple[str, ...]:
    """Every registered attack whose code is installed (AutoAttack needs its package)."""
    return tuple(name for name in ATTACKS if name != "autoattack" or _installed("autoattack"))


def _names(text: str | None, default: Sequence[str]) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip()) if text else tuple(default)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--methods", default=None, help="comma-separated; default: the preset's")
    parser.add_argument("--noises", default=None, help="comma-separated; default: every policy")
    parser.add_argument("--attacks", default=None, help="comma-separated; default: every one")
    parser.add_argument("--n-images", type=int, default=None, help="default: the preset's")
    parser.add_argument("--judge-draws", type=int, default=None, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the preset's smoke sizes")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/ladder")
    return parser.parse_args(argv)


def _noise_of(key: str, method: str) -> str:
    """The noise policy of a row from its key (``<method>-<noise>-<attack>``)."""
    found = [n for n in NOISES if key.startswith(f"{method}-{n}-")]
    return found[0] if found else "none"


def ladder_rows(method: str, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One ladder entry per results row of a method's evaluation."""
    entries = []
    for row in results["rows"]:
        noise = _noise_of(row["key"], method)
        entries.append(
            {
                "method": get_method(method).label if noise != "none" else "No defence",
                "noise": get_noise(noise).label if noise != "none" else "-",
                "attack": row["attack"],
                "key": row["key"],
                "images": row["n"],
                "gradient": row["gradient"],
                "clean_vote": row["clean"]["vote"],
                "clean_worst": row["clean"]["worst"],
                "robust_vote": row["robust"]["vote"],
                "robust_worst": row["robust"]["worst"],
                "ci95_vote": row["robust_ci95"]["vote"],
                "ci95_worst": row["robust_ci95"]["worst"],
                "seconds_per_image": row["seconds_per_image"],
                "ensemble": row.get("ensemble"),
            }
        )
    return entries


def ordered(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per defence (method, noise) in their first order, the attacks from the strongest
    (lowest robust vote, then lowest worst-of-N) to the weakest."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in entries:
        groups.setdefault((entry["method"], entry["noise"]), []).append(entry)
    return [
        entry
        for group in groups.values()
        for entry in sorted(group, key=lambda e: (e["robust_vote"], e["robust_worst"]))
    ]


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _interval(bounds: Sequence[float]) -> str:
    return f"[{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


def _budget(attack: dict[str, Any]) -> str:
    in_loop = attack["judge_draws"]
    judging = f"in-loop N = {in_loop} ({', '.join(attack['criteria'])})" if in_loop else "one-shot"
    return (
        f"{attack['norm']} eps = {attack['eps']:g}, step = {attack['step']:g}, "
        f"{attack['iterations']} iterations, EOT over {attack['eot']} draws, "
        f"{attack['restarts']} restart(s), {judging}, selector weight {attack['selector_weight']:g}"
    )


def markdown(result: dict[str, Any]) -> str:
    """The ladder as one Markdown table, strongest attack first within each defence."""
    draws = result["draws"]
    lines = [f"# Strength ladder on {result['preset']}", ""]
    if result["smoke"]:
        lines += ["> Smoke run (`--quick`): it checks that the ladder runs, not a result.", ""]
    lines += [
        f"- **Images:** {result['images']}; **judging draws (N):** {draws}; **seed:** "
        f"{result['seed']}; **machine:** {result['machine']}; torch {result['torch']}",
        f"- **Budget:** {_budget(result['budget'])}",
        "- **Time:** the rows took "
        + ", ".join(f"{m} {s:.0f} s" for m, s in result["row_seconds"].items())
        + " (the sum of their units' times); this invocation's wall time: "
        + ", ".join(f"{m} {s:.0f} s" for m, s in result["wall_seconds"].items())
        + " (units a previous run of the same folder finished are reused, not timed again)",
        "",
        f"| method | noise | attack | gradient | clean vote | robust vote | 95 % CI | "
        f"robust worst-of-{draws} | 95 % CI | s/img |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in result["rows"]:
        cells = [
            entry["method"],
            entry["noise"],
            entry["attack"],
            entry["gradient"],
            _percent(entry["clean_vote"]),
            _percent(entry["robust_vote"]),
            _interval(entry["ci95_vote"]),
            _percent(entry["robust_worst"]),
            _interval(entry["ci95_worst"]),
            f"{entry['seconds_per_image']:.2f}",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = get_preset(args.preset)
    methods = _names(args.methods, preset.methods)
    noises = _names(args.noises, NOISES)
    attacks = _names(args.attacks, ()) or default_attacks()
    out = Path(args.out)
    entries: list[dict[str, Any]] = []
    wall: dict[str, float] = {}
    row_seconds: dict[str, float] = {}
    config = None
    for index, method in enumerate(methods):
        options: dict[str, Any] = {"method": method, "noises": noises, "attacks": attacks}
        options["baseline"] = index == 0
        for name, value in (("n_images", args.n_images), ("judge_draws", args.judge_draws)):
            if value is not None:
                options[name] = value
        config, setup = prepare(preset, quick=args.quick, seed=args.seed, **options)
        start = time.perf_counter()
        results = run_evaluation(config, setup, out=out / method, progress=not args.no_progress)
        wall[method] = time.perf_counter() - start
        entries += ladder_rows(method, results)
        row_seconds[method] = sum(r["seconds_per_image"] * r["n"] for r in results["rows"])
    result = {
        "preset": preset.name,
        "methods": list(methods),
        "noises": list(noises),
        "attacks": list(attacks),
        "images": config.n_images,
        "draws": config.draws,
        "seed": config.seed,
        "smoke": config.smoke,
        "budget": config.as_dict()["attack"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {config.compute.device}",
        "torch": torch.__version__,
        "wall_seconds": wall,
        "row_seconds": row_seconds,
        "rows": ordered(entries),
    }
    atomic_write_text(out / "ladder.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "ladder.md", markdown(result))
    return result


if __name__ == "__main__":
    main()
