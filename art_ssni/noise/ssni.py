"""SSNI reweighting: a per-sample noise level from the EPS norm (Sun et al., SSNI, Sec. 4).

SSNI-L: t_i = round((EPS_i - xi_min) / (xi_max - xi_min) * T + b)
SSNI-N: t_i = round((T + b) * sigmoid((EPS_i - mu) / tau))
with T = t*, b the bias, xi/mu from the clean reference statistics; t_i is clamped to
[0, t_max] and t_i = 0 means "no purification". Rounding is half up.
"""

from __future__ import annotations

import torch

from .._rng import RandomSource
from ..diffusion.rounding import round_half_up
from ..validation import check_images, check_number
from .eps import EPSNorm, ReferenceStats


class _SSNIPolicy:
    def __init__(
        self,
        eps_norm: EPSNorm,
        stats: ReferenceStats,
        t_star: int,
        bias: float,
        t_max: int | None,
    ) -> None:
        stats.check(eps_norm)
        num_steps = eps_norm.diffusion.schedule.num_steps
        t_max = eps_norm.diffusion.max_level if t_max is None else t_max
        if isinstance(t_star, bool) or not isinstance(t_star, int):
            raise ValueError(f"t_star must be an int, got {t_star!r}")
        check_number(t_star, "t_star", low=1, high=num_steps, integer=True)
        check_number(t_max, "t_max", low=1, high=eps_norm.diffusion.max_level, integer=True)
        self.eps_norm = eps_norm
        self.stats = stats
        self.t_star = t_star
        self.bias = float(check_number(bias, "bias (steps)", low=-num_steps, high=num_steps))
        self.t_max = int(t_max)

    def scores(self, x: torch.Tensor, generator: RandomSource = None) -> torch.Tensor:
        """The EPS norms this policy maps to levels."""
        x = check_images(x)
        if tuple(x.shape[1:]) != tuple(self.stats.image_shape):
            self.stats.check(self.eps_norm, tuple(x.shape[1:]))
        return self.eps_norm(x, generator)

    def __call__(self, x: torch.Tensor, generator: RandomSource = None) -> torch.Tensor:
        """LongTensor of B levels for images x in [0, 1]."""
        return self.levels_from_scores(self.scores(x, generator))

    def levels_from_scores(self, eps: torch.Tensor) -> torch.Tensor:
        """Levels of EPS norms; a non-finite norm (a diverged diffusion network) raises
        instead of becoming level 0, which would switch purification off for that sample."""
        bad = ~torch.isfinite(eps)
        if bool(bad.any()):
            raise ValueError(
                f"{type(self).__name__}: the EPS norm of {int(bad.sum())} of {eps.numel()} "
                f"samples is not finite ({eps[bad][:3].tolist()}); the diffusion network "
                f"{self.eps_norm.diffusion.name!r} diverged on them"
            )
        return round_half_up(self.reweight(eps)).clamp(0, self.t_max)

    def reweight(self, eps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SSNILinear(_SSNIPolicy):
    """SSNI-L. ``bounds="reference"`` (default) uses the reference min/max only, so a sample's
    level never depends on its batch-mates; ``"batch"`` also folds in the current batch's
    norms, as the public reference code does (kept for parity only)."""

    def __init__(
        self,
        eps_norm: EPSNorm,
        stats: ReferenceStats,
        t_star: int,
        bias: float = 0.0,
        *,
        t_max: int | None = None,
        bounds: str = "reference",
    ) -> None:
        super().__init__(eps_norm, stats, t_star, bias, t_max)
        if bounds not in ("reference", "batch"):
            raise ValueError(f"bounds must be 'reference' or 'batch', got {bounds!r}")
        if not stats.max > stats.min:
            raise ValueError("reference statistics have max == min; SSNI-L needs a range")
        self.bounds = bounds

    def reweight(self, eps: torch.Tensor) -> torch.Tensor:
        lo, hi = self.stats.min, self.stats.max
        if self.bounds == "batch":
            lo, hi = min(lo, float(eps.min())), max(hi, float(eps.max()))
        return (eps - lo) / (hi - lo) * self.t_star + self.bias

    def __repr__(self) -> str:
        return f"SSNILinear(t_star={self.t_star}, bias={self.bias:g}, bounds={self.bounds!r})"


class SSNISigmoid(_SSNIPolicy):
    """SSNI-N. ``tau`` is required and positive (the paper picks tau = 20 on CIFAR-10)."""

    def __init__(
        self,
        eps_norm: EPSNorm,
        stats: ReferenceStats,
        t_star: int,
        bias: float = 0.0,
        tau: float | None = None,
        *,
        t_max: int | None = None,
    ) -> None:
        super().__init__(eps_norm, stats, t_star, bias, t_max)
        if tau is None:
            raise ValueError("tau must be a positive number (the sigmoid temperature), got None")
        check_number(tau, "tau (the sigmoid temperature)", low=0.0, low_open=True)
        self.tau = float(tau)

    def reweight(self, eps: torch.Tensor) -> torch.Tensor:
        return (self.t_star + self.bias) * torch.sigmoid((eps - self.stats.mean) / self.tau)

    def __repr__(self) -> str:
        return f"SSNISigmoid(t_star={self.t_star}, bias={self.bias:g}, tau={self.tau:g})"
