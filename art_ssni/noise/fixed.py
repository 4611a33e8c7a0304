"""The published methods' policy: one noise level t* for every input."""

from __future__ import annotations

import torch

from ..validation import check_images


class FixedNoise:
    """Returns ``t_star`` for every sample (DiffPure, GDMP, GNS as published)."""

    def __init__(self, t_star: int) -> None:
        if isinstance(t_star, bool) or not isinstance(t_star, int) or t_star < 0:
            raise ValueError(f"t_star must be a non-negative int, got {t_star!r}")
        self.t_star = t_star

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = check_images(x)
        return torch.full((x.shape[0],), self.t_star, dtype=torch.long, device=x.device)

    def __repr__(self) -> str:
        return f"FixedNoise(t_star={self.t_star})"
