"""Choose SSNI's tau and biases for the embedded CIFAR-10 models on *training* images.

The paper tunes SSNI's temperature and bias on training data. Here, on ``--n-images``
training images that the reference statistics did not use:

1. Attack them with PGD-EOT (Linf 8/255, 2/255 steps, the exact gradient) against the
   preset's DiffPure: fixed t* = 100 in 20 DDPM steps.
2. Purify the clean and the attacked images once at each level of a grid (0, 25, ..., 200;
   ``min(20, t)`` DDPM steps as the preset's DiffPure) and record which are classified
   correctly: an accuracy-versus-level curve per image.
3. For each candidate (SSNI-N: tau in multiples of the reference EPS standard deviation and
   a bias; SSNI-L: a bias) map the EPS norms of clean and attacked images to levels and read
   the accuracy off each image's curve (linear between grid levels).
4. Choose, per reweighting, the candidate with the highest clean accuracy whose attacked
   accuracy is at least DiffPure's at t* = 100 minus 0.5 points (else the highest sum).

The attacked images are made against fixed-level DiffPure, not against each candidate: a
transfer proxy that is cheap enough to sweep; the evaluation attacks SSNI itself. Writes the
choice into the model card (``ssni.chosen``, read by ``--preset cifar10-embedded``) and every
candidate to ``--out``::

    python benchmarks/sweep_cifar10.py --n-images 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from art_ssni import DefendedClassifier, DiffPure, DiffusionModel, EPSNorm, ReferenceStats
from art_ssni.data import fixed_subset, load_cifar10
from art_ssni.evaluation import pgd_eot
from art_ssni.io import atomic_write_text
from art_ssni.models.zoo import (
    CIFAR10_FILES,
    load_embedded_cifar10_classifier,
    load_embedded_cifar10_eps_net,
    zoo_root,
)
from art_ssni.noise import SSNILinear, SSNISigmoid

GRID = (0, 25, 50, 75, 100, 125, 150, 200)
STEPS = 20
TAU_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
BIASES = (-40, -20, -10, 0, 10, 20, 40)


def curve_accuracy(correct: torch.Tensor, levels: torch.Tensor) -> float:
    """Mean over images of the correctness curve (N, len(GRID)) read at each image's level."""
    grid = torch.tensor(GRID, dtype=torch.float64)
    t = levels.double().clamp(0, GRID[-1])
    hi = torch.searchsorted(grid, t).clamp(1, len(GRID) - 1)
    lo = hi - 1
    w = (t - grid[lo]) / (grid[hi] - grid[lo])
    rows = torch.arange(len(t))
    c = correct.double()
    return float(((1 - w) * c[rows, lo] + w * c[rows, hi]).mean())


@torch.no_grad()
def correctness(diffusion, classifier, x, y, seed: int, batch: int) -> torch.Tensor:
    """(N, len(GRID)) bool: is image i classified correctly after purification at GRID[j]."""
    out = torch.zeros(len(x), len(GRID), dtype=torch.bool)
    for j, level in enumerate(GRID):
        if level == 0:
            pred = torch.cat(
                [classifier(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]
            )
        else:
            purifier = DiffPure(diffusion, t_star=level, steps=STEPS, generator=seed + level)
            pred = torch.cat(
                [classifier(purifier(x[i : i + batch])).argmax(1) for i in range(0, len(x), batch)]
            )
        out[:, j] = pred == y
        print(f"  level {level}: accuracy {out[:, j].float().mean():.3f}", flush=True)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=128)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep_cifar10.json"))
    p.add_argument("--no-write-card", action="store_true", help="leave cifar10.json as it is")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    root = zoo_root()
    diffusion = DiffusionModel(load_embedded_cifar10_eps_net(), image_shape=(3, 32, 32))
    classifier = load_embedded_cifar10_classifier()
    stats = ReferenceStats.load(root / CIFAR10_FILES["stats"])
    eps_norm = EPSNorm(diffusion, stats.num_levels)
    stats.check(eps_norm)
    # Seed 1: the statistics used fixed_subset(..., seed=0); overlap is possible but small.
    index = fixed_subset(args.n_images, 50_000, seed=args.seed)
    x, y = load_cifar10("train", root=args.data_dir, source="jpeg", indices=index)

    diffpure = DiffPure(diffusion, t_star=100, steps=STEPS, gradient="full")
    model = DefendedClassifier(diffpure, classifier)
    x_adv = torch.cat(
        [
            pgd_eot(
                model, x[i : i + args.batch_size], y[i : i + args.batch_size], eps=8 / 255,
                step=2 / 255, iterations=args.iterations, eot=1, generator=args.seed + i,
            )
            for i in range(0, len(x), args.batch_size)
        ]
    )  # fmt: skip
    print(f"attack done in {time.perf_counter() - start:.0f} s", flush=True)
    eps_clean = torch.cat([eps_norm(x[i : i + 64], args.seed) for i in range(0, len(x), 64)])
    eps_adv = torch.cat([eps_norm(x_adv[i : i + 64], args.seed) for i in range(0, len(x), 64)])
    print("clean", flush=True)
    c_clean = correctness(diffusion, classifier, x, y, args.seed, args.batch_size)
    print("attacked", flush=True)
    c_adv = correctness(diffusion, classifier, x_adv, y, args.seed, args.batch_size)

    baseline = {
        "clean": curve_accuracy(c_clean, torch.full((len(x),), 100)),
        "attacked": curve_accuracy(c_adv, torch.full((len(x),), 100)),
    }
    candidates = []
    for bias in BIASES:
        policy = SSNILinear(eps_norm, stats, 100, bias)
        candidates.append({"noise": "ssni-l", "bias": bias})
        candidates[-1]["levels"] = (
            policy.levels_from_scores(eps_clean),
            policy.levels_from_scores(eps_adv),
        )
        for factor in TAU_FACTORS:
            policy = SSNISigmoid(eps_norm, stats, 100, bias, factor * stats.std)
            candidates.append({"noise": "ssni-n", "bias": bias, "tau": factor * stats.std})
            candidates[-1]["levels"] = (
                policy.levels_from_scores(eps_clean),
                policy.levels_from_scores(eps_adv),
            )
    for c in candidates:
        lc, la = c.pop("levels")
        c.update(
            clean=curve_accuracy(c_clean, lc), attacked=curve_accuracy(c_adv, la),
            mean_level_clean=float(lc.float().mean()), mean_level_attacked=float(la.float().mean()),
        )  # fmt: skip
    chosen = {}
    for noise in ("ssni-l", "ssni-n"):
        own = [c for c in candidates if c["noise"] == noise]
        ok = [c for c in own if c["attacked"] >= baseline["attacked"] - 0.005]
        best = max(ok, key=lambda c: (c["clean"], c["attacked"])) if ok else None
        best = best or max(own, key=lambda c: c["clean"] + c["attacked"])
        chosen[f"bias_{noise.replace('-', '_')}"] = best["bias"]
        if noise == "ssni-n":
            chosen["tau"] = best["tau"]
        print(noise, json.dumps(best), flush=True)
    result = {
        "command": "python benchmarks/sweep_cifar10.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "n_images": args.n_images,
        "split": f"train, fixed_subset({args.n_images}, 50000, seed={args.seed})",
        "grid": GRID,
        "attack": f"PGD-EOT Linf 8/255, step 2/255, {args.iterations} iterations, EOT 1, "
        f"against DiffPure t*=100 ({STEPS} DDPM steps, exact gradient)",
        "eps_norm_mean": {"clean": float(eps_clean.mean()), "attacked": float(eps_adv.mean())},
        "diffpure_t100": baseline,
        "accuracy_by_level": {
            "clean": c_clean.float().mean(0).tolist(),
            "attacked": c_adv.float().mean(0).tolist(),
        },
        "candidates": candidates,
        "chosen": chosen,
        "rule": "highest clean accuracy with attacked >= DiffPure t*=100's minus 0.5 points",
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    if not args.no_write_card:
        card_path = root / CIFAR10_FILES["card"]
        card = json.loads(card_path.read_text(encoding="utf-8"))
        card["ssni"] = {
            "chosen": chosen,
            "sweep": "benchmarks/sweep_cifar10.py; every candidate in "
            "benchmarks/results/sweep_cifar10.json",
        }
        atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    print(json.dumps({"chosen": chosen, "diffpure_t100": baseline}))
    return result


if __name__ == "__main__":
    main()
