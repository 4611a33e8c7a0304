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

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CompactCNN", "whitening_weights"]

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


STEMS = ("conv", "whiten")
TTAS = ("none", "flip", "flip_translate")


class CompactCNN(nn.Module):
    """[0,1] images (B, 3, H, W) -> logits (B, num_classes).

    Args:
        widths: four channel widths: the stem and the three blocks.
        num_classes: number of logits.
        mean, std: per-channel normalisation applied inside ``forward``.
        stem: ``"conv"`` (3x3 convolution, BatchNorm, GELU) or ``"whiten"`` (a 2x2
            convolution without padding whose weights are set once from the training
            patches' covariance, then GELU; ``widths[0]`` must be ``2 * 4 * channels``).
        head_bias: whether the final linear layer has a bias.
        head_scale: a constant factor on the logits (the fast-training recipes use 1/9).
        tta: test-time augmentation in eval mode: ``"none"``, ``"flip"`` (mean logits of the
            image and its mirror) or ``"flip_translate"`` (weight 1/2 on that, 1/4 each on
            the same pair shifted one pixel up-left and down-right, reflect-padded). It is
            part of the forward, so attacks and defences see the augmented model; the cost
            is 2 or 6 forward passes.

    ``config`` holds the keyword arguments as plain data, so ``CompactCNN(**net.config)``
    rebuilds the architecture. Module names do not depend on the stem (the whitening stem's
    second slot is an identity): the three blocks are always ``net.3``, ``net.4`` and
    ``net.5``, which DAC's attention layers name.
    """

    def __init__(
        self,
        *,
        widths: Sequence[int] = (32, 64, 128, 256),
        num_classes: int = 10,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        stem: str = "conv",
        head_bias: bool = True,
        head_scale: float = 1.0,
        tta: str = "none",
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must have 4 entries (stem and three blocks), got {widths}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if tta not in TTAS:
            raise ValueError(f"tta must be one of {TTAS}, got {tta!r}")
        channels = len(mean)
        if stem == "whiten" and widths[0] != 8 * channels:
            raise ValueError(
                f"a whitening stem has 2 x 4 x {channels} = {8 * channels} channels, "
                f"got widths[0] = {widths[0]}"
            )
        self.config: dict[str, Any] = {
            "widths": list(widths),
            "num_classes": num_classes,
            "mean": list(mean),
            "std": list(std),
        }
        if (stem, head_bias, head_scale, tta) != ("conv", True, 1.0, "none"):
            self.config.update(stem=stem, head_bias=head_bias, head_scale=head_scale, tta=tta)
        self.tta = tta
        self.head_scale = head_scale
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        w = list(widths)
        if stem == "conv":
            first: list[nn.Module] = [
                nn.Conv2d(channels, w[0], 3, padding=1, bias=False),
                nn.BatchNorm2d(w[0]),
            ]
        else:
            first = [nn.Conv2d(channels, w[0], 2, padding=0, bias=True), nn.Identity()]
        self.net = nn.Sequential(
            *first,
            nn.GELU(),
            _block(w[0], w[1]),
            _block(w[1], w[2]),
            _block(w[2], w[3]),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(w[3], num_classes, bias=head_bias),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of one view, without test-time augmentation."""
        out = self.net((x - self.mean) / self.std)
        return out * self.head_scale if self.head_scale != 1.0 else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for [0, 1] images ``x`` (test-time augmented in eval mode)."""
        if self.training or self.tta == "none":
            return self.logits(x)
        pair = self._flip_mean(x)
        if self.tta == "flip":
            return pair
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        h, w = x.shape[-2:]
        up_left = padded[..., :h, :w]
        down_right = padded[..., 2:, 2:]
        return 0.5 * pair + 0.25 * (self._flip_mean(up_left) + self._flip_mean(down_right))

    def _flip_mean(self, x: torch.Tensor) -> torch.Tensor:
        both = self.logits(torch.cat([x, x.flip(-1)]))
        return 0.5 * (both[: len(x)] + both[len(x) :])


def whitening_weights(patches: torch.Tensor, eps: float = 5e-4) -> torch.Tensor:
    """Weights of a whitening stem from image patches (N, C, k, k): (2 C k k, C, k, k).

    The eigenvectors v_i of the patch covariance scaled by 1 / sqrt(lambda_i + eps), largest
    eigenvalue first, then their negatives, so a GELU after the stem keeps both signs.
    """
    n, c, k, _ = patches.shape
    flat = patches.reshape(n, -1).double()
    centred = flat - flat.mean(0)
    values, vectors = torch.linalg.eigh(centred.T @ centred / n)
    filters = (vectors.flip(1) / (values.flip(0) + eps).sqrt()).T.float().reshape(-1, c, k, k)
    return torch.cat([filters, -filters])
