"""Loaders for the embedded offline model zoo (digits classifier and noise-prediction UNet).

The package ships ``art_ssni/zoo/``: two safetensors weight files and ``zoo.json`` with
each model's architecture config, training metadata, evaluation numbers and the sha256 of
its weight file. The files are produced by ``benchmarks/train_embedded.py`` and let the
library run end to end with no download. Loading verifies the sha256 before reading the
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
from art_ssni.models.small_cnn import SmallCNN

__all__ = [
    "ZOO_JSON",
    "load_embedded_classifier",
    "load_embedded_eps_net",
    "load_zoo_manifest",
    "sha256_file",
    "zoo_root",
]

ZOO_JSON = "zoo.json"
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


def load_zoo_manifest(root: str | Path | None = None) -> dict[str, Any]:
    """Read ``zoo.json`` (configs, training metadata, evaluation, sha256) from ``root``.

    ``root`` defaults to the packaged ``art_ssni/zoo`` folder.
    """
    path = _resolve(root) / ZOO_JSON
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


def _load_state(root: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
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


def _load(key: str, cls: type[_M], root: str | Path | None) -> _M:
    base = _resolve(root)
    manifest = load_zoo_manifest(base)
    if key not in manifest:
        raise KeyError(f"{base / ZOO_JSON} has no entry {key!r}")
    entry = manifest[key]
    model = cls(**entry["config"])
    model.load_state_dict(_load_state(base, entry), strict=True)
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
