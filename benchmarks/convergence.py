"""Has the attack budget converged? Robust accuracy against iterations and EOT draws.

One defence (a preset's method with one noise policy) and one registered attack, always on
the same images and with the same seeds: robust accuracy (majority vote and worst-of-N over
the preset's judging draws, 95 % Wilson intervals) at each iteration count of
``--iterations`` (EOT draws as the preset has them), then at each EOT count of ``--eot``
(iterations as the preset has them); every other budget setting (step, eps, restarts) stays
the preset's. A sweep stops at the first point whose vote and worst-of-N accuracies both lie
inside the Wilson intervals of the previous point's: the images cannot resolve a further
change, so the budget converged there (``--full`` runs every point).

    python benchmarks/convergence.py --preset cifar10-embedded --method diffpure \
        --noise ssni-n --attack pgd-eot --iterations 10,20,50,100 --eot 1,4,16 \
        --out benchmarks/results/convergence_cifar10_embedded
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from art_ssni.evaluation.accuracy import aggregate, intervals
from art_ssni.evaluation.runner import Row, evaluate_batch, row_seed
from art_ssni.evaluation.sanity import settled
from art_ssni.io import atomic_write_text
from art_ssni.pipeline import build_defence, place, prepare
from art_ssni.sources import subset

Point = dict[str, Any]


def sweep(
    values: Sequence[int], measure: Callable[[int], Point], n: int, *, stop: bool = True
) -> tuple[list[Point], int | None]:
    """``measure`` each value in order; the points measured and the first value whose vote
    and worst-of-N accuracies both lie inside the previous point's Wilson intervals (None:
    no such value). With ``stop`` the sweep ends there."""
    points: list[Point] = []
    converged = None
    for value in values:
        points.append(measure(value))
        if len(points) > 1 and converged is None:
            previous, current = points[-2], points[-1]
            if all(
                settled(previous[key], current[key], n)[0]
                for key in ("robust_vote", "robust_worst")
            ):
                converged = value
                if stop:
                    break
    return points, converged


def robust_accuracy(
    row: Row, x: torch.Tensor, y: torch.Tensor, *, draws: int, seed: int, batch_size: int
) -> Point:
    """The row's robust accuracy over its batches, as the evaluation's runner measures it
    (the same seed and sample ids for every budget, so points differ only by the budget)."""
    predictions, seconds = [], 0.0
    for start in range(0, x.shape[0], batch_size):
        part = slice(start, start + batch_size)
        ids = torch.arange(start, min(start + batch_size, x.shape[0]))
        record = evaluate_batch(
            row, x[part], y[part], seed=row_seed(seed, "convergence"), draws=draws, ids=ids
        )
        predictions.append(record["preds_adv"])
        seconds += record["seconds"]
    predictions = torch.cat(predictions, 1)
    labels = y.cpu()
    accuracy, bounds = aggregate(predictions, labels), intervals(predictions, labels)
    return {
        "robust_vote": accuracy["vote"],
        "robust_worst": accuracy["worst"],
        "ci95_vote": bounds["vote"],
        "ci95_worst": bounds["worst"],
        "seconds_per_image": seconds / x.shape[0],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--method", default=None, help="default: the preset's")
    parser.add_argument("--noise", default="fixed")
    parser.add_argument("--attack", default="pgd-eot")
    parser.add_argument("--iterations", default="10,20,50,100", help="comma-separated")
    parser.add_argument("--eot", default="1,4,16", help="comma-separated")
    parser.add_argument("--n-images", type=int, default=None, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the preset's smoke sizes")
    parser.add_argument("--full", action="store_true", help="run every point (no stopping)")
    parser.add_argument("--out", default="benchmarks/results/convergence")
    args = parser.parse_args(argv)
    for name in ("iterations", "eot"):
        values = [int(v) for v in getattr(args, name).split(",") if v.strip()]
        if not values or min(values) < 1 or values != sorted(set(values)):
            raise SystemExit(f"--{name} must be increasing positive integers, got {values}")
        setattr(args, name, values)
    return args


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _interval(bounds: Sequence[float]) -> str:
    return f"[{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


def markdown(result: dict[str, Any]) -> str:
    """The two sweeps as Markdown tables, with where each converged."""
    draws = result["draws"]
    lines = [
        f"# Convergence: {result['attack']} on {result['defence']} ({result['preset']})",
        "",
        f"- **Images:** {result['images']}; **judging draws (N):** {draws}; **seed:** "
        f"{result['seed']}; **machine:** {result['machine']}; torch {result['torch']}",
        f"- **Budget otherwise:** {result['budget']}",
        "- A sweep stops at the first point whose vote and worst-of-N accuracies both lie "
        "inside the 95 % Wilson intervals of the previous point's.",
    ]
    if result["smoke"]:
        lines.insert(2, "> Smoke run (`--quick`): it checks that the script runs, not a result.\n")
    for name, other in (("iterations", "eot"), ("eot", "iterations")):
        part = result[name]
        lines += ["", f"## Against {name} ({other} = {part[other]})", ""]
        lines.append(
            f"| {name} | robust vote | 95 % CI | robust worst-of-{draws} | 95 % CI | s/img |"
        )
        lines.append("|---:|---:|---:|---:|---:|---:|")
        for point in part["points"]:
            cells = [
                str(point[name]),
                _percent(point["robust_vote"]),
                _interval(point["ci95_vote"]),
                _percent(point["robust_worst"]),
                _interval(point["ci95_worst"]),
                f"{point['seconds_per_image']:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        at = part["converged_at"]
        lines += ["", f"Converged at {name} = {at}." if at else "Not converged within the sweep."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    options: dict[str, Any] = {"noises": (args.noise,), "attacks": (args.attack,)}
    options.update({k: v for k, v in (("method", args.method), ("n_images", args.n_images)) if v})
    config, setup = prepare(args.preset, quick=args.quick, seed=args.seed, **options)
    device = place(setup, config.compute)
    index = subset(setup.x.shape[0], config.n_images, config.seed)
    x, y = setup.x[index].to(device), setup.y[index].to(device)
    model = build_defence(config, setup, args.noise)
    attack = config.attack
    n = int(x.shape[0])

    def measure(field: str) -> Callable[[int], Point]:
        def at(value: int) -> Point:
            budget = replace(attack, **{field: value}).budget(args.attack)
            row = Row("convergence", config.defence.method, model, args.attack, budget)
            point = robust_accuracy(row, x, y, draws=config.draws, seed=config.seed,
                                    batch_size=config.batch_size)  # fmt: skip
            return {"iterations": attack.iterations, "eot": attack.eot, field: value, **point}

        return at

    start = time.perf_counter()
    result: dict[str, Any] = {
        "preset": config.preset,
        "defence": f"{config.defence.method} + {args.noise}",
        "gradient": config.defence.gradient,
        "attack": args.attack,
        "images": n,
        "draws": config.draws,
        "seed": config.seed,
        "smoke": config.smoke,
        "budget": attack.budget(args.attack),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {device}",
        "torch": torch.__version__,
    }
    for field, other in (("iterations", "eot"), ("eot", "iterations")):
        points, converged = sweep(getattr(args, field), measure(field), n, stop=not args.full)
        result[field] = {other: getattr(attack, other), "points": points, "converged_at": converged}
    result["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    atomic_write_text(out / "convergence.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "convergence.md", markdown(result))
    return result


if __name__ == "__main__":
    main()
