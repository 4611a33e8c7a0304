"""art-ssni: diffusion-based adversarial purification with sample-specific noise levels.

Layers (dependencies point one way): ``diffusion`` (schedule, model, sampler) <- ``noise``
(fixed level, EPS norms, SSNI-L/N, attention masks, spectral noise) <- ``purification``
(DiffPure, GDMP, GNS, DAC, MANI-Pure) <- faces
(``defences`` for ART, ``models.DefendedClassifier`` for every attack, ``evaluation``,
the command line).
"""

from .config import RunConfig, resolve
from .diffusion import DiffusionModel, VPSchedule
from .models.defended import DefendedClassifier
from .noise import (
    AttentionMask,
    EPSNorm,
    FixedNoise,
    ReferenceStats,
    SpectralNoise,
    SSNILinear,
    SSNISigmoid,
)
from .pipeline import evaluate
from .purification import DAC, GDMP, GNS, DiffPure, MANIPure, Purifier

__version__ = "0.1.0"

__all__ = [
    "AttentionMask",
    "DAC",
    "DefendedClassifier",
    "GDMP",
    "GNS",
    "DiffPure",
    "DiffusionModel",
    "EPSNorm",
    "FixedNoise",
    "MANIPure",
    "Purifier",
    "ReferenceStats",
    "RunConfig",
    "SSNILinear",
    "SSNISigmoid",
    "SpectralNoise",
    "VPSchedule",
    "evaluate",
    "resolve",
]
