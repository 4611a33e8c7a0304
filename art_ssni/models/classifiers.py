"""The papers' classifiers from local checkpoint files, and a normalising wrapper.

CIFAR-10: RobustBench's ``Standard`` WRN-28-10 (takes [0, 1] input). ImageNet: torchvision's
ResNet-50 with the IMAGENET1K_V1 weights behind mean/std normalisation and a resize to 224
(the diffusion model purifies at 256). Checkpoints are read with ``weights_only=True`` and
every failure (missing, an HTML page saved instead of weights, truncated, wrong keys or
shapes) is a ``FileNotFoundError``/``ValueError`` that names the file and the problem.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import import_torchvision
from ..checkpoints import check_finite_weights, read_checkpoint

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NormalizedClassifier",
    "load_cifar10_wideresnet",
    "load_imagenet_resnet50",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET50_V1_FILE = "resnet50-0676ba61.pth"
_WRN_MODULE = "robustbench.model_zoo.architectures.wide_resnet"
_OFFLINE = "this loader never downloads (offline machines cannot); copy the file there by hand"
_wrn_module: types.ModuleType | None = None


class NormalizedClassifier(nn.Module):
    """Applies (x - mean) / std per channel, and optionally a resize, before ``model``.

    Inputs are images in [0, 1] (B, C, H, W), so attacks and purifiers see the same pixel
    space whatever normalisation the classifier was trained with. ``input_size=(H, W)``
    resizes bilinearly (no antialiasing, as DiffPure feeds its 256-pixel purified images to
    a 224-pixel classifier).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise ValueError(
                f"mean and std need one value per channel, got {mean_t.numel()} and {std_t.numel()}"
            )
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        if input_size is not None:
            input_size = (int(input_size[0]), int(input_size[1]))
            if min(input_size) < 1:
                raise ValueError(f"input_size must be positive, got {input_size}")
        self.model = model
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.mean.shape[1]
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(
                f"expected images (B, {channels}, H, W) in [0, 1], got shape {tuple(x.shape)}"
            )
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(
                x, size=self.input_size, mode="bilinear", align_corners=False, antialias=False
            )
        return self.model((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return (
            f"mean={tuple(round(v, 4) for v in self.mean.flatten().tolist())}, "
            f"std={tuple(round(v, 4) for v in self.std.flatten().tolist())}, "
            f"input_size={self.input_size}"
        )


def _strip_prefix(state_dict: Mapping[str, object], prefix: str) -> dict[str, object]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _as_state_dict(checkpoint: object, path: Path, what: str) -> dict[str, torch.Tensor]:
    """A raw state_dict, or the one under ``state_dict``, without DataParallel prefixes."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(
            f"{what} file {path} holds a {type(checkpoint).__name__}, not a state_dict "
            "(a mapping of parameter names to tensors, or a dict with a 'state_dict' entry)"
        )
    not_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{what} file {path} is not a state_dict: entries {not_tensors[:5]} are not tensors"
        )
    return _strip_prefix(_strip_prefix(checkpoint, "module."), "model.")


def _load_exact(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, what: str
) -> None:
    """Load every parameter and buffer, or raise a ValueError listing what does not fit.

    Only ``num_batches_tracked`` may be missing: old checkpoints predate it and it does not
    affect evaluation.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatches (e.g. {wrong_shape[:3]})")
        raise ValueError(
            f"{what} file {path} does not match the {type(model).__name__} architecture: "
            + "; ".join(parts)
        )
    model.load_state_dict(state_dict, strict=False)
    check_finite_weights(model, what, path)


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _robustbench_wide_resnet() -> type[nn.Module]:
    """RobustBench's WideResNet class, without running ``robustbench/__init__``.

    robustbench 1.1.1's package init imports its evaluation code, which needs an
    ``autoattack`` module that is not on the package index, plus timm and torchvision. The
    architecture file itself needs only torch, so it is loaded on its own unless robustbench
    is already imported.
    """
    global _wrn_module
    module = sys.modules.get(_WRN_MODULE) or _wrn_module
    if module is None:
        spec = importlib.util.find_spec("robustbench")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                "robustbench is not installed; `pip install robustbench==1.1.1` provides the "
                "WideResNet architecture"
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        source = root / "model_zoo" / "architectures" / "wide_resnet.py"
        file_spec = importlib.util.spec_from_file_location(
            "art_ssni.models._robustbench_wide_resnet", source
        )
        if file_spec is None or file_spec.loader is None or not source.is_file():
            raise ImportError(f"robustbench's WideResNet definition is missing at {source}")
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
        _wrn_module = module
    return module.WideResNet


def _find_robustbench_file(path_or_model_dir: Path, model_name: str) -> Path:
    if path_or_model_dir.is_file():
        return path_or_model_dir
    candidates = [
        path_or_model_dir / "cifar10" / "Linf" / f"{model_name}.pt",
        path_or_model_dir / f"{model_name}.pt",
    ]
    if path_or_model_dir.is_dir():
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = ", ".join(str(c) for c in candidates)
    else:
        looked = str(path_or_model_dir)
    raise FileNotFoundError(
        f"RobustBench checkpoint {model_name!r} not found (looked at {looked}); {_OFFLINE}: "
        f"RobustBench stores it as <model_dir>/cifar10/Linf/{model_name}.pt"
    )


def load_cifar10_wideresnet(
    path_or_model_dir: str | os.PathLike, *, model_name: str = "Standard"
) -> nn.Module:
    """RobustBench's CIFAR-10 WRN-28-10 from a local file, in eval mode with frozen weights.

    ``path_or_model_dir`` is the checkpoint file itself or a RobustBench ``model_dir`` holding
    ``cifar10/Linf/<model_name>.pt``. The file may hold a raw state_dict or a dict with a
    ``state_dict`` entry, with keys possibly prefixed ``module.`` (or ``model.``), as
    RobustBench's own loader accepts. The architecture is always robustbench's
    ``WideResNet(depth=28, widen_factor=10)``; ``model_name`` only picks the file, so other
    WRN-28-10 entries load too and any other architecture fails with a key error. The model
    takes images in [0, 1] without normalisation.
    """
    path = _find_robustbench_file(Path(path_or_model_dir), model_name)
    what = f"RobustBench {model_name!r} WRN-28-10"
    state_dict = _as_state_dict(read_checkpoint(path, what), path, what)
    model = _robustbench_wide_resnet()(depth=28, widen_factor=10)
    _load_exact(model, state_dict, path, what)
    return _freeze(model)


def _torchvision_resnet50_state_dict() -> dict[str, torch.Tensor]:
    """IMAGENET1K_V1 from torch hub's cache; never downloaded (see ``_OFFLINE``)."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / RESNET50_V1_FILE
    if not cache.is_file():
        raise FileNotFoundError(
            f"ResNet-50 IMAGENET1K_V1 weights are not in torch hub's cache ({cache}); "
            f"{_OFFLINE}: copy torchvision's {RESNET50_V1_FILE} to that path, or pass "
            "weights_path="
        )
    return _as_state_dict(read_checkpoint(cache, "ResNet-50"), cache, "ResNet-50")


def load_imagenet_resnet50(
    weights_path: str | os.PathLike | None = None,
) -> NormalizedClassifier:
    """torchvision's ResNet-50 (IMAGENET1K_V1) behind ImageNet normalisation and a 224 resize.

    ``weights_path`` is a plain state_dict as torchvision saves it (its cache file
    ``resnet50-0676ba61.pth``). Without it the weights come from torch hub's cache; nothing
    is downloaded, and with no cached file this raises a ``FileNotFoundError`` naming the
    expected path. Returns an eval-mode, frozen
    :class:`NormalizedClassifier` that takes [0, 1] images of any size (256 from the
    diffusion model) and resizes them to 224.
    """
    tv = import_torchvision()
    net = tv.models.resnet50(weights=None)
    if weights_path is None:
        state_dict = _torchvision_resnet50_state_dict()
        path = Path(torch.hub.get_dir()) / "checkpoints" / RESNET50_V1_FILE
    else:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"ResNet-50 weights file {path} does not exist; {_OFFLINE} (torchvision's "
                f"{RESNET50_V1_FILE})"
            )
        state_dict = _as_state_dict(read_checkpoint(path, "ResNet-50"), path, "ResNet-50")
    _load_exact(net, state_dict, path, "ResNet-50")
    model = NormalizedClassifier(net, IMAGENET_MEAN, IMAGENET_STD, input_size=(224, 224))
    return _freeze(model)
