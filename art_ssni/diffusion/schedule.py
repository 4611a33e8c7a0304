"""The variance-preserving noise schedule (Ho et al. 2020; Song et al. 2021).

Levels are integers t in [0, N]: ``abar(0) = 1`` is the clean image and
``abar(t) = prod_{i<=t} (1 - beta_i)`` with ``beta = linspace(beta_start, beta_end, N)``.
The continuous VP-SDE time s in (0, 1] corresponds to the level t = N s, so DiffPure's
t* = 0.1 is t = 100. ``continuous=True`` evaluates the VP-SDE marginal
``abar(s) = exp(-(beta_min s + (beta_max - beta_min) s^2 / 2))`` on the same grid, with
beta_min = N beta_start and beta_max = N beta_end (0.1 and 20 for the defaults).
"""

from __future__ import annotations

import torch

from .rounding import round_half_up


class VPSchedule:
    """Table of abar_t over the levels 0..N, looked up per sample."""

    def __init__(
        self,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        num_steps: int = 1000,
        *,
        continuous: bool = False,
    ) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
                f"beta_end={beta_end}"
            )
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.num_steps = int(num_steps)
        self.continuous = bool(continuous)
        if continuous:
            abar = self.sde_abar(torch.arange(num_steps + 1, dtype=torch.float64) / num_steps)
        else:
            betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
            abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
        self._abar = abar
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for t = 0..N (float64, length N + 1)."""
        return self._abar

    def abar(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """abar at each level of the LongTensor ``t`` (any shape), on ``t``'s device."""
        if t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"levels must be an integer tensor, got {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > self.num_steps):
            raise ValueError(
                f"levels must lie in [0, {self.num_steps}], got {int(t.min())}..{int(t.max())}"
            )
        key = (t.device, dtype)
        if key not in self._cache:
            self._cache[key] = self._abar.to(device=t.device, dtype=dtype)
        return self._cache[key][t.long()]

    def time(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous VP time s = t / N of (integer or continuous) levels, as float64."""
        return t.double() / self.num_steps

    @property
    def beta_min(self) -> float:
        """The VP-SDE's beta(0) = N beta_start (0.1 for the defaults)."""
        return self.num_steps * self.beta_start

    @property
    def beta_max(self) -> float:
        """The VP-SDE's beta(1) = N beta_end (20 for the defaults)."""
        return self.num_steps * self.beta_end

    def sde_beta(self, s: torch.Tensor) -> torch.Tensor:
        """beta(s) = beta_min + (beta_max - beta_min) s of the VP-SDE (Song et al. 2021)."""
        return self.beta_min + (self.beta_max - self.beta_min) * s.double()

    def sde_abar(self, s: torch.Tensor) -> torch.Tensor:
        """The VP-SDE marginal abar(s) = exp(-(beta_min s + (beta_max - beta_min) s^2 / 2)).

        Defined for any continuous time s in [0, 1], whichever table this schedule keeps;
        DiffPure's SDE solver uses it for every network (score_sde and guided-diffusion).
        """
        s = s.double()
        return torch.exp(-(self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2))

    def level(self, s: float | torch.Tensor) -> torch.Tensor:
        """Nearest integer level of a continuous time s in [0, 1] (0.1 -> 100 for N = 1000)."""
        s = torch.as_tensor(s, dtype=torch.float64)
        if bool(((s < 0) | (s > 1)).any()):
            raise ValueError(f"continuous time must lie in [0, 1], got {s}")
        return round_half_up(s * self.num_steps)

    def describe(self) -> str:
        """A canonical string that identifies this schedule (recorded in statistics files)."""
        kind = "continuous-vp" if self.continuous else "ddpm-linear"
        return (
            f"{kind}(beta_start={self.beta_start!r},beta_end={self.beta_end!r},N={self.num_steps})"
        )

    def __repr__(self) -> str:
        return f"VPSchedule<{self.describe()}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VPSchedule) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash(self.describe())
