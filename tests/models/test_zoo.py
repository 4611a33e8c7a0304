"""The embedded offline digits models (art_ssni.models.zoo): they load without download, check
their integrity, keep their accuracy, and the shipped statistics belong to the shipped UNet."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from art_ssni.data import load_digits
from art_ssni.diffusion.networks.small_unet import SmallUNet
from art_ssni.models import SmallCNN
from art_ssni.models.zoo import (
    load_embedded_classifier,
    load_embedded_eps_net,
    load_zoo_manifest,
    sha256_file,
    zoo_root,
)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_zoo_manifest()


def test_zoo_files_are_packaged(manifest: dict) -> None:
    root = zoo_root()
    for key in ("classifier", "eps_net"):
        path = root / manifest[key]["file"]
        assert path.is_file()
        assert sha256_file(path) == manifest[key]["sha256"]


def test_classifier_loads_frozen_and_keeps_accuracy(manifest: dict) -> None:
    clf = load_embedded_classifier()
    assert isinstance(clf, SmallCNN)
    assert not clf.training
    assert all(not p.requires_grad for p in clf.parameters())
    x, y = load_digits("test")
    with torch.no_grad():
        acc = (clf(x).argmax(1) == y).float().mean().item()
    assert acc >= manifest["classifier"]["test_accuracy"] - 0.005
    assert acc >= 0.95


def test_eps_net_io_shapes() -> None:
    net = load_embedded_eps_net()
    assert isinstance(net, SmallUNet)
    assert not net.training
    assert all(not p.requires_grad for p in net.parameters())
    x = torch.randn(4, 1, 8, 8)
    k = torch.tensor([0, 19, 300, 999])
    with torch.no_grad():
        out = net(x, k)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert torch.allclose(net(x, 5), net(x, torch.full((4,), 5)))
    # Gradients with respect to the input still flow through the frozen network.
    x.requires_grad_(True)
    net(x, k).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(("k", "max_mse"), [(10, 0.7), (100, 0.35)])
def test_eps_net_predicts_noise(k: int, max_mse: float) -> None:
    """The trained net explains much of the injected noise (a zero output scores 1.0).

    Shipped values on the test split: about 0.50 at k=10 and 0.22 at k=100 (digits are
    quantised to 17 levels, which a small net cannot resolve at the smallest k).
    """
    net = load_embedded_eps_net()
    x, _ = load_digits("test")
    x0 = 2.0 * x - 1.0
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(x0.shape, generator=gen)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[k].float()
    with torch.no_grad():
        pred = net(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, k)
    assert torch.mean((pred - eps) ** 2).item() < max_mse


@pytest.mark.parametrize(
    ("key", "loader"),
    [("classifier", load_embedded_classifier), ("eps_net", load_embedded_eps_net)],
)
def test_corrupted_weights_raise(tmp_path: Path, manifest: dict, key: str, loader) -> None:
    root = zoo_root()
    for name in ("zoo.json", manifest["classifier"]["file"], manifest["eps_net"]["file"]):
        shutil.copy(root / name, tmp_path / name)
    loader(root=tmp_path)  # an intact copy loads
    target = tmp_path / manifest[key]["file"]
    data = bytearray(target.read_bytes())
    pos = len(data) - 16  # inside the tensor payload, after the header
    data[pos : pos + 4] = bytes(b ^ 0xFF for b in data[pos : pos + 4])
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=manifest[key]["file"]):
        loader(root=tmp_path)


def test_shipped_statistics_belong_to_the_shipped_model(digits_eps_norm_stats):
    eps_norm, stats = digits_eps_norm_stats
    stats.check(eps_norm, (1, 8, 8))
    assert stats.norms.numel() == 1297 and stats.min < stats.mean < stats.max
