"""Is our strongest attack at least as strong as the external ones?

On the embedded default (digits, shipped classifier and diffusion model, DiffPure at t* = 60
with full gradients through 10 reverse steps, Linf eps 0.2), every attack gets the same
gradient budget per sample (``--gradients`` EOT gradient passes, as iterations x EOT draws)
and the same final judging: the defence's generator is reset to one seed and every set of
adversarial examples goes through the same ``--draws`` passes. Rows:

- ours: PGD-EOT and APGD-EOT (CE), one-shot and judged in the loop over N draws (worst;
  APGD also vote);
- torchattacks ``APGD(eot_iter=...)`` and ``EOTPGD``;
- the reference AutoAttack ``rand`` (APGD-CE then APGD-DLR), re-judged by us.

In-loop judging costs forward passes only (no gradients); that cost is shown separately.

    python benchmarks/attack_strength.py [--n-images 64] [--judge-draws 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import torch

from art_ssni import DefendedClassifier, DiffPure, DiffusionModel
from art_ssni.data import fixed_subset, load_digits
from art_ssni.evaluation import aggregate, apgd_eot, autoattack_rand, pgd_eot, predict_draws
from art_ssni.io import atomic_write_text
from art_ssni.models.zoo import load_embedded_classifier, load_embedded_eps_net
from art_ssni.presets import get_preset

ATTACK_SEED = 100
JUDGE_SEED = 7
DIGITS = get_preset("digits")
DIFFPURE = next(d for d in DIGITS.defences if d.method == "diffpure")


def build_model() -> DefendedClassifier:
    """DiffPure at the embedded default's t*, steps and gradient mode."""
    diffusion = DiffusionModel(load_embedded_eps_net(), image_shape=(1, 8, 8), name="digits")
    purifier = DiffPure(
        diffusion,
        t_star=DIFFPURE.settings.t_star,
        steps=DIFFPURE.settings.steps,
        surrogate_steps=DIFFPURE.settings.surrogate_steps,
        gradient=DIFFPURE.gradient,
    )
    return DefendedClassifier(purifier, load_embedded_classifier())


def attacks(args: argparse.Namespace) -> dict[str, tuple[str, Callable, int, int]]:
    """key -> (name, attack(model, x, y) -> x_adv, EOT gradient passes, forward-only passes)."""
    import torchattacks

    eot, eps, step, n = args.eot, args.eps, args.step, args.judge_draws
    pgd_iters = args.gradients // eot  # PGD: one EOT gradient per iteration
    apgd_iters = pgd_iters - 1  # APGD: one more for the starting point
    aa_iters = pgd_iters // 2 - 1  # AutoAttack rand: APGD-CE then APGD-DLR

    def ours_pgd(**extra):
        return lambda m, x, y: pgd_eot(
            m, x, y, eps=eps, step=step, iterations=pgd_iters, eot=eot, generator=1, **extra
        )

    def ours_apgd(**extra):
        return lambda m, x, y: apgd_eot(
            m, x, y, eps=eps, iterations=apgd_iters, eot=eot, generator=1, **extra
        )

    def ta_apgd(m, x, y):
        return torchattacks.APGD(m, eps=eps, steps=apgd_iters, eot_iter=eot, seed=1)(x, y)

    def ta_eotpgd(m, x, y):
        torch.manual_seed(1)
        return torchattacks.EOTPGD(m, eps=eps, alpha=step, steps=pgd_iters, eot_iter=eot)(x, y)

    def autoattack(m, x, y):
        return autoattack_rand(
            m, x, y, eps=eps, eot_iter=eot, n_iter=aa_iters, judge_draws=args.draws, seed=1
        )[0]

    grads = {"pgd": pgd_iters * eot, "apgd": (apgd_iters + 1) * eot}
    judged = {"pgd": n * (pgd_iters + 1), "apgd": n * (apgd_iters + 1)}
    return {
        "pgd": ("ours PGD-EOT, one-shot", ours_pgd(), grads["pgd"], 0),
        "pgd-worst": (
            f"ours PGD-EOT, in-loop N={n} worst",
            ours_pgd(judge_draws=n, criterion="worst"),
            grads["pgd"],
            judged["pgd"],
        ),
        "apgd": ("ours APGD-EOT CE, one-shot", ours_apgd(), grads["apgd"], 0),
        "apgd-worst": (
            f"ours APGD-EOT CE, in-loop N={n} worst",
            ours_apgd(judge_draws=n, criterion="worst"),
            grads["apgd"],
            judged["apgd"],
        ),
        "apgd-vote": (
            f"ours APGD-EOT CE, in-loop N={n} vote",
            ours_apgd(judge_draws=n, criterion="vote"),
            grads["apgd"],
            judged["apgd"],
        ),
        "ta-apgd": ("torchattacks APGD(eot_iter)", ta_apgd, grads["apgd"], 0),
        "ta-eotpgd": ("torchattacks EOTPGD", ta_eotpgd, grads["pgd"], 0),
        "autoattack": (
            "AutoAttack rand (re-judged)",
            autoattack,
            2 * (aa_iters + 1) * eot,
            0,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--eps", type=float, default=DIGITS.run.attack.eps)
    parser.add_argument("--step", type=float, default=DIGITS.run.attack.step)
    parser.add_argument("--eot", type=int, default=DIGITS.run.attack.eot)
    parser.add_argument("--gradients", type=int, default=20, help="EOT gradient passes")
    parser.add_argument("--judge-draws", type=int, default=4, help="in-loop draws N")
    parser.add_argument("--draws", type=int, default=DIGITS.run.draws)
    parser.add_argument("--only", help="comma-separated row keys to run (default: all)")
    parser.add_argument("--out", default="benchmarks/results/attack_strength.json")
    args = parser.parse_args()

    x, y = load_digits("test")
    index = fixed_subset(args.n_images, x.shape[0], seed=1).sort().values
    x, y = x[index], y[index]
    model = build_model()
    rows = []
    chosen = attacks(args)
    if args.only:
        keys = args.only.split(",")
        unknown = sorted(set(keys) - set(chosen))
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; choose from {sorted(chosen)}")
        chosen = {key: chosen[key] for key in keys}
    for key, (name, attack, gradients, forwards) in chosen.items():
        model.reseed(ATTACK_SEED)
        start = time.perf_counter()
        x_adv = attack(model, x, y).detach()
        seconds = time.perf_counter() - start
        assert (x_adv - x).abs().max() <= args.eps + 1e-5 and 0 <= x_adv.min() <= x_adv.max() <= 1
        model.reseed(JUDGE_SEED)
        robust = aggregate(predict_draws(model, x_adv, args.draws), y)
        rows.append(
            {
                "key": key,
                "attack": name,
                "eot_gradients_per_sample": gradients,
                "judging_forwards_per_sample": forwards,
                "robust_vote": robust["vote"],
                "robust_worst": robust["worst"],
                "seconds": seconds,
            }
        )
        print(
            f"{name:40s} grads {gradients:3d} fwd {forwards:3d}  vote {100 * robust['vote']:5.1f}"
            f"  worst {100 * robust['worst']:5.1f}  {seconds:6.1f} s",
            flush=True,
        )
    model.reseed(JUDGE_SEED)
    clean = aggregate(predict_draws(model, x, args.draws), y)
    ours = [r for r in rows if r["attack"].startswith("ours")]
    external = [r for r in rows if not r["attack"].startswith("ours")]
    verdict = {
        metric: min(r[metric] for r in ours) <= min(r[metric] for r in external)
        for metric in ("robust_vote", "robust_worst")
        if ours and external
    }
    result = {
        "config": {**vars(args), "defence": "DiffPure t*=60, 10 steps, full gradient"},
        "clean": clean,
        "rows": rows,
        "ours_at_least_as_strong": verdict,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({"clean": clean, "ours_at_least_as_strong": verdict}))


if __name__ == "__main__":
    main()
