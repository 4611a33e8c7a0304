"""Checks that catch gradient masking (Carlini et al. 2019; Athalye et al. 2018).

A defence that only hides gradients shows it here: accuracy should fall towards 0 as the
budget grows, more iterations should never raise robust accuracy materially, the attack
should beat random noise of the same size, and the undefended classifier should break.
The attack's own strength is checked too: judging in the loop should never leave
more samples robust than one-shot, and more restarts should never raise robust accuracy
(both up to ``tolerance``, since the final judging draws are random). And the budget should
have converged: twice the iterations on the same images should leave the robust accuracy
inside the 95 % Wilson interval of the budget's own (:func:`convergence`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._rng import as_generator, rand, randn
from .accuracy import aggregate, predict_draws, wilson_interval
from .attacks import per_sample_l2, pgd_eot, project


def random_perturbation(
    x: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None
) -> torch.Tensor:
    """x plus random noise of the attack's size: a random corner of the Linf box, or a
    random direction of L2 length eps, kept in [0, 1]."""
    draw = {"generator": generator, "device": x.device, "dtype": x.dtype}
    if norm == "Linf":
        delta = (rand(x.shape, **draw) < 0.5).to(x.dtype) * 2 * eps - eps
    else:
        direction = randn(x.shape, **draw)
        delta = direction / per_sample_l2(direction) * eps
    return x + project(delta, x, norm, eps)


def settled(previous: float, current: float, n: int) -> tuple[bool, list[float]]:
    """Whether the accuracy ``current`` lies inside the 95 % Wilson interval of ``previous``
    (both shares of the same ``n`` images), and that interval: a change the images cannot
    resolve."""
    low, high = wilson_interval(round(previous * n), n)
    return low - 1e-12 <= current <= high + 1e-12, [low, high]


def convergence(by_iterations: Sequence[dict[str, Any]], budget: int, n: int) -> dict | None:
    """The budget's robust vote against that at twice its iterations (``None`` when the
    sweep lacks either): ``converged`` when the doubled budget's accuracy lies inside the
    Wilson interval of the budget's."""
    found = {row["iterations"]: row["robust_vote"] for row in by_iterations}
    if budget not in found or 2 * budget not in found:
        return None
    converged, interval = settled(found[budget], found[2 * budget], n)
    return {
        "iterations": budget,
        "robust_vote": found[budget],
        "ci95": interval,
        "doubled_iterations": 2 * budget,
        "doubled_robust_vote": found[2 * budget],
        "images": n,
        "converged": converged,
    }


def _vote(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> float:
    return aggregate(predict_draws(model, x, draws), y.cpu())["vote"]


def sanity_checks(
    model: nn.Module,
    undefended: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    step: float,
    iterations: int,
    eot: int,
    draws: int,
    eps_multipliers: Sequence[float] = (0.5, 1, 2, 4, 8),
    iteration_multipliers: Sequence[float] = (0.5, 1, 2),
    restart_counts: Sequence[int] = (1, 2),
    judge_draws: int | None = None,
    seed: int = 0,
    tolerance: float = 0.05,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every check; each verdict is reported with the numbers behind it.

    ``progress`` receives one line before each of the attacks (they take most of the time).
    The in-loop check judges over ``judge_draws`` draws (default: ``draws``) with the vote
    criterion, matching the vote accuracy every check reports.
    """
    attack = {"norm": norm, "iterations": iterations, "eot": eot, "generator": seed}
    total = len(eps_multipliers) + len(iteration_multipliers) + len(restart_counts) + 3
    done = iter(range(1, total + 1))

    def announce(what: str) -> None:
        if progress is not None:
            progress(f"sanity attack {next(done)}/{total}: {what}")

    by_eps = []
    for m in eps_multipliers:
        e = min(eps * m, 1.0)
        announce(f"eps = {e:g}")
        x_adv = pgd_eot(model, x, y, **{**attack, "eps": e, "step": step * e / eps})
        by_eps.append({"eps": e, "robust_vote": _vote(model, x_adv, y, draws)})
    by_iterations = []
    for m in iteration_multipliers:
        n = max(1, round(iterations * m))
        announce(f"{n} iterations")
        x_adv = pgd_eot(model, x, y, **{**attack, "iterations": n, "eps": eps, "step": step})
        by_iterations.append({"iterations": n, "robust_vote": _vote(model, x_adv, y, draws)})
    noisy = random_perturbation(x, norm, eps, as_generator(seed + 1, x.device))
    announce("the defence at eps")
    x_adv = pgd_eot(model, x, y, **{**attack, "eps": eps, "step": step})
    attacked = _vote(model, x_adv, y, draws)
    random_acc = _vote(model, noisy, y, draws)
    by_restarts = []
    for r in restart_counts:
        announce(f"PGD-EOT with {r} restart(s)")
        x_r = pgd_eot(model, x, y, **{**attack, "eps": eps, "step": step, "restarts": r})
        by_restarts.append({"restarts": r, "robust_vote": _vote(model, x_r, y, draws)})
    in_loop = {"judge_draws": judge_draws or draws, "criterion": "vote"}
    announce("PGD-EOT judged in the loop")
    x_loop = pgd_eot(model, x, y, **{**attack, "eps": eps, "step": step, **in_loop})
    in_loop_acc = _vote(model, x_loop, y, draws)
    announce("the undefended classifier")
    x_und = pgd_eot(undefended, x, y, **{**attack, "eot": 1, "eps": eps, "step": step})
    undefended_acc = _vote(undefended, x_und, y, 1)
    iteration_accs = [r["robust_vote"] for r in by_iterations]
    restart_accs = [r["robust_vote"] for r in by_restarts]
    converging = convergence(by_iterations, iterations, int(y.shape[0]))
    checks = {
        "accuracy_falls_with_eps": by_eps[-1]["robust_vote"] <= 0.1,
        "more_iterations_never_help": all(
            later <= earlier + tolerance
            for earlier, later in zip(iteration_accs, iteration_accs[1:])
        ),
        "attack_beats_random_noise": attacked < random_acc - tolerance or random_acc == 0.0,
        "in_loop_at_most_one_shot": in_loop_acc <= attacked + tolerance,
        "more_restarts_never_help": all(
            later <= earlier + tolerance for earlier, later in zip(restart_accs, restart_accs[1:])
        ),
        "undefended_is_broken": undefended_acc <= tolerance,
    }
    if converging is not None:
        checks["budget_converged"] = converging["converged"]
    return {
        "by_eps": by_eps,
        "by_iterations": by_iterations,
        "attack_vote": attacked,
        "by_restarts": by_restarts,
        "in_loop": {**in_loop, "robust_vote": in_loop_acc},
        "random_noise_vote": random_acc,
        "undefended_vote": undefended_acc,
        "convergence": converging,
        "converged": None if converging is None else converging["converged"],
        "checks": checks,
        "passed": all(checks.values()),
    }
