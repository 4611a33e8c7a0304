"""The shipped CIFAR-10 models, images and statistics, their preset and trainer."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from art_ssni import DiffPure, DiffusionModel, EPSNorm, ReferenceStats
from art_ssni.cli import main
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
from art_ssni.noise import SSNISigmoid

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def card() -> dict:
    return load_zoo_manifest(name=CIFAR10_FILES["card"])


@pytest.fixture(scope="module")
def diffusion() -> DiffusionModel:
    return DiffusionModel(load_embedded_cifar10_eps_net(), image_shape=(3, 32, 32))


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


@pytest.mark.skipif(not (DATA / "cifar10-jpeg-test.zip").is_file(), reason="no shared data")
def test_shipped_images_are_the_test_split_pixels() -> None:
    from art_ssni.data import load_cifar10

    x, y = load_embedded_cifar10_images()
    index = load_file(str(zoo_root() / CIFAR10_FILES["images"]))["indices"][:16]
    x_ref, y_ref = load_cifar10("test", root=DATA, source="jpeg", indices=index)
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


def test_statistics_belong_to_the_shipped_model_and_refuse_another(diffusion) -> None:
    stats = ReferenceStats.load(zoo_root() / CIFAR10_FILES["stats"])
    assert stats.model == diffusion.fingerprint()
    assert stats.num_levels == 20 and tuple(stats.image_shape) == (3, 32, 32)
    assert len(stats.norms) == 5000
    stats.check(EPSNorm(diffusion, 20))
    digits = DiffusionModel(load_embedded_eps_net(), image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="model"):
        stats.check(EPSNorm(digits, 20))


def test_cli_refuses_the_digits_statistics_for_the_cifar10_preset(tmp_path, capsys) -> None:
    code = main(
        ["evaluate", "--preset", "cifar10-embedded", "--quick", "--out", str(tmp_path),
         "--stats", str(zoo_root() / "digits_stats.safetensors")]
    )  # fmt: skip
    assert code == 2
    assert "model" in capsys.readouterr().err


def test_purifiers_refuse_levels_the_model_was_not_trained_for(diffusion) -> None:
    assert diffusion.max_level == 300
    DiffPure(diffusion, t_star=300, steps=1)
    with pytest.raises(ValueError, match="t_star"):
        DiffPure(diffusion, t_star=301, steps=1)
    purifier = DiffPure(
        diffusion, t_star=100, steps=1, noise=lambda x, generator=None: torch.full((len(x),), 400)
    )
    with pytest.raises(ValueError, match="trained for"):
        purifier(torch.rand(1, 3, 32, 32))


def test_ssni_levels_are_clamped_to_the_trained_levels(diffusion) -> None:
    stats = ReferenceStats.load(zoo_root() / CIFAR10_FILES["stats"])
    policy = SSNISigmoid(EPSNorm(diffusion, 20), stats, 100, 500, stats.std)
    levels = policy.levels_from_scores(torch.tensor([stats.min, stats.mean, 1e9]))
    assert int(levels.max()) == 300 and policy.t_max == 300


def test_ssni_gives_clean_images_lower_levels_than_noisy_ones(diffusion) -> None:
    x, _ = load_embedded_cifar10_images()
    x = x[:16]
    noisy = (x + 8 / 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(
        0, 1
    )
    stats = ReferenceStats.load(zoo_root() / CIFAR10_FILES["stats"])
    policy = SSNISigmoid(EPSNorm(diffusion, 20), stats, 100, 0, stats.std)
    assert policy(x, 0).float().mean() < policy(noisy, 0).float().mean()


def test_cifar10_preset_quick_run(tmp_path) -> None:
    out = tmp_path / "run"
    code = main(
        ["evaluate", "--preset", "cifar10-embedded", "--quick", "--no-progress", "--out", str(out),
         "--noise", "fixed,ssni-n", "--attack", "pgd-eot,bpda-eot"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["dataset"] == "cifar10-embedded"
    assert results["config"]["defence"]["settings"]["t_star"] == 100
    assert results["config"]["attack"]["eps"] == pytest.approx(8 / 255)
    rows = {row["key"]: row for row in results["rows"]}
    assert set(rows) == {
        "none-pgd", "diffpure-fixed-pgd-eot", "diffpure-fixed-bpda-eot",
        "diffpure-ssni-n-pgd-eot", "diffpure-ssni-n-bpda-eot",
    }  # fmt: skip
    assert rows["diffpure-fixed-bpda-eot"]["gradient"] == "bpda"
    assert rows["diffpure-fixed-pgd-eot"]["gradient"] == "full"
    for row in rows.values():
        assert 0.0 <= row["robust"]["vote"] <= 1.0


@pytest.mark.parametrize("method", ["gdmp", "gns", "dac", "mani-pure"])
def test_cifar10_preset_builds_every_method_with_ssni(method, tmp_path) -> None:
    from art_ssni.pipeline import build_rows

    from tiny import plan

    config, setup = plan(
        ["evaluate", "--preset", "cifar10-embedded", "--method", method, "--quick",
         "--out", str(tmp_path), "--attack", "pgd-eot"]
    )  # fmt: skip
    rows = build_rows(config, setup)
    purifiers = [row.model.purifier for row in rows[1:]]
    assert [type(p.noise).__name__ for p in purifiers] == [
        "FixedNoise",
        "SSNILinear",
        "SSNISigmoid",
    ]
    expected = {"gdmp": 36, "gns": 125, "dac": 200, "mani-pure": 100}[method]
    assert all(p.t_star == expected for p in purifiers)
    x, _ = load_embedded_cifar10_images()
    with torch.no_grad():
        out = purifiers[2](x[:2])
    assert out.shape == (2, 3, 32, 32) and 0.0 <= float(out.min()) <= float(out.max()) <= 1.0


def _trainer():
    spec = importlib.util.spec_from_file_location(
        "train_cifar10", ROOT / "benchmarks" / "train_cifar10.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (DATA / "cifar10-jpeg-train.zip").is_file(), reason="no shared data")
@pytest.mark.parametrize("part", ["eps", "classifier"])
def test_training_resumes_to_the_same_weights(part, tmp_path, monkeypatch) -> None:
    trainer = _trainer()
    flags = ["--part", part, "--train-images", "32", "--checkpoint-every", "2",
             "--classifier-widths", "4", "4", "4", "4", "--classifier-batch", "8",
             "--classifier-epochs", "1", "--unet-base", "8", "--eps-steps", "4",
             "--eps-batch", "4"]  # fmt: skip
    key = "eps_net" if part == "eps" else "classifier"
    trainer.main([*flags, "--out", str(tmp_path / "a"), "--work", str(tmp_path / "wa")])
    straight = load_file(str(tmp_path / "wa" / f"{key}_fp32.safetensors"))

    save = trainer.Checkpoint.save

    def interrupted(self, step, elapsed):
        save(self, step, elapsed)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Checkpoint, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.main([*flags, "--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb")])
    monkeypatch.setattr(trainer.Checkpoint, "save", save)
    assert (
        torch.load(
            tmp_path / "wb" / f"{'eps' if part == 'eps' else 'classifier'}.pt", weights_only=True
        )["step"]
        == 2
    )
    trainer.main([*flags, "--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb")])
    resumed = load_file(str(tmp_path / "wb" / f"{key}_fp32.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    meta = json.loads((tmp_path / "wb" / f"{key}.json").read_text())
    assert meta["config"] == (
        trainer.unet_config(8, 300) if part == "eps" else {**meta["config"], "widths": [4, 4, 4, 4]}
    )


def test_cifar10_preset_refuses_checkpoints_and_a_data_dir_for_evaluate(tmp_path, capsys) -> None:
    for flag in ("--diffusion-checkpoint", "--data-dir"):
        code = main(["evaluate", "--preset", "cifar10-embedded", flag, str(tmp_path), "--out",
                     str(tmp_path / "out")])  # fmt: skip
        assert code == 2
        assert (
            f"cifar10-embedded preset uses its shipped models and data and would ignore {flag}"
            in (capsys.readouterr().err)
        )
