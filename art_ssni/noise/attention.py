"""DAC's spatial attention mask: where the classifier looks (Pei et al., CVPR 2025, sec. 3.2).

The classifier runs on the input as it expects it; forward hooks on named blocks record their
activations; per block the channel sum of squared activations is upsampled bilinearly to the
image size and min-max scaled per image to [0, 1]; the blocks are merged by an element-wise
max; pixels at or above ``threshold`` (or exactly the ``top_fraction`` highest of each image)
are 1. M = 1 marks attended pixels, which DAC noises strongly.

Not copied from the public code: it feeds the classifier [-1, 1] images normalised with
ImageNet statistics (we feed [0, 1], normalised only with the ``mean``/``std`` given), adds
hooks on every call and never removes them (ours are removed after each call), and writes the
maps to disk (ours writes nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_images, check_number

ATTENTION_LAYERS: dict[str, tuple[str, ...]] = {
    "wrn-28-10": ("block1.layer.3.relu2", "block2.layer.3.relu2", "block3.layer.3.relu2", "relu"),
    "wrn-70-16": (
        "layer.0.block.10.relu_1",
        "layer.1.block.10.relu_1",
        "layer.2.block.10.relu_1",
        "relu",
    ),
    "resnet-50": ("model.layer1", "model.layer2", "model.layer3", "model.layer4"),
    "digits": ("features.3", "features.8"),
    "compact-cnn": ("net.3.6", "net.4.6", "net.5.6"),
}
"""Published layer lists under our loaders' module names: RobustBench WRN-28-10
(:func:`~art_ssni.models.load_cifar10_wideresnet`), DiffPure's WRN-70-16 (RobustBench's
DMWideResNet: the last block of each group, then the final activation), torchvision ResNet-50
behind :class:`~art_ssni.models.NormalizedClassifier` (``layer1``..``layer4``), and the
embedded digits :class:`~art_ssni.models.SmallCNN` (the last ReLU of each conv stage)."""


def _floating_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype of the module's first floating parameter (its input dtype), else ``default``."""
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return default


class AttentionMask:
    """``mask(x)`` for images x in [0, 1] (B, C, H, W) -> float 0/1 tensor (B, 1, H, W).

    ``layers`` are module names of ``classifier`` (see :data:`ATTENTION_LAYERS`); ``mean`` and
    ``std`` (per channel) normalise the input first when the classifier expects it. The map is
    computed without gradient in eval mode (the classifier's mode is restored after).
    """

    def __init__(
        self,
        classifier: nn.Module,
        layers: Sequence[str],
        *,
        threshold: float = 0.9,
        top_fraction: float | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if isinstance(layers, str) or not layers:
            raise ValueError(f"layers must be a non-empty sequence of module names, got {layers!r}")
        modules = dict(classifier.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            raise ValueError(f"classifier has no module named {missing}")
        check_number(threshold, "threshold", low=0.0, high=1.0)
        if top_fraction is not None and not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and not bool(torch.isfinite(torch.as_tensor(values)).all()):
                raise ValueError(f"{name} must be finite numbers, one per channel, got {values!r}")
        if mean is not None and torch.as_tensor(mean).numel() != torch.as_tensor(std).numel():
            raise ValueError(f"mean and std need one value per channel each, got {mean}, {std}")
        self.classifier = classifier
        self.layers = tuple(layers)
        self.threshold = float(threshold)
        self.top_fraction = None if top_fraction is None else float(top_fraction)
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32)
        if self.std is not None and not bool((self.std > 0).all()):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")
        self._modules = [modules[name] for name in self.layers]

    def __repr__(self) -> str:
        rule = (
            f"top_fraction={self.top_fraction}"
            if self.top_fraction is not None
            else f"threshold={self.threshold}"
        )
        return f"AttentionMask(layers={self.layers}, {rule})"

    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        """The merged attention map in [0, 1] (B, 1, H, W) before thresholding: continuous,
        and differentiable in x when grad is enabled and x requires it (the mask-steering
        attack descends it); otherwise computed without gradient."""
        if x.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        inp = x
        if self.mean is not None:
            channels = self.mean.numel()
            if x.shape[1] != channels:
                raise ValueError(f"mean/std have {channels} channels, images {x.shape[1]}")
            mean = self.mean.to(x.device, x.dtype).view(1, -1, 1, 1)
            inp = (x - mean) / self.std.to(x.device, x.dtype).view(1, -1, 1, 1)
        maps: list[torch.Tensor] = []
        seen: set[int] = set()
        grad = torch.is_grad_enabled() and x.requires_grad

        def record(module, _inputs, output):
            # a classifier with test-time augmentation runs a block on several views: read the
            # block's first call, on the first B rows (the image as given)
            if id(module) in seen:
                return
            seen.add(id(module))
            out = output[0] if isinstance(output, (tuple, list)) else output
            if out.dim() != 4:
                raise ValueError(f"a hooked block must output (B, C, h, w), got {out.dim()}-D")
            out = out[: x.shape[0]]
            out = (out if grad else out.detach()).to(torch.promote_types(out.dtype, torch.float32))
            energy = out.pow(2).sum(1, keepdim=True)
            maps.append(F.interpolate(energy, size=x.shape[-2:], mode="bilinear"))

        handles = [module.register_forward_hook(record) for module in self._modules]
        training = self.classifier.training
        try:
            self.classifier.eval()
            with torch.set_grad_enabled(grad):
                self.classifier(inp.to(_floating_dtype(self.classifier, inp.dtype)))
        finally:
            for handle in handles:
                handle.remove()
            self.classifier.train(training)
        if not maps:
            raise ValueError(f"none of the blocks {self.layers} ran in the classifier's forward")
        flat = torch.stack(maps).flatten(2)
        low = flat.amin(2, keepdim=True)
        span = flat.amax(2, keepdim=True) - low
        scaled = torch.where(span > 0, (flat - low) / span.clamp(min=1e-30), torch.zeros_like(flat))
        return scaled.amax(0).view(x.shape[0], 1, *x.shape[-2:]).to(x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        channels = None if self.mean is None else self.mean.numel()
        check_images(x, channels=channels)
        saliency = self.saliency(x)
        if self.top_fraction is None:
            return (saliency >= self.threshold).to(x.dtype)
        flat = saliency.flatten(1)
        count = round(self.top_fraction * flat.shape[1])
        order = flat.argsort(dim=1, descending=True, stable=True)[:, :count]
        mask = torch.zeros_like(flat).scatter_(1, order, 1.0)
        return mask.view_as(saliency)
