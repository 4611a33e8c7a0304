"""art-ssni: diffusion-based adversarial purification with sample-specific noise levels.

Layers (dependencies point one way): ``diffusion`` (schedule, model, sampler) <- ``noise``
(fixed level, EPS norms, SSNI-L/N) <- ``purification`` (DiffPure, GDMP, GNS) <- faces
(``defences`` for ART, ``models.DefendedClassifier`` for every attack, ``evaluation``,
the command line).
"""

from .diffusion import DiffusionModel, VPSchedule
from .models.defended import DefendedClassifier
from .noise import EPSNorm, FixedNoise, ReferenceStats, SSNILinear, SSNISigmoid
from .purification import GDMP, GNS, DiffPure, Purifier

__version__ = "0.1.0"

__all__ = [
    "DefendedClassifier",
    "GDMP",
    "GNS",
    "DiffPure",
    "DiffusionModel",
    "EPSNorm",
    "FixedNoise",
    "Purifier",
    "ReferenceStats",
    "SSNILinear",
    "SSNISigmoid",
    "VPSchedule",
]
