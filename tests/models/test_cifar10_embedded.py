"""The shipped CIFAR-10 models, images and statistics (art_ssni.models.zoo, compact_cnn): the
files match their card and size budget, load frozen in float32, refuse corruption, the images
are the seeded draw of the test split, and the statistics belong to the shipped UNet."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from art_ssni import DiffusionModel, EPSNorm, ReferenceStats
from art_ssni.models.compact_cnn import CIFAR10_MEAN, CIFAR10_STD, CompactCNN
from art_ssni.models.zoo import (
    CIFAR10_FILES,
    load_embedded_cifar10_classifier,
    load_embedded_cifar10_eps_net,
    load_embedded_cifar10_images,
    load_embedded_eps_net,
    load_zoo_manifest,
    sha256_file,
    zoo_root,
)

from tiny import SHARED_DATA


@pytest.fixture(scope="module")
def card() -> dict:
    return load_zoo_manifest(name=CIFAR10_FILES["card"])


def test_shipped_files_match_the_card_and_the_size_budget(card) -> None:
    total = 0
    for key in ("classifier", "eps_net", "images"):
        path = zoo_root() / card[key]["file"]
        assert sha256_file(path) == card[key]["sha256"]
        total += path.stat().st_size
    total += (zoo_root() / CIFAR10_FILES["stats"]).stat().st_size
    assert total <= 15 * 2**20
    weights = load_file(str(zoo_root() / card["eps_net"]["file"]))
    assert {t.dtype for t in weights.values()} == {torch.float16}


def test_models_load_frozen_in_float32_with_their_card_config(card) -> None:
    classifier = load_embedded_cifar10_classifier()
    net = load_embedded_cifar10_eps_net()
    assert classifier.config == card["classifier"]["config"]
    assert net.config == card["eps_net"]["config"]
    assert net.max_level == 300
    for model in (classifier, net):
        assert not model.training
        assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())


def test_a_corrupted_weight_file_is_refused(tmp_path) -> None:
    for name in CIFAR10_FILES.values():
        shutil.copy(zoo_root() / name, tmp_path / name)
    path = tmp_path / CIFAR10_FILES["classifier"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_embedded_cifar10_classifier(tmp_path)
    load_embedded_cifar10_eps_net(tmp_path)  # the other files are intact


def test_shipped_images_are_the_seeded_draw_and_the_classifier_scores_the_card(card) -> None:
    x, y = load_embedded_cifar10_images()
    assert x.shape == (512, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    raw = load_file(str(zoo_root() / CIFAR10_FILES["images"]))
    from art_ssni.data import fixed_subset

    assert torch.equal(raw["indices"], fixed_subset(512, 10_000, seed=0))
    with torch.no_grad():
        accuracy = (load_embedded_cifar10_classifier()(x).argmax(1) == y).float().mean().item()
    assert accuracy == card["images"]["classifier_accuracy"]
    assert accuracy > 0.5  # a trained classifier, not chance (10 %)


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg-test.zip").is_file(), reason="no shared data")
def test_shipped_images_are_the_test_split_pixels() -> None:
    from art_ssni.data import load_cifar10

    x, y = load_embedded_cifar10_images()
    index = load_file(str(zoo_root() / CIFAR10_FILES["images"]))["indices"][:16]
    x_ref, y_ref = load_cifar10("test", root=SHARED_DATA, source="jpeg", indices=index)
    assert torch.equal(x[:16], x_ref) and torch.equal(y[:16], y_ref)


def test_classifier_normalises_inside() -> None:
    net = CompactCNN(widths=(4, 4, 4, 4))
    net.eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(net(x), net.net((x - mean) / std))
    assert CompactCNN(**net.config).config == net.config


def test_statistics_belong_to_the_shipped_model_and_refuse_another(
    embedded_cifar10_diffusion,
) -> None:
    stats = ReferenceStats.load(zoo_root() / CIFAR10_FILES["stats"])
    assert stats.model == embedded_cifar10_diffusion.fingerprint()
    assert stats.num_levels == 20 and tuple(stats.image_shape) == (3, 32, 32)
    assert len(stats.norms) == 5000
    stats.check(EPSNorm(embedded_cifar10_diffusion, 20))
    digits = DiffusionModel(load_embedded_eps_net(), image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="model"):
        stats.check(EPSNorm(digits, 20))
