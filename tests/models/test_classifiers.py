"""Classifier loaders on random weights saved in the real checkpoint layouts (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from art_ssni._compat import import_torchvision
from art_ssni.models import classifiers
from art_ssni.models.classifiers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NormalizedClassifier,
    load_cifar10_wideresnet,
    load_imagenet_resnet50,
)


def _random_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The freshly initialised (random) weights, detached from the model."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def wrn_state() -> dict[str, torch.Tensor]:
    return _random_state(classifiers._robustbench_wide_resnet()(depth=28, widen_factor=10))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, wrn_state) -> Path:
    """A RobustBench model_dir: dict with ``state_dict``, keys prefixed ``module.``."""
    root = tmp_path_factory.mktemp("robustbench")
    path = root / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in wrn_state.items()}}, path)
    return root


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    tv = import_torchvision()
    state = _random_state(tv.models.resnet50(weights=None))
    path = tmp_path_factory.mktemp("torchvision") / "resnet50-0676ba61.pth"
    torch.save(state, path)
    return path, state


def _assert_loaded(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_wideresnet_loads_from_robustbench_model_dir_with_weights_only(
    monkeypatch, model_dir, wrn_state
):
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    model = load_cifar10_wideresnet(model_dir)
    assert len(calls) == 1 and calls[0].get("weights_only") is True
    _assert_loaded(model, wrn_state)
    assert type(model).__name__ == "WideResNet"
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_wideresnet_loads_a_raw_state_dict_file(tmp_path, wrn_state):
    path = tmp_path / "wrn.pt"
    torch.save(wrn_state, path)
    _assert_loaded(load_cifar10_wideresnet(path), wrn_state)


def test_wideresnet_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar10/Linf/Standard\.pt.*download"):
        load_cifar10_wideresnet(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_cifar10_wideresnet(tmp_path / "nowhere.pt")


def test_wideresnet_html_page_is_rejected(tmp_path):
    path = tmp_path / "Standard.pt"
    path.write_text("\n  <!DOCTYPE html><html><body>Google Drive - quota exceeded</body></html>")
    with pytest.raises(ValueError, match="HTML page"):
        load_cifar10_wideresnet(path)
    path.write_text("<html><head></head></html>")
    with pytest.raises(ValueError, match="HTML page"):
        load_cifar10_wideresnet(tmp_path)


def test_wideresnet_truncated_and_empty_files_are_rejected(tmp_path, model_dir):
    full = model_dir / "cifar10" / "Linf" / "Standard.pt"
    path = tmp_path / "Standard.pt"
    with open(full, "rb") as handle:
        path.write_bytes(handle.read(1 << 20))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_cifar10_wideresnet(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_cifar10_wideresnet(path)


def test_wideresnet_wrong_keys_are_named(tmp_path, wrn_state):
    path = tmp_path / "other.pt"
    torch.save(
        {"state_dict": {"conv1.weight": wrn_state["conv1.weight"], "head.w": torch.ones(1)}}, path
    )
    with pytest.raises(ValueError, match=r"missing keys.*unexpected keys \(e\.g\. \['head\.w'\]\)"):
        load_cifar10_wideresnet(path)
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match="not a state_dict"):
        load_cifar10_wideresnet(path)


def test_shape_mismatch_is_named(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    state = {"0.weight": torch.zeros(3, 5), "0.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"1 shape mismatches.*0\.weight: file \(3, 5\)"):
        classifiers._load_exact(model, state, tmp_path / "x.pt", "test")


def test_resnet50_loads_a_torchvision_state_dict(resnet_file):
    path, state = resnet_file
    model = load_imagenet_resnet50(path)
    assert isinstance(model, NormalizedClassifier)
    assert type(model.model).__name__ == "ResNet"
    _assert_loaded(model.model, state)
    assert not model.training
    model.model = _Recorder()
    x = torch.rand(2, 3, 256, 256)
    model(x)
    resized = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model.model.seen, (resized - mean) / std)


def test_resnet50_from_torch_hub_cache_and_offline_error(monkeypatch, tmp_path, resnet_file):
    """Without a path the weights come from torch hub's cache only: nothing is downloaded."""
    path, state = resnet_file

    def download(*args, **kwargs):
        raise AssertionError("load_imagenet_resnet50 tried to download")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    with pytest.raises(FileNotFoundError, match=r"resnet50-0676ba61\.pth.*never downloads"):
        load_imagenet_resnet50()
    cached = tmp_path / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir()
    cached.symlink_to(path)
    _assert_loaded(load_imagenet_resnet50().model, state)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_imagenet_resnet50(tmp_path / "missing.pth")


class _Recorder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return x.flatten(1).sum(1, keepdim=True)


def test_normalized_classifier_normalises_per_channel():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    wrapper = NormalizedClassifier(_Recorder(), mean, std)
    x = torch.rand(2, 3, 8, 8)
    wrapper(x)
    expected = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], dim=1)
    torch.testing.assert_close(wrapper.model.seen, expected)
    assert set(dict(wrapper.named_buffers())) == {"mean", "std"}


def test_normalized_classifier_resizes_256_to_224():
    wrapper = NormalizedClassifier(_Recorder(), IMAGENET_MEAN, IMAGENET_STD, input_size=(224, 224))
    x = torch.rand(2, 3, 256, 256)
    wrapper(x)
    assert wrapper.model.seen.shape == (2, 3, 224, 224)
    resized = F.interpolate(
        x, size=(224, 224), mode="bilinear", align_corners=False, antialias=False
    )
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(wrapper.model.seen, (resized - mean) / std)
    already = torch.rand(1, 3, 224, 224)
    wrapper(already)
    torch.testing.assert_close(wrapper.model.seen, (already - mean) / std)


def test_normalized_classifier_validates():
    with pytest.raises(ValueError, match="one value per channel"):
        NormalizedClassifier(_Recorder(), (0.5, 0.5), (1.0,))
    with pytest.raises(ValueError, match="positive"):
        NormalizedClassifier(_Recorder(), (0.5,), (0.0,))
    wrapper = NormalizedClassifier(_Recorder(), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        wrapper(torch.rand(2, 1, 8, 8))
