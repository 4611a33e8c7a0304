"""The object every attack and integration works on: purify, normalise, classify."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import as_floating, check_images


class DefendedClassifier(nn.Module):
    """x in [0, 1] NCHW -> logits of ``classifier(normalise(purifier(x)))``.

    Parameters are frozen and every submodule stays in eval mode whatever ``.train()`` says,
    so torchattacks' and ART's mode switches change nothing: the defence's randomness comes
    from the purifier's generator alone. ``purify_size`` resizes to the diffusion model's
    resolution and back (ImageNet: purify at 256x256 around a 224x224 classifier input).
    ``purifier=None`` is the undefended classifier.
    """

    def __init__(
        self,
        purifier: nn.Module | None,
        classifier: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        purify_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.purifier = purifier
        self.classifier = classifier
        if mean is not None:
            mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
            if bool((std_t <= 0).any()):
                raise ValueError(f"std must be positive, got {list(std)}")
            self.register_buffer("mean", mean_t)
            self.register_buffer("std", std_t)
        else:
            self.mean = None
            self.std = None
        self.purify_size = tuple(purify_size) if purify_size is not None else None
        for param in self.parameters():
            param.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> DefendedClassifier:
        self.training = mode
        for module in self.children():
            module.train(False)
        return self

    @property
    def votes(self) -> int:
        """Draws the published method votes over (GNS: 10), 1 otherwise."""
        return int(getattr(self.purifier, "votes", 1))

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """The purified images (the identity without a purifier)."""
        if self.purifier is None:
            return x
        if self.purify_size is None or tuple(x.shape[-2:]) == self.purify_size:
            return self.purifier(x)
        size = tuple(x.shape[-2:])
        big = F.interpolate(x, size=self.purify_size, mode="bilinear", align_corners=False)
        out = self.purifier(big.clamp(0, 1))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False).clamp(0, 1)

    @property
    def dtype(self) -> torch.dtype:
        """The classifier's floating dtype (float32 for a parameter-free classifier)."""
        for param in self.classifier.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for x in [0, 1]; floating inputs of any dtype are cast to the classifier's
        (differentiably, so gradients come back in the caller's dtype)."""
        check_images(x)
        z = self.purify(as_floating(x, self.dtype))
        if self.mean is not None:
            z = (z - self.mean) / self.std
        return self.classifier(z)
