"""The paper's presets hold the published numbers and build correctly configured purifiers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from art_ssni import (
    GDMP,
    GNS,
    DiffPure,
    DiffusionModel,
    EPSNorm,
    FixedNoise,
    ReferenceStats,
    SSNILinear,
    SSNISigmoid,
)
from art_ssni.noise.registry import NOISES
from art_ssni.presets import build_noise, build_purifier, get_preset, list_presets
from art_ssni.purification import GNS_CIFAR10_STAGES, GNS_IMAGENET_STAGES
from art_ssni.purification.registry import METHODS

from tiny import TinyEpsNet


@pytest.fixture(scope="module")
def cifar_diffusion() -> DiffusionModel:
    return DiffusionModel(TinyEpsNet(), image_shape=(3, 32, 32), name="tiny-cifar")


@pytest.fixture(scope="module")
def cifar_stats(cifar_diffusion) -> ReferenceStats:
    eps_norm = EPSNorm(cifar_diffusion, num_levels=get_preset("cifar10-linf").ssni.num_levels)
    clean = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return ReferenceStats.from_images(eps_norm, clean, generator=0, progress=False)


def test_list_and_unknown_preset():
    assert list_presets() == (
        "digits",
        "cifar10-embedded",
        "cifar10-bpda",
        "cifar10-l2",
        "cifar10-linf",
        "cifar10-sampler",
        "imagenet-linf",
    )
    with pytest.raises(ValueError, match=r"unknown preset 'cifar100'.*cifar10-linf"):
        get_preset("cifar100")


def test_cifar10_linf_numbers():
    p = get_preset("cifar10-linf")
    assert (p.dataset, p.split, p.image_size, p.classifier_input_size) == (
        "cifar10",
        "test",
        32,
        32,
    )
    assert p.attack.attacks == ("pgd-eot", "selector-aware")
    assert p.attack.norm == "Linf" and p.attack.eps == 8 / 255
    assert (p.attack.iterations, p.attack.eot, p.attack.step) == (200, 20, 0.007)
    assert p.run.defence.gradient == "surrogate"
    assert (p.run.n_images, p.run.runs) == (512, 3)
    assert p.diffusion_checkpoint == "score_sde" and "wrn-28-10" in p.classifier
    assert (p.ssni.num_levels, p.ssni.tau, p.ssni.reference_images) == (20, 20.0, 5000)
    diffpure = p.method("diffpure")
    assert (diffpure.t_star, diffpure.steps, diffpure.surrogate_steps) == (100, 100, 20)
    gdmp = p.method("gdmp")
    assert (gdmp.runs, gdmp.steps, gdmp.t_star, gdmp.guidance) == (4, 36, 36, "none")
    gns = p.method("gns")
    assert gns.stages == GNS_CIFAR10_STAGES and gns.t_star == 125
    assert gns.surrogate_stages == ((30, 1), (50, 1), (125, 5)) and gns.votes == 10
    dac = p.method("dac")
    assert (dac.t_large, dac.t_small, dac.stride, dac.resample, dac.votes) == (200, 100, 2, 3, 20)
    assert dac.threshold == 0.9 and dac.mask_layers[-1] == "relu"


def test_cifar10_l2_and_bpda_numbers():
    l2 = get_preset("cifar10-l2")
    assert l2.attack.norm == "L2" and l2.attack.eps == 0.5 and l2.method("diffpure").t_star == 75
    assert l2.attack.iterations == 200 and l2.attack.eot == 20
    assert any("GDMP" in note for note in l2.notes)
    bpda = get_preset("cifar10-bpda")
    assert bpda.attack.attacks[0] == "bpda-eot"
    assert {d.gradient for d in bpda.defences} == {"bpda"}
    assert bpda.attack.eps == 8 / 255 and bpda.method("diffpure").t_star == 100
    gdmp = bpda.method("gdmp")
    assert (gdmp.runs, gdmp.steps, gdmp.t_star) == (2, 50, 50)


def test_imagenet_numbers():
    p = get_preset("imagenet-linf")
    assert (p.dataset, p.image_size, p.classifier_input_size) == ("imagenet", 256, 224)
    assert p.attack.norm == "Linf" and p.attack.eps == 4 / 255 and p.attack.eot == 20
    assert p.diffusion_checkpoint == "guided_diffusion" and "resnet50" in p.classifier
    assert p.method("diffpure").t_star == 150
    assert p.method("diffpure").surrogate_t_star == 200
    assert p.method("gns").stages == GNS_IMAGENET_STAGES
    assert p.ssni.num_levels == 50 and p.ssni.tau == 160.0
    assert p.method("dac").top_fraction == 0.15 and p.run.batch_size == 8
    assert any("tau=160" in note for note in p.notes)


def test_presets_are_frozen_plain_data():
    p = get_preset("cifar10-linf")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.run = None
    assert hash(p) == hash(get_preset("cifar10-linf"))
    record = p.run.as_dict()
    assert record["defence"]["settings"] == {
        "t_star": 100, "steps": 100, "surrogate_steps": 20, "surrogate_t_star": None,
        "eta": None, "clip_denoised": False,
    }  # fmt: skip
    with pytest.raises(ValueError, match="no setting for method 'adp'"):
        p.method("adp")


def test_every_preset_covers_diffpure_first_and_its_run_is_complete():
    for name in list_presets():
        p = get_preset(name)
        assert p.methods[0] == "diffpure" and p.run.defence == p.defences[0]
        assert p.run.preset == name
        for method in p.methods:
            assert isinstance(p.method(method), METHODS[method].settings)


def test_build_diffpure_gdmp_gns(cifar_diffusion):
    diffpure = build_purifier("cifar10-linf", "diffpure", cifar_diffusion)
    assert isinstance(diffpure, DiffPure) and diffpure.t_star == 100
    assert diffpure.stages == ((100, 100),) and diffpure.surrogate_stages == ((100, 20),)
    assert diffpure.gradient == "surrogate" and isinstance(diffpure.noise, FixedNoise)
    assert diffpure.noise.t_star == 100
    full = build_purifier(get_preset("cifar10-l2"), "diffpure", cifar_diffusion, gradient="full")
    assert full.gradient == "full" and full.stages == ((75, 100),)
    gdmp = build_purifier("cifar10-linf", "gdmp", cifar_diffusion)
    assert isinstance(gdmp, GDMP) and gdmp.stages == ((36, 36),) * 4 and gdmp.runs == 4
    assert gdmp.guidance == "none"
    gdmp_bpda = build_purifier("cifar10-bpda", "gdmp", cifar_diffusion)
    assert gdmp_bpda.stages == ((50, 50),) * 2 and gdmp_bpda.gradient == "bpda"
    gns = build_purifier("cifar10-linf", "gns", cifar_diffusion, generator=3)
    assert isinstance(gns, GNS) and gns.stages == GNS_CIFAR10_STAGES and gns.votes == 10
    assert gns.t_star == 125 and gns.surrogate_stages == ((30, 1), (50, 1), (125, 5))
    assert build_purifier("cifar10-linf", "diffpure", cifar_diffusion, steps=10).stages == (
        (100, 10),
    )


def test_build_imagenet_diffpure_surrogate():
    diffusion = DiffusionModel(TinyEpsNet(), image_shape=(3, 256, 256))
    diffpure = build_purifier("imagenet-linf", "diffpure", diffusion)
    assert diffpure.stages == ((150, 150),) and diffpure.surrogate_stages == ((200, 10),)
    gns = build_purifier("imagenet-linf", "gns", diffusion)
    assert gns.stages == GNS_IMAGENET_STAGES and gns.t_star == 200


def test_build_purifier_validates(cifar_diffusion):
    with pytest.raises(ValueError, match="unknown method"):
        build_purifier("cifar10-linf", "adp", cifar_diffusion)
    with pytest.raises(ValueError, match=r"purifies \(3, 256, 256\)"):
        build_purifier("imagenet-linf", "diffpure", cifar_diffusion)
    with pytest.raises(ValueError, match="t\\*=36"):
        build_purifier("cifar10-linf", "gdmp", cifar_diffusion, noise=FixedNoise(100))
    with pytest.raises(ValueError, match="gradient must be"):
        build_purifier("cifar10-linf", "gns", cifar_diffusion, gradient="exact")
    with pytest.raises(ValueError, match="no setting"):
        build_purifier("cifar10-l2", "dac", cifar_diffusion)


def test_build_noise_kinds(cifar_diffusion, cifar_stats):
    assert tuple(METHODS) == ("diffpure", "gdmp", "gns", "dac", "mani-pure")
    assert tuple(NOISES) == ("fixed", "ssni-l", "ssni-n")
    fixed = build_noise("cifar10-linf", "gns", "fixed", cifar_diffusion)
    assert isinstance(fixed, FixedNoise) and fixed.t_star == 125
    linear = build_noise("cifar10-linf", "diffpure", "ssni-l", cifar_diffusion, cifar_stats)
    assert isinstance(linear, SSNILinear) and linear.t_star == 100 and linear.bounds == "reference"
    assert linear.eps_norm.num_levels == 20
    sigmoid = build_noise("cifar10-l2", "diffpure", "ssni-n", cifar_diffusion, cifar_stats)
    assert isinstance(sigmoid, SSNISigmoid) and sigmoid.t_star == 75 and sigmoid.tau == 20.0
    tuned = build_noise(
        "cifar10-linf", "gdmp", "ssni-n", cifar_diffusion, cifar_stats, tau=5, bias=3
    )
    assert (tuned.tau, tuned.bias, tuned.t_star) == (5.0, 3.0, 36)
    with pytest.raises(ValueError, match="needs reference statistics"):
        build_noise("cifar10-linf", "diffpure", "ssni-l", cifar_diffusion)
    with pytest.raises(ValueError, match="unknown noise policy"):
        build_noise("cifar10-linf", "diffpure", "ssni", cifar_diffusion, cifar_stats)


def test_ssni_purifier_runs_end_to_end(cifar_diffusion, cifar_stats):
    noise = build_noise("cifar10-linf", "diffpure", "ssni-n", cifar_diffusion, cifar_stats)
    purifier = build_purifier("cifar10-linf", "diffpure", cifar_diffusion, noise=noise, steps=5)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    levels = purifier.levels(x, generator=0)
    assert levels.shape == (2,) and bool(((levels >= 0) & (levels <= 1000)).all())
    out = purifier(x, generator=0)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


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


def test_sampler_ablation_preset(cifar_diffusion):
    p = get_preset("cifar10-sampler")
    assert p.samplers == ("ddpm", "sde", "ddim") and p.run.defence.convention == "as-trained"
    assert p.methods == ("diffpure",)
    assert p.method("diffpure").t_star == 100 and p.attack.eps == 8 / 255
    for sampler in p.samplers:
        purifier = build_purifier(p, "diffpure", cifar_diffusion, sampler=sampler)
        assert purifier.sampler == sampler and purifier.stages == ((100, 100),)
    assert build_purifier(p, "diffpure", cifar_diffusion, sampler="ddim").eta == 0.0


def test_cli_sampler_and_convention_reach_the_purifier():
    from art_ssni.pipeline import build_rows, prepare

    config, setup = prepare(
        "digits", noises="fixed", attacks="pgd-eot", sampler="sde", judge_draws=0
    )
    rows = build_rows(config, setup)
    defended = [row for row in rows if row.model.purifier is not None]
    assert [row.model.purifier.sampler for row in defended] == ["sde"]
    assert defended[0].method.endswith("[SDE]")
    config, setup = prepare("digits", convention="diffpure-sde")
    assert setup.diffusion.schedule.continuous
    with pytest.raises(ValueError, match="do not belong to this setup"):
        # the shipped statistics belong to the as-trained convention
        build_rows(config, setup)
