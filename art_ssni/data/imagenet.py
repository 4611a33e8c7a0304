"""ImageNet validation images from a torchvision ImageFolder tree, as [0, 1] NCHW tensors.

Layout: ``root/<wnid>/<file>.JPEG`` with class folders sorted by name (labels 0..999 in the
order torchvision's ImageNet classifiers use); ``root`` may also be the parent of a ``val``
folder. Each image's shorter side is resized to ``size`` (bilinear) and the centre
``size x size`` crop kept, as torchvision's ``Resize(size)`` + ``CenterCrop(size)`` on PIL
images: 256 for the guided-diffusion model, whose output the classifier wrapper resizes to
224.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .cifar10 import IndexLike, _as_indices, _natural_key

__all__ = ["IMAGENET_NUM_CLASSES", "imagenet_val_files", "load_imagenet_val"]

IMAGENET_NUM_CLASSES = 1000
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_SPLIT_DIRS = {"train", "val", "test"}


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)


def imagenet_val_files(
    root: str | os.PathLike, *, num_classes: int | None = IMAGENET_NUM_CLASSES
) -> tuple[list[Path], list[int], list[str]]:
    """``(files, labels, classes)`` of an ImageFolder tree in loading order.

    Files are ordered by class, then by file name. ``num_classes`` guards the label mapping:
    labels are positions in the sorted class list, which equal the ImageNet class indices only
    when all 1,000 class folders are present; pass ``None`` for a custom or partial tree.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet validation folder {root} does not exist")
    classes = _class_dirs(root)
    if (root / "val").is_dir() and {c.name for c in classes} <= _SPLIT_DIRS:
        root, classes = root / "val", _class_dirs(root / "val")
    if not classes:
        raise FileNotFoundError(f"no class folders (<wnid>/<file>.JPEG) in {root}")
    if num_classes is not None and len(classes) != num_classes:
        raise ValueError(
            f"{root} has {len(classes)} class folders, expected {num_classes}: labels are "
            "positions in the sorted folder list, so a partial tree would mislabel images "
            "(pass num_classes=None for a custom tree)"
        )
    files, labels = [], []
    for label, class_dir in enumerate(classes):
        found = sorted(
            (f for f in class_dir.iterdir() if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES),
            key=lambda f: _natural_key(f.name),
        )
        files.extend(found)
        labels.extend([label] * len(found))
    if not files:
        raise FileNotFoundError(f"no images (.JPEG/.jpg/.png) in the class folders of {root}")
    return files, labels, [c.name for c in classes]


def _resize_center_crop(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except OSError as err:
        raise ValueError(f"{path} is not a readable image ({err})") from err
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    if short != size:
        long = int(size * long / short)
        new = (size, long) if width <= height else (long, size)
        image = image.resize(new, Image.BILINEAR)
    width, height = image.size
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return np.array(image.crop((left, top, left + size, top + size)))


def load_imagenet_val(
    root: str | os.PathLike,
    *,
    indices: IndexLike | None = None,
    size: int = 256,
    num_classes: int | None = IMAGENET_NUM_CLASSES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x, y)``: float32 (N, 3, size, size) in [0, 1] and int64 labels.

    ``indices`` are positions in :func:`imagenet_val_files` order, returned in the order
    given; only those files are decoded (all 50,000 at 256 pixels would take 39 GB). See
    :func:`imagenet_val_files` for ``num_classes``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    files, labels, _ = imagenet_val_files(root, num_classes=num_classes)
    idx = _as_indices(indices, len(files))
    order = range(len(files)) if idx is None else idx.tolist()
    x = torch.empty((len(order), 3, size, size), dtype=torch.float32)
    for row, i in enumerate(order):
        pixels = torch.from_numpy(_resize_center_crop(files[i], size))
        x[row] = pixels.permute(2, 0, 1).float().div_(255.0)
    y = torch.as_tensor([labels[i] for i in order], dtype=torch.int64)
    return x, y
