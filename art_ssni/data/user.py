"""The user's own images: an ``.npz`` of ``x`` and ``y``, or an ImageFolder tree."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..io import refuse_html
from ..validation import check_images, check_labels

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
    check_labels(y, int(x.shape[0]), name=f"labels in {path}")
    return x, y


def _npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    refuse_html(path, "--data", "an .npz of images")
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            raise ValueError(
                f"--data {path} is not an .npz file (no zip archive: numpy.savez writes one); "
                "give an .npz of arrays x and y, or an ImageFolder tree"
            )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise ValueError(f"--data {path} is a truncated or corrupt .npz file ({err})") from None
        raise ValueError(
            f"--data {path} holds Python objects (object arrays), which are never unpickled; "
            "save x and y as numeric arrays with numpy.savez"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"--data {path} is a truncated or corrupt .npz file ({type(err).__name__}: {err}); "
            "write it again with numpy.savez"
        ) from None
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
            try:
                with Image.open(file) as image:
                    image = image.convert(mode)
                    if image_shape is not None:
                        image = image.resize((image_shape[2], image_shape[1]), Image.BILINEAR)
                    array = np.asarray(image, dtype=np.float32) / 255.0
            except (OSError, ValueError) as err:
                raise ValueError(
                    f"--data image {file} is not a readable image ({type(err).__name__}: {err})"
                ) from None
            images.append(torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise ValueError(f"{root} holds no images with suffixes {IMAGE_SUFFIXES}")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)
