"""Noise-level policies: fixed t*, EPS norms with their reference statistics, SSNI-L/N.

Heterogeneous noise (the later methods): :class:`AttentionMask` (DAC's region mask) and
:class:`SpectralNoise` (MANI-Pure's magnitude-adaptive noise).

A policy is called as ``policy(x, generator)`` with x in [0, 1] and returns a LongTensor of B
levels; it exposes ``t_star``, the level it is calibrated around. The purifier hands it the
call's per-sample random streams (:class:`~art_ssni._rng.SampleStreams`): a stochastic policy
draws each sample's randomness from that sample's own stream (``generator.randn(shape, ...)``),
so that no level depends on the batch.
"""

from .attention import ATTENTION_LAYERS, AttentionMask
from .eps import EPSNorm, ReferenceStats
from .fixed import FixedNoise
from .spectral import SpectralNoise
from .ssni import SSNILinear, SSNISigmoid

__all__ = [
    "ATTENTION_LAYERS",
    "AttentionMask",
    "EPSNorm",
    "FixedNoise",
    "ReferenceStats",
    "SSNILinear",
    "SSNISigmoid",
    "SpectralNoise",
]
