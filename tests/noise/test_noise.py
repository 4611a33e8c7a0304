"""Noise levels (art_ssni.noise): batched EPS norms, fixed noise, the SSNI-L and SSNI-N
formulas, monotonicity and batch independence, parameter checks, and reference statistics
(round trip, refusal of another setup, incomplete metadata)."""

import math

import pytest
import torch

from art_ssni import DiffusionModel, EPSNorm, FixedNoise, ReferenceStats, SSNILinear, SSNISigmoid
from art_ssni._rng import SampleStreams

from tiny import TinyEpsNet


def _per_sample_eps_norm(diffusion, x, num_levels, seed):
    """EPS norm one sample and one level at a time, sample i's T' noises being the first draw
    of its own stream (key i) alone."""
    norms = []
    for i in range(x.shape[0]):
        own = SampleStreams(seed, torch.tensor([i]))
        noise = own.randn((num_levels, *x.shape[1:]), device="cpu")[0]
        total = torch.zeros_like(x[i : i + 1])
        for k in range(1, num_levels + 1):
            t = torch.tensor([k])
            x_t = diffusion.q_sample(2 * x[i : i + 1] - 1, t, noise[k - 1 : k])
            total = total + diffusion.score(x_t, t)
        norms.append((total / num_levels).flatten().norm())
    return torch.stack(norms)


def test_batched_eps_norm_equals_per_sample_computation(diffusion, images):
    eps_norm = EPSNorm(diffusion, num_levels=7, batch_size=10)
    with torch.no_grad():
        batched = eps_norm(images, generator=SampleStreams(3, torch.arange(6)))
        reference = _per_sample_eps_norm(diffusion, images, 7, 3)
    assert torch.allclose(batched, reference, rtol=1e-5)


def test_eps_norm_of_a_sample_is_the_same_alone_and_at_any_place_in_a_batch(diffusion, images):
    """With ids the norm follows the sample wherever it sits; without ids a seed gives the
    sample at position i the same norm in a batch of any size (only its position counts)."""
    eps_norm = EPSNorm(diffusion, num_levels=5)
    ids = torch.tensor([40, 41, 42, 43, 44, 45])
    order = torch.tensor([5, 3, 0, 1, 4, 2])
    with torch.no_grad():
        batch = eps_norm(images, SampleStreams(8, ids))
        shuffled = eps_norm(images[order], SampleStreams(8, ids[order]))
        alone = eps_norm(images[2:3], SampleStreams(8, ids[2:3]))
        torch.testing.assert_close(shuffled, batch[order], rtol=1e-6, atol=0)
        torch.testing.assert_close(alone, batch[2:3], rtol=1e-6, atol=0)
        first_alone = eps_norm(images[:1], generator=4)
        first_of_six = eps_norm(images, generator=4)[:1]
    torch.testing.assert_close(first_alone, first_of_six, rtol=1e-6, atol=0)
    assert not torch.allclose(batch[:1], first_alone)


def test_reference_norms_do_not_depend_on_the_batch_size(diffusion, images):
    eps_norm = EPSNorm(diffusion, num_levels=4)
    by_two = ReferenceStats.from_images(eps_norm, images, batch_size=2, generator=5, progress=False)
    at_once = ReferenceStats.from_images(
        eps_norm, images, batch_size=6, generator=5, progress=False
    )
    torch.testing.assert_close(by_two.norms, at_once.norms, rtol=1e-6, atol=0)


def test_eps_norm_uses_few_batched_calls(counted, images):
    eps_norm = EPSNorm(counted, num_levels=20, batch_size=64)
    with torch.no_grad():
        eps_norm(images, generator=0)
    assert counted.eps_net.rows == 6 * 20
    assert counted.eps_net.calls == math.ceil(6 * 20 / 64)


def test_eps_norm_is_differentiable(diffusion, images):
    x = images.clone().requires_grad_(True)
    EPSNorm(diffusion, num_levels=3)(x, generator=0).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_eps_norm_of_a_sample_ignores_its_batch_mates(diffusion, images):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    other = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(99))
    mixed = torch.cat([images[:3], other[3:]])
    with torch.no_grad():
        a = eps_norm(images, generator=1)
        b = eps_norm(mixed, generator=1)
    assert torch.allclose(a[:3], b[:3])


def test_fixed_noise():
    levels = FixedNoise(100)(torch.zeros(4, 3, 8, 8))
    assert levels.dtype == torch.long and levels.tolist() == [100] * 4
    with pytest.raises(ValueError, match="t_star"):
        FixedNoise(-1)


def _policy_inputs(stats):
    return torch.tensor([stats.min - 5, stats.min, stats.mean, stats.max, stats.max + 50])


def test_ssni_linear_formula_and_clamp(diffusion, stats):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNILinear(eps_norm, stats, t_star=100, bias=3, t_max=120)
    e = _policy_inputs(stats)
    got = policy.levels_from_scores(e)
    raw = (e - stats.min) / (stats.max - stats.min) * 100 + 3
    expected = torch.floor(raw + 0.5).clamp(0, 120).long()
    assert torch.equal(got, expected)
    assert got[1] == 3 and got[3] == 103 and got[4] == 120 and got[0] >= 0


def test_ssni_sigmoid_formula(diffusion, stats):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNISigmoid(eps_norm, stats, t_star=100, bias=10, tau=2.0)
    e = _policy_inputs(stats)
    expected = [
        min(1000, max(0, math.floor(110 / (1 + math.exp(-(v - stats.mean) / 2.0)) + 0.5)))
        for v in e.tolist()
    ]
    assert policy.levels_from_scores(e).tolist() == expected
    assert policy.levels_from_scores(torch.tensor([stats.mean])).item() == 55


@pytest.mark.parametrize("kind", ["linear", "sigmoid"])
def test_ssni_is_monotone_in_eps(diffusion, stats, kind):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = (
        SSNILinear(eps_norm, stats, t_star=100, bias=2)
        if kind == "linear"
        else SSNISigmoid(eps_norm, stats, t_star=100, bias=2, tau=stats.std + 1e-3)
    )
    e = torch.linspace(stats.min - 10, stats.max + 10, 500)
    levels = policy.levels_from_scores(e)
    assert (levels[1:] >= levels[:-1]).all()
    assert levels[-1] > levels[0]


@pytest.mark.parametrize("kind", ["linear", "sigmoid"])
def test_ssni_level_of_a_sample_ignores_its_batch_mates(diffusion, stats, images, kind):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = (
        SSNILinear(eps_norm, stats, t_star=100)
        if kind == "linear"
        else SSNISigmoid(eps_norm, stats, t_star=100, tau=1.0)
    )
    far = torch.ones(6, 3, 8, 8)
    with torch.no_grad():
        alone = policy(images, generator=4)
        mixed = policy(torch.cat([images[:3], far[3:]]), generator=4)
        each_alone = torch.cat([policy(images[i : i + 1], SampleStreams(4, [i])) for i in range(6)])
    assert torch.equal(alone[:3], mixed[:3])
    assert torch.equal(each_alone, policy(images, SampleStreams(4, torch.arange(6))))


def test_ssni_linear_batch_bounds_reproduce_the_reference_code(diffusion, stats):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNILinear(eps_norm, stats, t_star=100, bounds="batch")
    e = torch.tensor([stats.mean, stats.max + 100])
    lo, hi = stats.min, stats.max + 100
    assert policy.levels_from_scores(e)[0].item() == math.floor(
        (stats.mean - lo) / (hi - lo) * 100 + 0.5
    )
    # the batch-bounds variant makes a level depend on the batch, the default does not
    alone = policy.levels_from_scores(e[:1])
    assert alone.item() != policy.levels_from_scores(e)[0].item()


def test_policy_parameter_errors(diffusion, stats):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    with pytest.raises(ValueError, match="tau"):
        SSNISigmoid(eps_norm, stats, t_star=100, tau=0)
    with pytest.raises(ValueError, match="tau"):
        SSNISigmoid(eps_norm, stats, t_star=100)
    with pytest.raises(ValueError, match="bounds"):
        SSNILinear(eps_norm, stats, t_star=100, bounds="global")
    with pytest.raises(ValueError, match="t_star"):
        SSNILinear(eps_norm, stats, t_star=0)
    with pytest.raises(ValueError, match="num_levels"):
        EPSNorm(diffusion, num_levels=0)


def test_stats_round_trip(tmp_path, stats):
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    loaded = ReferenceStats.load(path)
    assert torch.equal(loaded.norms, stats.norms)
    assert (loaded.model, loaded.schedule, loaded.num_levels, loaded.image_shape) == (
        stats.model,
        stats.schedule,
        stats.num_levels,
        stats.image_shape,
    )
    assert loaded.mean == pytest.approx(stats.norms.double().mean().item())
    assert loaded.min == stats.norms.min().item() and loaded.max == stats.norms.max().item()


def test_stats_of_another_setup_are_refused(tmp_path, diffusion, stats, images):
    other_model = DiffusionModel(TinyEpsNet(seed=1), image_shape=(3, 8, 8), name="tiny")
    with pytest.raises(ValueError, match="model"):
        SSNISigmoid(EPSNorm(other_model, num_levels=5), stats, t_star=100, tau=1.0)
    with pytest.raises(ValueError, match="num_levels"):
        SSNILinear(EPSNorm(diffusion, num_levels=6), stats, t_star=100)
    policy = SSNILinear(EPSNorm(diffusion, num_levels=5), stats, t_star=100)
    diffusion.image_shape = None
    with pytest.raises(ValueError, match="image_shape"):
        policy(torch.rand(2, 3, 4, 4))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        ReferenceStats.load(bad)
    with pytest.raises(FileNotFoundError):
        ReferenceStats.load(tmp_path / "missing.safetensors")


def test_stats_load_with_incomplete_metadata(tmp_path, stats):
    from safetensors.torch import save_file

    path = tmp_path / "s.safetensors"
    metadata = {"format": "art-ssni-reference-stats/1", "model": stats.model}
    save_file({"norms": stats.norms}, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="lacks the metadata"):
        ReferenceStats.load(path)


@pytest.mark.parametrize("kind", ["ssni-l", "ssni-n"])
@pytest.mark.parametrize("norm", [float("nan"), float("inf")])
def test_a_non_finite_eps_norm_is_refused_not_mapped_to_level_zero(diffusion, stats, kind, norm):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    if kind == "ssni-l":
        policy = SSNILinear(eps_norm, stats, t_star=10)
    else:
        policy = SSNISigmoid(eps_norm, stats, t_star=10, tau=1.0)
    scores = torch.tensor([stats.mean, norm])
    with pytest.raises(ValueError, match="EPS norm of 1 of 2 samples is not finite"):
        policy.levels_from_scores(scores)
    assert policy.levels_from_scores(scores[:1]).shape == (1,)
