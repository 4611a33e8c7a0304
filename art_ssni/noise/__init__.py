"""Noise-level policies: fixed t*, EPS norms with their reference statistics, SSNI-L/N.

A policy is called as ``policy(x, generator=None)`` with x in [0, 1] and returns a LongTensor
of B levels; it exposes ``t_star``, the level it is calibrated around.
"""

from .eps import EPSNorm, ReferenceStats
from .fixed import FixedNoise
from .ssni import SSNILinear, SSNISigmoid

__all__ = ["EPSNorm", "FixedNoise", "ReferenceStats", "SSNILinear", "SSNISigmoid"]
