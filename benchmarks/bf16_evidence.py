r"""Does running the diffusion network in bfloat16 change a conclusion? float32 against
bfloat16 on the ``cifar10-embedded`` preset.

Reads two ``art-ssni evaluate`` result folders made with the same command but ``--dtype
float32`` and ``--dtype bfloat16``, and reports per row clean and robust accuracy (vote and
worst-of-N) with their 95 % Wilson intervals, whether each pair of intervals overlaps,
whether the attacks rank the same way per defence, and seconds per image. It then measures the
cosine between the float32 and bfloat16 attack gradients (the loss gradient through the
defended model, same images, same seed) for DiffPure, SSNI-L and SSNI-N::

    art-ssni evaluate --preset cifar10-embedded --n-images 32 --dtype float32 --out runs/f32
    art-ssni evaluate --preset cifar10-embedded --n-images 32 --dtype bfloat16 --out runs/bf16
    python benchmarks/bf16_evidence.py runs/f32 runs/bf16 \
        --out benchmarks/results/bf16_evidence.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from art_ssni.hardware import TORCH_DTYPES
from art_ssni.io import atomic_write_text
from art_ssni.pipeline import build_defence, prepare
from art_ssni.sources import subset

NOISES = ("fixed", "ssni-l", "ssni-n")


def overlap(a: list[float], b: list[float]) -> bool:
    """Whether two intervals [low, high] share a point."""
    return a[0] <= b[1] and b[0] <= a[1]


def compare_rows(f32: dict, bf16: dict) -> list[dict]:
    """Row by row: accuracies, intervals, overlap, seconds per image."""
    rows = []
    for a, b in zip(f32["rows"], bf16["rows"], strict=True):
        if a["key"] != b["key"]:
            raise ValueError(f"the runs hold other rows: {a['key']} and {b['key']}")
        entry = {"key": a["key"], "method": a["method"], "attack": a["attack"]}
        for split, agg in (("clean", "vote"), ("robust", "vote"), ("robust", "worst")):
            name = f"{split}_{agg}"
            ci = f"{split}_ci95"
            entry[name] = {"float32": a[split][agg], "bfloat16": b[split][agg]}
            entry[f"{name}_overlap"] = overlap(a[ci][agg], b[ci][agg])
        entry["seconds_per_image"] = {
            "float32": a["seconds_per_image"],
            "bfloat16": b["seconds_per_image"],
        }
        rows.append(entry)
    return rows


def attack_order(results: dict) -> dict[str, list[str]]:
    """Per defence, its attacks from strongest (lowest robust vote accuracy) to weakest."""
    by_defence: dict[str, list[tuple[float, str]]] = {}
    for row in results["rows"]:
        by_defence.setdefault(row["method"], []).append((row["robust"]["vote"], row["attack"]))
    return {m: [a for _, a in sorted(v)] for m, v in by_defence.items() if len(v) > 1}


def gradient_cosines(n_images: int, seed: int) -> dict[str, float]:
    """Cosine between the float32 and bfloat16 loss gradients per noise policy."""
    out = {}
    for noise in NOISES:
        grads = []
        for dtype in ("float32", "bfloat16"):
            config, setup = prepare("cifar10-embedded", noises=(noise,), dtype=dtype)
            setup.diffusion.set_speed_options(compute_dtype=TORCH_DTYPES[dtype])
            index = subset(setup.x.shape[0], n_images, seed)
            x, y = setup.x[index], setup.y[index]
            model = build_defence(replace(config, seed=seed), setup, noise)
            model.reseed(seed)
            xg = x.clone().requires_grad_(True)
            F.cross_entropy(model(xg), y).backward()
            grads.append(xg.grad.flatten())
        out[noise] = float(F.cosine_similarity(grads[0], grads[1], dim=0))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float32", type=Path, help="results folder of the float32 run")
    parser.add_argument("bfloat16", type=Path, help="results folder of the bfloat16 run")
    parser.add_argument("--gradient-images", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    runs = [
        json.loads((folder / "results.json").read_text())
        for folder in (args.float32, args.bfloat16)
    ]
    for results, dtype in zip(runs, ("float32", "bfloat16"), strict=True):
        if results["config"]["compute"]["dtype"] != dtype:
            raise ValueError(
                f"the {dtype} folder holds a {results['config']['compute']['dtype']} run"
            )
    same = {k: v for k, v in runs[0]["config"].items() if k != "compute"}
    if same != {k: v for k, v in runs[1]["config"].items() if k != "compute"}:
        raise ValueError("the two runs differ in more than the compute dtype")
    rows = compare_rows(*runs)
    report = {
        "command": runs[0]["config"],
        "machine": runs[0].get("run", {}).get("machine"),
        "rows": rows,
        "all_intervals_overlap": all(row[k] for row in rows for k in row if k.endswith("_overlap")),
        "attack_order": {"float32": attack_order(runs[0]), "bfloat16": attack_order(runs[1])},
        "gradient_cosine": gradient_cosines(args.gradient_images, seed=0),
    }
    report["same_attack_order"] = (
        report["attack_order"]["float32"] == report["attack_order"]["bfloat16"]
    )
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("all_intervals_overlap", "same_attack_order", "gradient_cosine")
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
