"""The contract every registered purification method keeps
(``art_ssni.purification.registry.METHODS``).

Each entry runs on the shipped digits models with its digits preset setting (or its
constructor defaults) shrunk to a few steps: GNS keeps its schedule's shape at small levels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchattacks

from art_ssni import DefendedClassifier, DiffusionModel, EPSNorm, ReferenceStats
from art_ssni.data import load_digits
from art_ssni.models.zoo import load_embedded_classifier, load_embedded_eps_net, zoo_root
from art_ssni.noise.registry import NOISES
from art_ssni.presets import get_preset
from art_ssni.purification.registry import METHODS

from tiny import RowCounter

LEVEL = 12


@pytest.fixture(scope="module")
def digits():
    net = load_embedded_eps_net()
    diffusion = DiffusionModel(net, image_shape=(1, 8, 8), name="digits")
    x = load_digits("test")[0][:3].clone()
    return diffusion, load_embedded_classifier(), x


def small_settings(name: str, steps: int = 4):
    """The method's digits setting (or its defaults) at level ``LEVEL`` with ``steps`` steps."""
    spec = METHODS[name]
    preset = get_preset("digits")
    settings = preset.method(name) if name in preset.methods else spec.make_settings()
    if hasattr(settings, "stages"):  # a stage schedule: the same shape at small levels
        stages, surrogate = ((6, min(3, steps)), (LEVEL, steps)), ((6, 1), (LEVEL, 2))
        return dataclasses.replace(settings, stages=stages, surrogate_stages=surrogate, t_star=None)
    return spec.retarget(settings, LEVEL, steps, 2)


def build(name: str, diffusion, classifier, *, steps: int = 4, **kwargs):
    settings = small_settings(name, steps)
    return METHODS[name].build(diffusion, settings, classifier=classifier, **kwargs)


def policy(noise: str, diffusion):
    """The registered noise policy ``noise`` around ``LEVEL`` on the shipped digits statistics."""
    stats = ReferenceStats.load(zoo_root() / "digits_stats.safetensors")
    eps_norm = EPSNorm(diffusion, num_levels=stats.num_levels)
    build_policy = NOISES[noise].build
    return build_policy(
        LEVEL, eps_norm=eps_norm, stats=stats, bias=0.0, tau=None, bounds="reference"
    )


class Scripted:
    """A policy that returns fixed per-sample levels."""

    def __init__(self, levels: list[int]) -> None:
        self.t_star = LEVEL
        self.levels = torch.tensor(levels)

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return self.levels.clone()


@pytest.mark.parametrize("name", list(METHODS))
def test_same_seed_same_result(name, digits):
    diffusion, classifier, x = digits
    purifier = build(name, diffusion, classifier)
    torch.testing.assert_close(purifier(x, generator=5), purifier(x, generator=5), rtol=0, atol=0)
    assert not torch.equal(purifier(x, generator=5), purifier(x, generator=6))


@pytest.fixture(scope="module")
def batch_mates(digits):
    """Five other digits, three of them perturbed, so that their SSNI levels (and their step
    counts) differ from each other and from the sample's."""
    images = load_digits("test")[0][10:15].clone()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    images[:3] = (images[:3] + 0.3 * noise[:3]).clamp(0, 1)
    return images


@pytest.mark.parametrize("noise", list(NOISES))
@pytest.mark.parametrize("name", list(METHODS))
def test_a_sample_ignores_its_batch_mates_and_the_batch_size(name, noise, digits, batch_mates):
    """A sample's purified image and level are the same alone and in a batch of five others,
    at the same and at another position: with its id wherever it sits; without ids at the same
    position. Steps = level, so the batch-mates' step counts differ from the sample's."""
    diffusion, classifier, x = digits
    purifier = build(name, diffusion, classifier, steps=LEVEL, noise=policy(noise, diffusion))
    sample, others = x[1:2], batch_mates
    ids = torch.tensor([7, 20, 21, 22, 23, 24])
    with torch.no_grad():
        alone, alone_level = purifier.forward_with_levels(sample, 5, sample_ids=ids[:1])
        first, first_levels = purifier.forward_with_levels(
            torch.cat([sample, others]), 5, sample_ids=ids
        )
        moved = torch.cat([others[:3], sample, others[3:]])
        moved_ids = torch.cat([ids[1:4], ids[:1], ids[4:]])
        middle, middle_levels = purifier.forward_with_levels(moved, 5, sample_ids=moved_ids)
        plain_alone, plain_level = purifier.forward_with_levels(sample, 5)
        plain_first, plain_levels = purifier.forward_with_levels(torch.cat([sample, others]), 5)
    for out, level in [(first[:1], first_levels[:1]), (middle[3:4], middle_levels[3:4])]:
        torch.testing.assert_close(out, alone, rtol=0, atol=2e-5)
        assert torch.equal(level, alone_level)
    torch.testing.assert_close(plain_first[:1], plain_alone, rtol=0, atol=2e-5)
    assert torch.equal(plain_levels[:1], plain_level)
    assert float((alone - sample).abs().max()) > 1e-3  # the sample was purified
    if noise != "fixed":
        assert len(set(first_levels.tolist())) > 2  # the batch-mates run other step counts


@pytest.mark.parametrize("name", list(METHODS))
def test_each_call_draws_anew_and_a_seed_repeats(name, digits):
    """Successive calls on the purifier's own generator (EOT draws) differ; the same seed,
    and the same ids, give the same draws."""
    diffusion, classifier, x = digits
    purifier = build(name, diffusion, classifier, generator=3)
    with torch.no_grad():
        first, second = purifier(x), purifier(x)
        repeated = purifier(x, generator=9, sample_ids=[4, 5, 6])
        again = purifier(x, generator=9, sample_ids=[4, 5, 6])
        other_ids = purifier(x, generator=9, sample_ids=[4, 5, 8])
    assert not torch.allclose(first, second, atol=1e-3)
    assert torch.equal(repeated, again)
    assert torch.equal(other_ids[:2], repeated[:2])
    assert not torch.allclose(other_ids[2], repeated[2], atol=1e-3)


@pytest.mark.parametrize("name", list(METHODS))
def test_full_gradient_equals_autograd_through_the_plain_chain(name, digits):
    diffusion, classifier, x = digits
    purifier = build(name, diffusion, classifier, gradient="full")
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    x_full = x.clone().requires_grad_(True)
    out_full = purifier(x_full, generator=7)
    (out_full * weights).sum().backward()
    streams = purifier.streams(x, 7)
    levels = purifier.levels(x, streams)
    x_plain = x.clone().requires_grad_(True)
    out_plain = purifier.purify(x_plain, levels, purifier.stages, streams, checkpoint=False)
    (out_plain * weights).sum().backward()
    torch.testing.assert_close(out_full, out_plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(x_full.grad, x_plain.grad, rtol=1e-5, atol=1e-6)
    assert float(x_full.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", list(METHODS))
def test_bpda_backward_is_the_identity(name, digits):
    diffusion, classifier, x = digits
    purifier = build(name, diffusion, classifier, gradient="bpda")
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    xg = x.clone().requires_grad_(True)
    (purifier(xg, generator=3) * weights).sum().backward()
    torch.testing.assert_close(xg.grad, weights, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(METHODS))
def test_level_zero_leaves_a_sample_untouched(name, digits):
    diffusion, classifier, x = digits
    purifier = build(name, diffusion, classifier, noise=Scripted([0, LEVEL, 0]))
    out = purifier(x, generator=0)
    torch.testing.assert_close(out[[0, 2]], x[[0, 2]], rtol=0, atol=1e-6)
    assert float((out[1] - x[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("levels", [[LEVEL] * 3, [LEVEL, 5, 0]])
def test_rows_equal_the_network_rows_of_a_run(name, levels, digits):
    _, classifier, x = digits
    counter = RowCounter(load_embedded_eps_net())
    counted = DiffusionModel(counter, image_shape=(1, 8, 8), name="counted")
    purifier = build(name, counted, classifier, noise=Scripted(levels))
    with torch.no_grad():
        purifier(x, generator=0)
    assert counter.rows == purifier.rows(torch.tensor(levels)) > 0


@pytest.mark.parametrize("name", list(METHODS))
def test_keeps_the_callers_dtype(name, digits):
    diffusion, classifier, x = digits
    purifier = build(name, diffusion, classifier)
    out = purifier(x.double(), generator=0)
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("name", list(METHODS))
def test_art_loss_gradient_and_torchattacks_run(name, digits):
    from art.estimators.classification import PyTorchClassifier

    from art_ssni.defences import PurificationPyTorch

    diffusion, classifier, x = digits
    settings = small_settings(name)
    kwargs = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    if "mask_layers" in kwargs:
        kwargs["classifier"] = classifier
    defence = PurificationPyTorch(
        diffusion, method=name, device_type="cpu", generator=0, gradient="full", **kwargs
    )
    art = PyTorchClassifier(
        classifier, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0, 1),
        preprocessing_defences=[defence], device_type="cpu",
    )  # fmt: skip
    y = np.array([0, 1, 2])
    grad = art.loss_gradient(x.numpy(), np.eye(10, dtype=np.float32)[y])
    assert grad.shape == x.shape and np.isfinite(grad).all() and np.abs(grad).sum() > 0

    model = DefendedClassifier(build(name, diffusion, classifier), classifier)
    attack = torchattacks.PGD(model, eps=0.1, alpha=0.05, steps=1, random_start=False)
    x_adv = attack(x, torch.tensor(y))
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
