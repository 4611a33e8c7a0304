"""Purification methods on one engine: DiffPure, GDMP, GNS, DAC, MANI-Pure."""

from .engine import GRADIENT_MODES, Purifier, Stage
from .heterogeneous import DAC, MANIPure, phase_projection
from .methods import GDMP, GNS, GNS_CIFAR10_STAGES, GNS_IMAGENET_STAGES, DiffPure

__all__ = [
    "DAC",
    "MANIPure",
    "phase_projection",
    "GDMP",
    "GNS",
    "GNS_CIFAR10_STAGES",
    "GNS_IMAGENET_STAGES",
    "GRADIENT_MODES",
    "DiffPure",
    "Purifier",
    "Stage",
]
