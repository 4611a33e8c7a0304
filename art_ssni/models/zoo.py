"""Loaders for the embedded offline model zoo: the digits and CIFAR-10 classifiers and
noise-prediction UNets.

The package ships ``art_ssni/zoo/``: safetensors weight files and two manifests with each
model's architecture config, training metadata, evaluation numbers and the sha256 of its
weight file: ``zoo.json`` for the 8x8 digits models (``benchmarks/train_embedded.py``) and
the model card ``cifar10.json`` for the CIFAR-10 models, trained on the shared JPEG images
(``benchmarks/train_cifar10.py``), with 512 test images as uint8. They let the library run
end to end with no download. Loading verifies the sha256 before reading the
weights, so a truncated or altered file fails loudly instead of giving a silently broken
defence.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file
from torch import nn

from art_ssni.diffusion.networks.small_unet import SmallUNet
from art_ssni.models.compact_cnn import CompactCNN
from art_ssni.models.small_cnn import SmallCNN

from ..checkpoints import check_finite_weights

__all__ = [
    "CIFAR10_FILES",
    "ZOO_JSON",
    "load_embedded_cifar10_classifier",
    "load_embedded_cifar10_eps_net",
    "load_embedded_cifar10_images",
    "load_embedded_classifier",
    "load_embedded_eps_net",
    "load_zoo_manifest",
    "sha256_file",
    "zoo_root",
]

ZOO_JSON = "zoo.json"
CIFAR10_FILES = {
    "card": "cifar10.json",
    "classifier": "cifar10_classifier.safetensors",
    "eps_net": "cifar10_eps.safetensors",
    "images": "cifar10_test512.safetensors",
    "stats": "cifar10_stats.safetensors",
}
CLASSIFIER_KEY = "classifier"
EPS_NET_KEY = "eps_net"


_M = TypeVar("_M", bound=nn.Module)


def zoo_root() -> Path:
    """Directory of the shipped zoo files inside the installed ``art_ssni`` package."""
    root = resources.files("art_ssni") / "zoo"
    if isinstance(root, Path):
        return root
    return Path(__file__).resolve().parent.parent / "zoo"  # non-path resource readers


def _resolve(root: str | Path | None) -> Path:
    return zoo_root() if root is None else Path(root)


def load_zoo_manifest(root: str | Path | None = None, name: str = ZOO_JSON) -> dict[str, Any]:
    """Read a manifest (``zoo.json`` or ``cifar10.json``: configs, training metadata,
    evaluation, sha256) from ``root``, by default the packaged ``art_ssni/zoo`` folder."""
    path = _resolve(root) / name
    if not path.is_file():
        raise FileNotFoundError(f"zoo manifest not found: {path}")
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_verified(root: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = root / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"zoo weight file not found: {path}")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ValueError(
            f"sha256 mismatch for zoo weight file {path}: expected {entry['sha256']}, "
            f"got {actual} (the file is corrupted or does not belong to this zoo.json)"
        )
    return load_file(str(path), device="cpu")


def _freeze(model: nn.Module) -> None:
    model.eval()
    model.requires_grad_(False)


def _entry(key: str, root: str | Path | None, name: str) -> tuple[Path, dict[str, Any]]:
    base = _resolve(root)
    manifest = load_zoo_manifest(base, name)
    if key not in manifest:
        raise KeyError(f"{base / name} has no entry {key!r}")
    return base, manifest[key]


def _load(key: str, cls: type[_M], root: str | Path | None, name: str = ZOO_JSON) -> _M:
    base, entry = _entry(key, root, name)
    model = cls(**entry["config"])
    state = {
        k: v.float() if v.is_floating_point() else v for k, v in _read_verified(base, entry).items()
    }
    model.load_state_dict(state, strict=True)
    check_finite_weights(model, f"zoo entry {key!r}", base / entry["file"])
    _freeze(model)
    return model


def load_embedded_classifier(root: str | Path | None = None) -> SmallCNN:
    """The shipped digits classifier: [0,1] images (B,1,8,8) -> 10 logits.

    Returned in eval mode with ``requires_grad`` off on every parameter (gradients with
    respect to the input still flow). ``root`` points at another zoo folder (for tests).

    Raises:
        ValueError: the weight file's sha256 differs from the one in ``zoo.json``.
    """
    return _load(CLASSIFIER_KEY, SmallCNN, root)


def load_embedded_eps_net(root: str | Path | None = None) -> SmallUNet:
    """The shipped digits noise-prediction network (EMA weights), ``eps_net(x_t, k)``.

    ``x_t`` is (B,1,8,8) in the diffusion space [-1,1], ``k`` the 0-based DDPM index of the
    linear schedule (1e-4..0.02, 1000 steps). Eval mode, parameters frozen. ``root`` points
    at another zoo folder (for tests).

    Raises:
        ValueError: the weight file's sha256 differs from the one in ``zoo.json``.
    """
    return _load(EPS_NET_KEY, SmallUNet, root)


def load_embedded_cifar10_classifier(root: str | Path | None = None) -> CompactCNN:
    """The shipped CIFAR-10 classifier: [0,1] images (B,3,32,32) -> 10 logits.

    The CIFAR-10 mean/std normalisation happens inside. Weights are stored in float16 and
    loaded into a float32 module (the model card ``cifar10.json`` gives the test accuracy
    of both). Eval mode, parameters frozen.

    Raises:
        ValueError: the weight file's sha256 differs from the one in ``cifar10.json``.
    """
    return _load(CLASSIFIER_KEY, CompactCNN, root, CIFAR10_FILES["card"])


def load_embedded_cifar10_eps_net(root: str | Path | None = None) -> SmallUNet:
    """The shipped CIFAR-10 noise-prediction UNet (EMA weights), ``eps_net(x_t, k)``.

    ``x_t`` is (B,3,32,32) in [-1,1], ``k`` the 0-based DDPM index of the linear schedule, so
    ``DiffusionModel(load_embedded_cifar10_eps_net(), image_shape=(3, 32, 32))`` is ready to
    purify. It was trained only on levels 1..``max_level`` (300), and purifiers refuse
    higher ones. Eval mode, parameters frozen.

    Raises:
        ValueError: the weight file's sha256 differs from the one in ``cifar10.json``.
    """
    return _load(EPS_NET_KEY, SmallUNet, root, CIFAR10_FILES["card"])


def load_embedded_cifar10_images(
    root: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 512 shipped CIFAR-10 test images as float32 (512,3,32,32) in [0,1], and labels.

    A fixed draw of the JPEG test split (``fixed_subset(512, 10000, seed=0)``; the indices
    are in the file), stored as uint8.
    """
    base, entry = _entry("images", root, CIFAR10_FILES["card"])
    data = _read_verified(base, entry)
    return data["images"].float() / 255.0, data["labels"].long()
