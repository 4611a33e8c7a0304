"""The noise policies as data: one :class:`NoiseSpec` per policy in :data:`NOISES`.

A spec builds its policy around a method's reference level t* from the SSNI settings a run
resolved (EPS measure, reference statistics, bias, temperature). Adding a policy is its
class and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .eps import EPSNorm, ReferenceStats
from .fixed import FixedNoise
from .ssni import SSNILinear, SSNISigmoid

Build = Callable[..., object]


@dataclass(frozen=True)
class NoiseSpec:
    """A noise policy: its name (``--noise``), its label in tables, whether it reads the
    EPS measure and reference statistics, and how it is built.

    ``build(t_star, eps_norm=, stats=, bias=, tau=, bounds=)``; ``tau=None`` means the
    reference statistics' standard deviation.
    """

    name: str
    label: str
    build: Build
    uses_scores: bool = False


def _fixed(t_star: int, **_: object) -> FixedNoise:
    return FixedNoise(t_star)


def _ssni_l(
    t_star: int, *, eps_norm: EPSNorm, stats: ReferenceStats, bias: float, bounds: str, **_: object
) -> SSNILinear:
    return SSNILinear(eps_norm, stats, t_star, bias, bounds=bounds)


def _ssni_n(
    t_star: int,
    *,
    eps_norm: EPSNorm,
    stats: ReferenceStats,
    bias: float,
    tau: float | None,
    **_: object,
) -> SSNISigmoid:
    return SSNISigmoid(eps_norm, stats, t_star, bias, stats.std if tau is None else tau)


NOISES: dict[str, NoiseSpec] = {
    spec.name: spec
    for spec in (
        NoiseSpec("fixed", "fixed", _fixed),
        NoiseSpec("ssni-l", "SSNI-L", _ssni_l, uses_scores=True),
        NoiseSpec("ssni-n", "SSNI-N", _ssni_n, uses_scores=True),
    )
}


def get_noise(name: str) -> NoiseSpec:
    """The policy called ``name``; a ValueError lists the registered ones."""
    try:
        return NOISES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown noise policy {name!r}; choose from {sorted(NOISES)}") from None
