"""CIFAR-10 (the real JPEG zip in shared/data, synthetic folders), fixed subsets, ImageNet."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from art_ssni.data.cifar10 import CIFAR10_CLASSES, fixed_subset, load_cifar10
from art_ssni.data.imagenet import imagenet_val_files, load_imagenet_val

from tiny import SHARED_DATA

DATA_DIR = Path(os.environ.get("ART_SSNI_DATA_DIR", SHARED_DATA))
TEST_ZIP = DATA_DIR / "cifar10-jpeg-test.zip"
needs_zip = pytest.mark.skipif(
    not TEST_ZIP.is_file(), reason=f"CIFAR-10 JPEG zip not found at {TEST_ZIP}"
)


@needs_zip
def test_full_test_split_from_the_jpeg_zip():
    x, y = load_cifar10("test", root=DATA_DIR)
    assert x.shape == (10_000, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(y.bincount(), torch.full((10,), 1000))
    assert torch.equal(y, torch.arange(10).repeat_interleave(1000))


@needs_zip
def test_indices_follow_the_class_folders_and_match_the_files():
    picks = [0, 999, 1000, 5003, 9999]
    x, y = load_cifar10("test", root=TEST_ZIP, source="jpeg", indices=picks)
    assert x.shape == (5, 3, 32, 32)
    assert y.tolist() == [0, 0, 1, 5, 9]
    with zipfile.ZipFile(TEST_ZIP) as archive:
        data = archive.read(f"test/{CIFAR10_CLASSES[5]}/0003.jpg")
    pixels = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(x[3], expected)


@needs_zip
def test_fixed_subset_reads_the_same_images_as_slicing():
    idx = fixed_subset(64, 10_000, seed=0)
    x, y = load_cifar10("test", root=DATA_DIR, indices=idx)
    again, _ = load_cifar10("test", root=DATA_DIR, indices=idx.tolist()[:8])
    assert x.shape == (64, 3, 32, 32) and torch.equal(x[:8], again)
    assert torch.equal(y, idx // 1000)


@needs_zip
def test_wrong_split_in_a_zip_is_named():
    with pytest.raises(ValueError, match=r"only splits \['test'\]"):
        load_cifar10("train", root=TEST_ZIP, indices=[0])


def _write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(path)


def test_synthetic_folder_layout(tmp_path):
    for cls, number, value in [("truck", 10, 90), ("truck", 2, 80), ("airplane", 0, 10)]:
        _write_png(tmp_path / "train" / cls / f"{number}.png", value)
    _write_png(tmp_path / "train" / "cat" / "0.png", 30)
    x, y = load_cifar10("train", root=tmp_path)
    assert y.tolist() == [0, 3, 9, 9]
    assert torch.allclose(x[:, 0, 0, 0] * 255, torch.tensor([10.0, 30.0, 80.0, 90.0]))
    x2, y2 = load_cifar10("train", root=tmp_path / "train", source="jpeg", indices=[3, 0])
    assert y2.tolist() == [9, 0] and torch.equal(x2, x[[3, 0]])


def test_default_root_comes_from_the_environment(tmp_path, monkeypatch):
    _write_png(tmp_path / "test" / "frog" / "0001.png", 60)
    monkeypatch.setenv("ART_SSNI_DATA_DIR", str(tmp_path))
    x, y = load_cifar10()
    assert y.tolist() == [6] and x.shape == (1, 3, 32, 32)


def test_synthetic_zip_and_errors(tmp_path):
    zip_path = tmp_path / "cifar10-jpeg-test.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for cls in ("bird", "ship"):
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32), (200, 100, 0)).save(buffer, format="PNG")
            archive.writestr(f"test/{cls}/0000.png", buffer.getvalue())
    x, y = load_cifar10("test", root=tmp_path)
    assert y.tolist() == [2, 8] and x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x[0, :, 5, 5], torch.tensor([200, 100, 0]) / 255.0)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\)"):
        load_cifar10("test", root=tmp_path, indices=[2])
    with pytest.raises(ValueError, match="unknown split"):
        load_cifar10("val", root=tmp_path)
    with pytest.raises(ValueError, match="unknown source"):
        load_cifar10("test", root=tmp_path, source="hdf5")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10("test", root=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 'train' data"):
        load_cifar10("train", root=tmp_path)
    _write_png(tmp_path / "other" / "train" / "zebra" / "0.png", 0)
    with pytest.raises(ValueError, match="unknown CIFAR-10 class folder 'zebra'"):
        load_cifar10("train", root=tmp_path / "other")


def test_torchvision_source_without_a_copy_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_cifar10("test", root=tmp_path, source="torchvision")


def test_fixed_subset_is_deterministic_and_distinct():
    first = fixed_subset(512, 10_000)
    assert first.dtype == torch.int64 and first.shape == (512,)
    assert torch.equal(first, fixed_subset(512, 10_000, seed=0))
    assert first.unique().numel() == 512
    assert int(first.min()) >= 0 and int(first.max()) < 10_000
    assert first[:5].tolist() == [6044, 2890, 9399, 1917, 4919]
    assert not torch.equal(first, fixed_subset(512, 10_000, seed=1))
    assert sorted(fixed_subset(10, 10).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="0 < n <= total"):
        fixed_subset(11, 10)
    with pytest.raises(ValueError, match="must be an int"):
        fixed_subset(5.0, 10)


def _imagenet_tree(root: Path) -> None:
    sizes = {"n01440764": [(300, 200), (64, 64)], "n01443537": [(200, 310)]}
    g = np.random.default_rng(0)
    for wnid, shapes in sizes.items():
        (root / wnid).mkdir(parents=True)
        for i, (w, h) in enumerate(shapes):
            pixels = g.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / wnid / f"ILSVRC2012_val_{i:08d}.JPEG")


def test_imagenet_val_folder_resize_and_crop(tmp_path):
    from art_ssni._compat import import_torchvision

    tv = import_torchvision()
    _imagenet_tree(tmp_path / "val")
    files, labels, classes = imagenet_val_files(tmp_path, num_classes=None)
    assert classes == ["n01440764", "n01443537"] and labels == [0, 0, 1]
    x, y = load_imagenet_val(tmp_path, size=48, num_classes=None)
    assert x.shape == (3, 3, 48, 48) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 1]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    reference = tv.transforms.Compose(
        [tv.transforms.Resize(48), tv.transforms.CenterCrop(48), tv.transforms.ToTensor()]
    )
    for i, path in enumerate(files):
        with Image.open(path) as image:
            torch.testing.assert_close(x[i], reference(image.convert("RGB")))
    x_sub, y_sub = load_imagenet_val(tmp_path / "val", indices=[2], num_classes=None)
    assert x_sub.shape == (1, 3, 256, 256) and y_sub.tolist() == [1]


def test_imagenet_label_guard_and_errors(tmp_path):
    _imagenet_tree(tmp_path)
    with pytest.raises(ValueError, match="2 class folders, expected 1000"):
        load_imagenet_val(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_imagenet_val(tmp_path / "missing")
    with pytest.raises(ValueError, match="size must be a positive int"):
        load_imagenet_val(tmp_path, size=0, num_classes=None)
