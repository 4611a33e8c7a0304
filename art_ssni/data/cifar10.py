"""CIFAR-10 as [0, 1] NCHW tensors, from a torchvision copy or the JPEG zip/folder layout.

Two sources:
- ``"torchvision"``: ``<root>/cifar-10-batches-py`` as ``torchvision.datasets.CIFAR10`` keeps
  it (the original pixels, in the original order); downloaded only with ``download=True``.
- ``"jpeg"``: ``{train,test}/<class>/<nnnn>.jpg`` inside ``cifar10-jpeg-{split}.zip`` (read
  in place, never extracted) or in a folder. Class folders airplane..truck are labels 0..9;
  images are ordered by label, then by file number. The JPEG pixels are not bit-identical
  to the original set and the order differs from torchvision's, so a fixed subset picks
  different images from the two sources.

``"auto"`` takes whichever of these ``root`` holds. ``root=None`` means the environment
variable ``ART_SSNI_DATA_DIR``, else ``shared/data`` beside a source checkout.
"""

from __future__ import annotations

import io
import os
import re
import urllib.error
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .._compat import import_torchvision

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_SIZES",
    "default_data_dir",
    "fixed_subset",
    "load_cifar10",
]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_SIZES = {"train": 50_000, "test": 10_000}
DATA_DIR_ENV = "ART_SSNI_DATA_DIR"
_SOURCES = ("auto", "jpeg", "torchvision")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_TORCHVISION_DIR = "cifar-10-batches-py"

IndexLike = Sequence[int] | torch.Tensor | np.ndarray


def default_data_dir() -> Path:
    """``$ART_SSNI_DATA_DIR``, else ``<repo>/../shared/data`` (where CI keeps the JPEG zips)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def fixed_subset(n: int, total: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` distinct indices out of ``range(total)``, the same on every run and machine.

    The first ``n`` entries of ``torch.randperm(total)`` under a CPU generator seeded with
    ``seed``, in that (shuffled) order, so batches mix classes. The paper evaluates 512
    CIFAR-10 test images drawn this way once.
    """
    for name, value in (("n", n), ("total", total), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if not 0 < n <= total:
        raise ValueError(f"need 0 < n <= total, got n={n}, total={total}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randperm(int(total), generator=generator)[: int(n)]


def _as_indices(indices: IndexLike | None, total: int) -> torch.Tensor | None:
    if indices is None:
        return None
    idx = torch.as_tensor(np.asarray(indices) if not torch.is_tensor(indices) else indices)
    if idx.dim() != 1 or (idx.numel() and idx.dtype.is_floating_point) or idx.dtype == torch.bool:
        raise ValueError(f"indices must be a 1-D sequence of ints, got {tuple(idx.shape)} {idx}")
    idx = idx.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= total):
        raise ValueError(
            f"indices must lie in [0, {total}), got min {int(idx.min())}, max {int(idx.max())}"
        )
    return idx


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _label_of(class_name: str, where: str) -> int:
    if class_name not in CIFAR10_CLASSES:
        raise ValueError(
            f"unknown CIFAR-10 class folder {class_name!r} in {where}; expected {CIFAR10_CLASSES}"
        )
    return CIFAR10_CLASSES.index(class_name)


def _decode(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as image:
            pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except OSError as err:
        raise ValueError(f"{name} is not a readable JPEG/PNG image ({err})") from err
    if pixels.shape != (32, 32, 3):
        raise ValueError(f"{name} is {pixels.shape[1]}x{pixels.shape[0]}, not a 32x32 image")
    return pixels


def _to_tensors(
    count: int, read: Callable[[int], np.ndarray], labels: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = np.empty((count, 32, 32, 3), dtype=np.uint8)
    for i in range(count):
        pixels[i] = read(i)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return x, torch.as_tensor(np.asarray(labels, dtype=np.int64))


def _select(
    entries: list[tuple[int, str]], indices: IndexLike | None, where: str
) -> list[tuple[int, str]]:
    if not entries:
        raise FileNotFoundError(f"no CIFAR-10 images (<class>/<nnnn>.jpg) found in {where}")
    entries.sort(key=lambda e: (e[0], _natural_key(e[1])))
    idx = _as_indices(indices, len(entries))
    return entries if idx is None else [entries[i] for i in idx.tolist()]


def _load_zip(
    path: Path, split: str, indices: IndexLike | None
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a readable zip file ({err})") from err
    with archive:
        entries, prefixes = [], set()
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) == 3 and parts[2].lower().endswith(_IMAGE_SUFFIXES):
                prefixes.add(parts[0])
                if parts[0] == split:
                    entries.append((_label_of(parts[1], str(path)), name))
        if not entries and prefixes:
            raise ValueError(
                f"{path} holds no {split!r} images, only splits {sorted(prefixes)}; "
                f"use cifar10-jpeg-{split}.zip"
            )
        chosen = _select(entries, indices, f"{path} ({split}/)")
        return _to_tensors(
            len(chosen),
            lambda i: _decode(archive.read(chosen[i][1]), f"{path}:{chosen[i][1]}"),
            [label for label, _ in chosen],
        )


def _load_folder(folder: Path, indices: IndexLike | None) -> tuple[torch.Tensor, torch.Tensor]:
    entries = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = _label_of(class_dir.name, str(folder))
        entries.extend(
            (label, str(f))
            for f in class_dir.iterdir()
            if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES
        )
    chosen = _select(entries, indices, str(folder))
    return _to_tensors(
        len(chosen),
        lambda i: _decode(Path(chosen[i][1]).read_bytes(), chosen[i][1]),
        [label for label, _ in chosen],
    )


def _load_torchvision(
    root: Path, split: str, indices: IndexLike | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    tv = import_torchvision()
    try:
        dataset = tv.datasets.CIFAR10(str(root), train=split == "train", download=download)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"no intact torchvision CIFAR-10 copy in {root / _TORCHVISION_DIR} ({err}); "
            "pass download=True on a machine that is online"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        raise FileNotFoundError(
            f"downloading CIFAR-10 into {root} failed ({err}); offline, use the JPEG zips "
            "(source='jpeg') or copy cifar-10-batches-py there by hand"
        ) from err
    data, labels = dataset.data, np.asarray(dataset.targets, dtype=np.int64)
    idx = _as_indices(indices, len(data))
    if idx is not None:
        data, labels = data[idx.numpy()], labels[idx.numpy()]
    x = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(), torch.from_numpy(np.ascontiguousarray(labels))


def _jpeg_location(root: Path, split: str) -> Path | None:
    if root.is_file():
        return root
    zip_path = root / f"cifar10-jpeg-{split}.zip"
    if zip_path.is_file():
        return zip_path
    if (root / split).is_dir():
        return root / split
    if any((root / name).is_dir() for name in CIFAR10_CLASSES):
        return root
    return None


def load_cifar10(
    split: str = "test",
    *,
    root: str | os.PathLike | None = None,
    source: str = "auto",
    indices: IndexLike | None = None,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x, y)``: float32 (N, 3, 32, 32) in [0, 1] and int64 labels in 0..9.

    Args:
        split: ``"train"`` or ``"test"``.
        root: a folder holding ``cifar-10-batches-py``, ``cifar10-jpeg-{split}.zip`` or a
            ``{split}/<class>/`` tree; or the zip file itself. Default: :func:`default_data_dir`.
        source: ``"auto"``, ``"jpeg"`` or ``"torchvision"``.
        indices: positions to read (in the source's order), returned in the order given;
            only those images are decoded.
        download: let torchvision download CIFAR-10 into ``root`` when no copy is found
            (needs a network).

    Raises:
        ValueError: unknown split or source, bad indices, or an unreadable file.
        FileNotFoundError: nothing usable under ``root``.
    """
    if split not in CIFAR10_SIZES:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(CIFAR10_SIZES)}")
    if source not in _SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {_SOURCES}")
    root = Path(root) if root is not None else default_data_dir()
    if not root.exists():
        if download and source != "jpeg":
            return _load_torchvision(root, split, indices, download=True)
        raise FileNotFoundError(
            f"CIFAR-10 data root {root} does not exist (set root= or ${DATA_DIR_ENV})"
        )
    has_torchvision = (root / _TORCHVISION_DIR).is_dir()
    if source in ("auto", "torchvision") and (has_torchvision or source == "torchvision"):
        return _load_torchvision(root, split, indices, download)
    jpeg = _jpeg_location(root, split)
    if jpeg is not None:
        if jpeg.is_file():
            if jpeg.suffix.lower() != ".zip":
                raise ValueError(f"{jpeg} is not a .zip of CIFAR-10 JPEG files")
            return _load_zip(jpeg, split, indices)
        return _load_folder(jpeg, indices)
    if download and source == "auto":
        return _load_torchvision(root, split, indices, download=True)
    raise FileNotFoundError(
        f"no CIFAR-10 {split!r} data in {root}: looked for {_TORCHVISION_DIR}/, "
        f"cifar10-jpeg-{split}.zip, {split}/<class>/ and <class>/ folders"
    )
