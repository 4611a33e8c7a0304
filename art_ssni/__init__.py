"""art-ssni: diffusion-based adversarial purification with sample-specific noise levels.

Layers (dependencies point one way): ``diffusion`` (schedule, model, sampler) <- ``noise``
(fixed level, EPS norms, SSNI-L/N) <- ``purification`` (DiffPure, GDMP, GNS) <- faces
(``defences`` for ART).
"""

from .diffusion import DiffusionModel, VPSchedule
from .noise import EPSNorm, FixedNoise, ReferenceStats, SSNILinear, SSNISigmoid
from .purification import GDMP, GNS, DiffPure, Purifier

__version__ = "0.1.0"

__all__ = [
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
