"""Round half up: the one rounding rule of levels, level grids and SSNI's reweighting."""

from __future__ import annotations

import torch


def round_half_up(numerator: torch.Tensor, denominator: torch.Tensor | int = 1) -> torch.Tensor:
    """The nearest integer to numerator / denominator, halves rounded up (2.5 -> 3,
    -2.5 -> -2), as a LongTensor.

    Integer tensors: floor((2 n + d) / (2 d)) in integer arithmetic, exact at any size (no
    float division); floating tensors: floor(n / d + 1/2). ``denominator`` is >= 1.
    """
    if numerator.is_floating_point():
        return torch.floor(numerator / denominator + 0.5).long()
    return torch.div(2 * numerator + denominator, 2 * denominator, rounding_mode="floor").long()
