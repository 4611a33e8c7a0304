"""A paper preset's sources (art_ssni.sources): the user's checkpoints, image folders and time
convention become the setup, and ImageNet images are read for the subset only."""

import dataclasses

import pytest
import torch


def test_paper_preset_setup_reads_the_users_files(tmp_path, monkeypatch, cifar_diffusion):
    import numpy as np
    from PIL import Image

    from art_ssni.config import Overrides, resolve
    from art_ssni.diffusion.model import DiffusionModel as DM
    from art_ssni.sources import Sources, load_setup

    for i, cls in enumerate(("cat", "dog", "ship")):
        (tmp_path / "test" / cls).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)).save(
            tmp_path / "test" / cls / "0000.png"
        )
    (tmp_path / "ckpt.pth").write_bytes(b"x")
    (tmp_path / "Standard.pt").write_bytes(b"x")
    conventions = []

    def fake_score_sde(cls, path, convention="as-trained"):
        conventions.append(convention)
        return cifar_diffusion

    monkeypatch.setattr(DM, "from_score_sde", classmethod(fake_score_sde))
    monkeypatch.setattr(
        "art_ssni.models.classifiers.load_cifar10_wideresnet", lambda path: torch.nn.Identity()
    )
    sources = Sources(
        diffusion_checkpoint=str(tmp_path / "ckpt.pth"),
        classifier_checkpoint=str(tmp_path / "Standard.pt"),
        data_dir=str(tmp_path),
    )
    setup = load_setup("cifar10-bpda", sources)
    assert conventions == ["as-trained"]
    load_setup("cifar10-bpda", sources, convention="lee-kim")
    assert conventions[-1] == "lee-kim"
    assert setup.name == "cifar10" and setup.diffusion is cifar_diffusion
    assert setup.x.shape == (3, 3, 32, 32) and setup.y.tolist() == [3, 5, 8]
    assert setup.stats is None
    config = resolve("cifar10-bpda", Overrides(method="gdmp"), available=3)
    settings = config.defence.settings
    assert (settings.t_star, settings.steps, settings.runs) == (50, 50, 2)
    assert (config.defence.gradient, config.attack.eps, config.attack.iterations) == (
        "bpda", 8 / 255, 200,
    )  # fmt: skip
    assert (config.attack.eot, config.n_images, config.ssni.tau) == (20, 3, 20.0)
    with pytest.raises(ValueError, match="needs --diffusion-checkpoint"):
        load_setup("cifar10-bpda", dataclasses.replace(sources, diffusion_checkpoint=None))


def test_imagenet_images_read_only_the_subset(tmp_path):
    import numpy as np
    from PIL import Image

    from art_ssni.sources import load_preset_images

    for split in ("val", "train"):
        for k in range(1000):
            (tmp_path / split / f"n{k:08d}").mkdir(parents=True)
        for k in (0, 7, 999):
            pixels = np.full((40, 60, 3), k % 256, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / split / f"n{k:08d}" / "a.JPEG")
    x, y = load_preset_images("imagenet-linf", "test", tmp_path, n_images=2, seed=0)
    assert x.shape == (2, 3, 256, 256) and set(y.tolist()) <= {0, 7, 999}
    x_all, y_all = load_preset_images("imagenet-linf", "train", tmp_path)
    assert x_all.shape == (3, 3, 256, 256) and y_all.tolist() == [0, 7, 999]
