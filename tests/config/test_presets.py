"""The presets (art_ssni.presets) hold the published numbers and build correctly configured
noise policies and purifiers, DAC's and MANI-Pure's included, on the digits, CIFAR-10 and
ImageNet settings."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

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
from art_ssni.models.zoo import load_embedded_cifar10_images
from art_ssni.noise import ATTENTION_LAYERS
from art_ssni.noise.registry import NOISES
from art_ssni.presets import build_noise, build_purifier, get_preset, list_presets
from art_ssni.purification import GNS_CIFAR10_STAGES, GNS_IMAGENET_STAGES
from art_ssni.purification.registry import METHODS

from tiny import RowCounter, TinyEpsNet


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


def test_sampler_ablation_preset(cifar_diffusion):
    p = get_preset("cifar10-sampler")
    assert p.samplers == ("ddpm", "sde", "ddim") and p.run.defence.convention == "as-trained"
    assert p.methods == ("diffpure",)
    assert p.method("diffpure").t_star == 100 and p.attack.eps == 8 / 255
    for sampler in p.samplers:
        purifier = build_purifier(p, "diffpure", cifar_diffusion, sampler=sampler)
        assert purifier.sampler == sampler and purifier.stages == ((100, 100),)
    assert build_purifier(p, "diffpure", cifar_diffusion, sampler="ddim").eta == 0.0


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


def test_embedded_and_preset_purifiers_carry_the_published_settings():
    from art_ssni.models.classifiers import NormalizedClassifier
    from art_ssni.pipeline import build_rows
    from art_ssni.presets import build_purifier, get_preset

    from tiny import plan

    base = [
        "evaluate",
        "--preset",
        "digits",
        "--method",
        "dac",
        "--noise",
        "fixed",
        "--attack",
        "pgd-eot",
    ]
    base += ["--no-baseline", "--judge-draws", "0"]
    config, setup = plan(base)
    (row,) = build_rows(config, setup)
    dac = row.model.purifier
    assert (dac.t_large, dac.t_small, dac.stride, dac.surrogate_stride) == (60, 30, 6, 30)
    assert dac.mask.layers == ATTENTION_LAYERS["digits"] and dac.mask.threshold == 0.5
    x = setup.x[:3]
    counted = RowCounter(setup.diffusion.eps_net)
    dac.diffusion = DiffusionModel(counted, image_shape=(1, 8, 8))
    with torch.no_grad():
        dac(x, generator=0)
    assert counted.rows == 3 * 10  # DiffPure's 10 steps
    assert build_rows(*plan([*base, "--steps", "20"]))[0].model.purifier.stride == 3
    ssni = build_rows(*plan([*base, "--noise", "ssni-l"]))[0].model.purifier
    assert ssni.noise.t_star == ssni.t_large == 60  # SSNI's level sets t_large
    mani_args = [*base, "--method", "mani-pure", "--steps", "20"]
    mani = build_rows(*plan(mani_args))[0].model.purifier
    assert (mani.t_star, mani.stages, mani.spectral.bands, mani.radius) == (60, ((60, 20),), 4, 2.0)

    cifar = DiffusionModel(TinyEpsNet(), image_shape=(3, 32, 32))
    wrn = nn.Module()  # module names only: the published layer list must resolve
    for name in ATTENTION_LAYERS["wrn-28-10"]:
        parent = wrn
        for part in name.split(".")[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(name.split(".")[-1], nn.ReLU())
    dac = build_purifier("cifar10-linf", "dac", cifar, classifier=wrn)
    assert (dac.t_large, dac.t_small, dac.stride, dac.resample, dac.votes) == (200, 100, 2, 3, 20)
    assert dac.mask.threshold == 0.9 and dac.gradient == "surrogate"
    resnet = NormalizedClassifier(nn.Module(), [0.5] * 3, [0.5] * 3)
    for i in range(1, 5):
        resnet.model.add_module(f"layer{i}", nn.Identity())
    big = DiffusionModel(TinyEpsNet(), image_shape=(3, 256, 256))
    dac = build_purifier("imagenet-linf", "dac", big, classifier=resnet)
    assert (dac.t_large, dac.t_small, dac.mask.top_fraction) == (400, 200, 0.15)
    mani = build_purifier("cifar10-linf", "mani-pure", cifar)
    assert (mani.t_star, mani.spectral.bands, mani.spectral.gamma, mani.delta) == (100, 8, 1.8, 0.3)
    from art_ssni.purification.registry import METHODS

    assert METHODS["dac"].level(get_preset("cifar10-linf").method("dac")) == 200
    with pytest.raises(ValueError, match="classifier"):
        build_purifier("cifar10-linf", "dac", cifar)
