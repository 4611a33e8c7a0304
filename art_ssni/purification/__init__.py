"""Purification methods on one engine: DiffPure, GDMP, GNS."""

from .engine import GRADIENT_MODES, Purifier
from .methods import GDMP, GNS, GNS_CIFAR10_STAGES, GNS_IMAGENET_STAGES, DiffPure

__all__ = [
    "GDMP",
    "GNS",
    "GNS_CIFAR10_STAGES",
    "GNS_IMAGENET_STAGES",
    "GRADIENT_MODES",
    "DiffPure",
    "Purifier",
]
