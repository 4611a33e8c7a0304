"""Attacks and honest accuracy for randomised defences."""

from .accuracy import AGGREGATIONS, aggregate, correct_draws, majority_vote, predict_draws
from .adaptive import dac_mask_pgd, low_frequency_pgd, selector_constrained_pgd, spectral_pgd
from .apgd import apgd_eot
from .attacks import (
    NORMS,
    bpda_eot,
    eot_gradient,
    gradient_mode,
    pgd_eot,
    project,
    selector_aware_pgd,
)
from .autoattack import autoattack_rand, format_eps
from .ensembles import default_members, ensemble
from .eot import CRITERIA, LOSSES, judge, verdict

__all__ = [
    "AGGREGATIONS",
    "CRITERIA",
    "LOSSES",
    "NORMS",
    "aggregate",
    "apgd_eot",
    "autoattack_rand",
    "format_eps",
    "bpda_eot",
    "correct_draws",
    "dac_mask_pgd",
    "default_members",
    "ensemble",
    "eot_gradient",
    "gradient_mode",
    "judge",
    "low_frequency_pgd",
    "majority_vote",
    "pgd_eot",
    "predict_draws",
    "project",
    "selector_aware_pgd",
    "selector_constrained_pgd",
    "spectral_pgd",
    "verdict",
]
