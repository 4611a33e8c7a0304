"""The attacks as data: one :class:`AttackSpec` per attack in :data:`ATTACKS`.

A spec says which budget keywords its attack takes (the command line and the evaluation pass
exactly those), whether it gets in-loop rows (judged over N draws per iterate), which part of
a defence it needs (:data:`NEEDS`: the selector-aware attack ascends SSNI's EPS norm), and
whether it judges its own candidates with the evaluation's draws (the ensemble). Adding an
attack is its function and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._rng import RandomSource, as_source, int_seed
from .adaptive import (
    NEEDS,
    dac_mask_pgd,
    low_frequency_pgd,
    selector_constrained_pgd,
    spectral_pgd,
)
from .apgd import apgd_eot
from .attacks import bpda_eot, pgd_eot, selector_aware_pgd
from .ensembles import ENSEMBLE_BUDGET, ensemble

Attack = Callable[..., torch.Tensor]
"""``attack(model, x, y, *, generator, **budget) -> x_adv`` in the ball around x, in [0, 1]."""

PGD_BUDGET = ("norm", "eps", "step", "iterations", "eot", "restarts", "max_rows")


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    generator: RandomSource,
    norm: str,
    eps: float,
    iterations: int,
    eot: int,
) -> torch.Tensor:
    """Reference AutoAttack ``rand`` examples; the evaluation re-judges them over its draws."""
    from .autoattack import autoattack_rand

    x_adv, _ = autoattack_rand(
        model, x, y, norm=norm, eps=eps, eot_iter=eot, n_iter=iterations, judge_draws=1,
        seed=generator if isinstance(generator, int) else int_seed(as_source(generator)),
    )  # fmt: skip
    return x_adv


@dataclass(frozen=True)
class AttackSpec:
    """An attack: name (``--attack``), label in tables, function, the budget keywords it takes
    (names of :class:`art_ssni.config.AttackConfig` fields; ``selector_weight`` is passed as
    ``weight``), whether it gets in-loop rows, what it needs of the defence (a key of
    :data:`NEEDS`), the gradient mode it imposes (BPDA: the identity backward), if any, and
    whether it takes the evaluation's judging ``draws`` and fills a per-image ``breakdown``
    dict that the runner records (the ensemble). An attack whose breakdown holds
    ``predictions`` (and ``levels``) has judged its examples over those draws itself: the
    runner records that verdict instead of judging them again. ``version`` counts changes to
    what the attack returns for the same budget and seed (the ensemble's verdict is version
    2): a resumed run recomputes the units an older version wrote."""

    name: str
    label: str
    run: Attack
    takes: tuple[str, ...]
    in_loop: bool = True
    needs: str | None = None
    gradient: str | None = None
    breakdown: bool = False
    version: int = 1

    def refusal(self, model: nn.Module) -> str | None:
        """Why this attack cannot run on ``model`` (None: it can)."""
        if self.needs is None:
            return None
        test, words = NEEDS[self.needs]
        return None if test(model) else f"the {self.label} attack needs {words}"

    def applies(self, model: nn.Module) -> bool:
        """Whether this attack can run on ``model``."""
        return self.refusal(model) is None


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
            needs="scores",
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
        AttackSpec(
            "selector-constrained",
            "selector-constrained PGD-EOT",
            selector_constrained_pgd,
            PGD_BUDGET,
            needs="reference",
        ),
        AttackSpec("dac-mask", "mask-steering PGD-EOT", dac_mask_pgd, PGD_BUDGET, needs="saliency"),
        AttackSpec("spectral", "spectral PGD-EOT", spectral_pgd, PGD_BUDGET, needs="spectral"),
        AttackSpec("low-frequency", "low-frequency PGD-EOT", low_frequency_pgd, PGD_BUDGET),
        AttackSpec(
            "ensemble",
            "adaptive ensemble",
            ensemble,
            ENSEMBLE_BUDGET,
            in_loop=False,
            breakdown=True,
            version=2,
        ),
    )
}


def get_attack(name: str) -> AttackSpec:
    """The attack called ``name``; a ValueError lists the registered ones."""
    try:
        return ATTACKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}") from None
