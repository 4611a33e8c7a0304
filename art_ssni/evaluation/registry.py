"""The attacks as data: one :class:`AttackSpec` per attack in :data:`ATTACKS`.

A spec says which budget keywords its attack takes (the command line and the evaluation pass
exactly those), whether it gets in-loop rows (judged over N draws per iterate), and whether
it needs a noise policy with scores (the selector-aware attack ascends SSNI's EPS norm).
Adding an attack is its function and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .apgd import apgd_eot
from .attacks import bpda_eot, pgd_eot, selector_aware_pgd

Attack = Callable[..., torch.Tensor]
"""``attack(model, x, y, *, generator, **budget) -> x_adv`` in the ball around x, in [0, 1]."""

PGD_BUDGET = ("norm", "eps", "step", "iterations", "eot", "restarts", "max_rows")


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    generator: int,
    norm: str,
    eps: float,
    iterations: int,
    eot: int,
) -> torch.Tensor:
    """Reference AutoAttack ``rand`` examples; the evaluation re-judges them over its draws."""
    from .autoattack import autoattack_rand

    x_adv, _ = autoattack_rand(
        model, x, y, norm=norm, eps=eps, eot_iter=eot, n_iter=iterations, judge_draws=1,
        seed=generator,
    )  # fmt: skip
    return x_adv


@dataclass(frozen=True)
class AttackSpec:
    """An attack: name (``--attack``), label in tables, function, the budget keywords it takes
    (names of :class:`art_ssni.config.AttackConfig` fields; ``selector_weight`` is passed as
    ``weight``), whether it gets in-loop rows, whether it needs a policy with scores, and the
    gradient mode it imposes (BPDA: the identity backward), if any."""

    name: str
    label: str
    run: Attack
    takes: tuple[str, ...]
    in_loop: bool = True
    needs_scores: bool = False
    gradient: str | None = None


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec("pgd-eot", "PGD-EOT", pgd_eot, PGD_BUDGET),
        AttackSpec("bpda-eot", "BPDA-EOT", bpda_eot, PGD_BUDGET, gradient="bpda"),
        AttackSpec(
            "selector-aware",
            "selector-aware PGD-EOT",
            selector_aware_pgd,
            (*PGD_BUDGET, "selector_weight"),
            needs_scores=True,
        ),
        AttackSpec(
            "apgd-eot",
            "APGD-EOT",
            apgd_eot,
            ("norm", "eps", "iterations", "eot", "restarts", "max_rows"),
        ),
        AttackSpec(
            "autoattack",
            "AutoAttack rand (re-judged)",
            autoattack,
            ("norm", "eps", "iterations", "eot"),
            in_loop=False,
        ),
    )
}


def get_attack(name: str) -> AttackSpec:
    """The attack called ``name``; a ValueError lists the registered ones."""
    try:
        return ATTACKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}") from None
