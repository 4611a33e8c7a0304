"""Sweep that chose the embedded default's t*, tau and bias (digits, shipped models).

For each t*: clean and robust accuracy (majority vote over draws) of DiffPure with a fixed
level under PGD-EOT; then, at the chosen t*, SSNI-N for several tau and biases and SSNI-L
for several biases. The choice maximises robust accuracy with clean accuracy >= 95 %.

    python benchmarks/sweep_embedded.py [--n-images 64]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from art_ssni import (
    DefendedClassifier,
    DiffPure,
    DiffusionModel,
    EPSNorm,
    ReferenceStats,
    SSNILinear,
    SSNISigmoid,
)
from art_ssni.data import fixed_subset, load_digits
from art_ssni.evaluation import aggregate, pgd_eot
from art_ssni.evaluation.accuracy import predict_with_levels
from art_ssni.io import atomic_write_text
from art_ssni.models.zoo import load_embedded_classifier, load_embedded_eps_net, zoo_root


def evaluate(
    model: DefendedClassifier, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> dict[str, float]:
    """Accuracies under PGD-EOT and the mean level of the judging passes."""
    model.reseed(0)
    start = time.perf_counter()
    x_adv = pgd_eot(
        model,
        x,
        y,
        eps=args.eps,
        step=args.step,
        iterations=args.iterations,
        eot=args.eot,
        generator=1,
    )
    preds_clean, levels_clean = predict_with_levels(model, x, args.draws)
    preds_adv, levels_adv = predict_with_levels(model, x_adv, args.draws)
    clean, robust = aggregate(preds_clean, y), aggregate(preds_adv, y)
    return {
        "clean_vote": clean["vote"],
        "robust_vote": robust["vote"],
        "robust_worst": robust["worst"],
        "mean_level_clean": levels_clean.float().mean().item(),
        "mean_level_adv": levels_adv.float().mean().item(),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--t-stars", default="10,20,40,60")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--step", type=float, default=0.025)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--eot", type=int, default=2)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/sweep_embedded.json")
    args = parser.parse_args()

    x, y = load_digits("test")
    index = fixed_subset(args.n_images, x.shape[0], seed=1).sort().values
    x, y = x[index], y[index]
    classifier = load_embedded_classifier()
    diffusion = DiffusionModel(load_embedded_eps_net(), image_shape=(1, 8, 8), name="digits")
    stats = ReferenceStats.load(zoo_root() / "digits_stats.safetensors")
    eps_norm = EPSNorm(diffusion, 20)
    results: dict[str, list] = {"fixed": [], "ssni-n": [], "ssni-l": []}

    def run(kind: str, t_star: int, policy=None, **extra) -> dict:
        steps = min(args.steps, t_star)
        purifier = DiffPure(
            diffusion, noise=policy, t_star=t_star, steps=steps, surrogate_steps=steps
        )
        record = {
            "t_star": t_star,
            **extra,
            **evaluate(DefendedClassifier(purifier, classifier), x, y, args),
        }
        results[kind].append(record)
        print(kind, json.dumps(record), flush=True)
        return record

    for t_star in (int(t) for t in args.t_stars.split(",")):
        run("fixed", t_star)
    eligible = [r for r in results["fixed"] if r["clean_vote"] >= 0.95] or results["fixed"]
    best = max(eligible, key=lambda r: r["robust_vote"])["t_star"]
    for tau_factor in (0.5, 1.0, 2.0):
        for bias in (0, 10):
            tau = tau_factor * stats.std
            run("ssni-n", best, SSNISigmoid(eps_norm, stats, best, bias, tau), tau=tau, bias=bias)
    for bias in (0, 10):
        run("ssni-l", best, SSNILinear(eps_norm, stats, best, bias), bias=bias)
    results["chosen_t_star"] = best
    results["settings"] = vars(args)
    print(f"wrote {atomic_write_text(args.out, json.dumps(results, indent=2))}")


if __name__ == "__main__":
    main()
