"""The user's own images: an ``.npz`` of ``x`` and ``y``, or an ImageFolder tree."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..validation import check_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_user_images(
    path: str | os.PathLike, image_shape: tuple[int, int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) float32 in [0, 1] and labels (N,) int64 from ``path``.

    An ``.npz`` holds ``x`` (NCHW or NHWC; uint8 in 0..255 or floats in [0, 1]) and ``y``
    (integer labels). A folder is an ImageFolder tree ``root/<class>/<image>``: class folders
    named by integers (``0``, ``4``, ``10``) carry those labels, whatever folders are missing;
    other names are numbered in sorted order, as torchvision does. Every image is converted to the
    model's channels and resized to its size. ``image_shape`` (C, H, W) is checked.
    """
    path = Path(path)
    if path.is_dir():
        x, y = _image_folder(path, image_shape)
    elif path.is_file():
        x, y = _npz(path)
    else:
        raise FileNotFoundError(f"no data at {path} (give an .npz file or an ImageFolder tree)")
    channels = image_shape[0] if image_shape else None
    if x.dim() == 4 and channels and x.shape[1] != channels and x.shape[-1] == channels:
        x = x.permute(0, 3, 1, 2).contiguous()  # NHWC
    check_images(
        x,
        channels=image_shape[0] if image_shape else None,
        size=tuple(image_shape[1:]) if image_shape else None,
        name=f"images in {path}",
    )
    if y.shape != (x.shape[0],):
        raise ValueError(f"{path}: y must hold one label per image, got shape {tuple(y.shape)}")
    return x, y


def _npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable .npz file of arrays x and y: {err}") from err
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"{path} lacks the arrays {missing} (it holds {sorted(arrays)})")
    x, y = arrays["x"], arrays["y"]
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: y must hold integer labels, got dtype {y.dtype}")
    if x.dtype == np.uint8:
        images = torch.from_numpy(x.astype(np.float32) / 255.0)
    elif np.issubdtype(x.dtype, np.floating):
        images = torch.from_numpy(x.astype(np.float32))
    else:
        raise ValueError(f"{path}: x must be uint8 (0..255) or floats in [0, 1], got {x.dtype}")
    return images, torch.from_numpy(y.astype(np.int64))


def _image_folder(
    root: Path, image_shape: tuple[int, int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class folders (ImageFolder layout: root/<class>/<image>)")
    numbered = all(name.isdigit() for name in classes)
    class_labels = (
        sorted((int(name), name) for name in classes) if numbered else list(enumerate(classes))
    )
    mode = "L" if image_shape is not None and image_shape[0] == 1 else "RGB"
    images, labels = [], []
    for label, name in class_labels:
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(file) as image:
                image = image.convert(mode)
                if image_shape is not None:
                    image = image.resize((image_shape[2], image_shape[1]), Image.BILINEAR)
                array = np.asarray(image, dtype=np.float32) / 255.0
            images.append(torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise ValueError(f"{root} holds no images with suffixes {IMAGE_SUFFIXES}")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)
