"""A compact convolutional classifier for 32x32 RGB images (the embedded CIFAR-10 classifier).

Stem convolution, then three blocks of conv - max-pool - BatchNorm - GELU - conv - BatchNorm
- GELU that halve the resolution (32 -> 16 -> 8 -> 4), a global max-pool and a linear head;
the layout of the fast CIFAR-10 training baselines (Page's ResNet-9 line, Jordan's airbench)
at a width that trains on a CPU. Inputs are [0, 1] images; the CIFAR-10 channel mean and
standard deviation are applied inside, so attacks and defences work in pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CompactCNN"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
    )


class CompactCNN(nn.Module):
    """[0,1] images (B, 3, H, W) -> logits (B, num_classes).

    Args:
        widths: four channel widths: the stem and the three blocks.
        num_classes: number of logits.
        mean, std: per-channel normalisation applied inside ``forward``.

    ``config`` holds the keyword arguments as plain data, so ``CompactCNN(**net.config)``
    rebuilds the architecture.
    """

    def __init__(
        self,
        *,
        widths: Sequence[int] = (32, 64, 128, 256),
        num_classes: int = 10,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must have 4 entries (stem and three blocks), got {widths}")
        self.config: dict[str, Any] = {
            "widths": list(widths),
            "num_classes": num_classes,
            "mean": list(mean),
            "std": list(std),
        }
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        w = list(widths)
        self.net = nn.Sequential(
            nn.Conv2d(len(mean), w[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.GELU(),
            _block(w[0], w[1]),
            _block(w[1], w[2]),
            _block(w[2], w[3]),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(w[3], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for [0, 1] images ``x``."""
        return self.net((x - self.mean) / self.std)
