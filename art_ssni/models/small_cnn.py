"""A small convolutional classifier for 8x8 greyscale digits (the embedded zoo classifier).

It takes images in [0, 1] (B, 1, 8, 8), the library's boundary convention, and maps them to
[-1, 1] with a fixed affine map inside the module, so attacks and defences never need a
separate normalisation step. Two conv stages (8x8 -> 4x4 -> 2x2) and a small MLP head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Conv-ReLU x2, max-pool, conv-ReLU x2, max-pool, then a two-layer head -> logits.

    Args:
        in_channels: image channels (1 for digits).
        num_classes: number of output logits.
        channels: widths of the two conv stages.
        hidden: width of the hidden layer of the head.
        dropout: dropout before each linear layer of the head.
        image_size: input height = width (must be divisible by 4).

    ``config`` holds these keyword arguments as plain data (``SmallCNN(**net.config)``).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: tuple[int, int] | list[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.25,
        image_size: int = 8,
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        c1, c2 = channels
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "channels": [c1, c2],
            "hidden": hidden,
            "dropout": dropout,
            "image_size": image_size,
        }
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = c2 * (image_size // 4) ** 2
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(flat, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for images ``x`` (B, C, H, W) in [0, 1]."""
        return self.head(self.features(2.0 * x - 1.0))
