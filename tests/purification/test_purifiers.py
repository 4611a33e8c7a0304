"""The purification engine and methods (art_ssni.purification): seeding, gradient modes (full,
surrogate, BPDA), per-sample levels, the paper defaults of DiffPure, GDMP and GNS, GDMP guidance,
input checks, network rows of every method, forward_with_levels, stages and the SDE sampler's
refusals."""

import pytest
import torch

from art_ssni import GDMP, GNS, DiffPure, EPSNorm, SSNISigmoid
from art_ssni._rng import SampleStreams
from art_ssni.purification.guidance import ssim

FAST = {"t_star": 20, "steps": 10, "surrogate_steps": 2}


def _weights(x):
    return torch.linspace(-1, 1, x.numel()).view_as(x)


def test_same_seed_same_output_and_draws_differ(diffusion, images):
    a = DiffPure(diffusion, generator=0, **FAST)(images)
    b = DiffPure(diffusion, generator=0, **FAST)(images)
    assert torch.equal(a, b)
    purifier = DiffPure(diffusion, generator=0, **FAST)
    first, second = purifier(images), purifier(images)
    assert not torch.equal(first, second)
    assert torch.equal(purifier(images, generator=5), purifier(images, generator=5))
    assert a.min() >= 0 and a.max() <= 1 and a.shape == images.shape


@pytest.mark.parametrize("method", [DiffPure, GDMP, GNS])
def test_full_gradient_equals_autograd_through_the_plain_chain(diffusion, images, method):
    kwargs = (
        {"stages": [(6, 3), (12, 4)], "surrogate_stages": [(6, 1)]}
        if method is GNS
        else {"t_star": 12, "steps": 4, "surrogate_steps": 2}
    )
    if method is GDMP:
        kwargs.update(runs=2, guidance="mse", guidance_scale=50.0)
    purifier = method(diffusion, gradient="full", **kwargs)
    x = images.clone().requires_grad_(True)
    out = purifier(x, generator=11)
    (out * _weights(out)).sum().backward()

    x_ref = images.clone().requires_grad_(True)
    streams = purifier.streams(x_ref, 11)
    levels = purifier.levels(x_ref, streams)
    ref = purifier.purify(x_ref, levels, purifier.stages, streams, checkpoint=False)
    (ref * _weights(ref)).sum().backward()
    assert torch.allclose(out, ref)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)
    assert x.grad.abs().sum() > 0


def test_bpda_gradient_is_the_identity(diffusion, images):
    purifier = DiffPure(diffusion, gradient="bpda", generator=0, **FAST)
    x = images.clone().requires_grad_(True)
    out = purifier(x)
    w = _weights(out)
    (out * w).sum().backward()
    assert torch.equal(x.grad, w)
    with torch.no_grad():
        assert torch.allclose(out, DiffPure(diffusion, generator=0, **FAST)(images))


def test_surrogate_runs_only_when_a_gradient_is_requested(counted, images):
    purifier = DiffPure(counted, gradient="surrogate", t_star=20, steps=10, surrogate_steps=2)
    net = counted.eps_net
    with torch.no_grad():
        purifier(images)
    assert net.rows == 6 * 10
    net.rows = 0
    purifier(images)
    assert net.rows == 6 * 10
    net.rows = 0
    x = images.clone().requires_grad_(True)
    purifier(x).sum().backward()
    assert net.rows == 6 * 2 + 6 * 2
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_full_mode_without_gradient_request_runs_the_real_chain(counted, images):
    purifier = DiffPure(counted, gradient="full", t_star=20, steps=10)
    purifier(images.clone().requires_grad_(False))
    assert counted.eps_net.rows == 6 * 10


def test_per_sample_levels_drive_the_chain(counted, diffusion, stats, images):
    eps_norm = EPSNorm(counted, num_levels=5)
    from art_ssni import ReferenceStats

    stats = ReferenceStats(stats.norms, counted.fingerprint(), stats.schedule, 5, (3, 8, 8))
    policy = SSNISigmoid(eps_norm, stats, t_star=30, bias=5, tau=max(stats.std, 1e-3))
    purifier = DiffPure(counted, noise=policy, t_star=30, steps=10)
    g = torch.Generator().manual_seed(0)
    levels = purifier.levels(images, g)
    counted.eps_net.rows = 0
    with torch.no_grad():
        purifier.purify(images, levels, purifier.stages, g)
    assert counted.eps_net.rows == sum(min(10, t) for t in levels.tolist())


def test_level_zero_leaves_a_sample_untouched(diffusion, images):
    class Mixed:
        t_star = 20

        def __call__(self, x, generator=None):
            return torch.tensor([0, 20, 0, 20, 0, 20])

    out = DiffPure(diffusion, noise=Mixed(), generator=0, **FAST)(images)
    assert torch.allclose(out[0::2], images[0::2], atol=1e-6)
    assert not torch.allclose(out[1::2], images[1::2], atol=1e-3)


def test_gns_stage_levels_scale_with_the_policy_level(diffusion):
    purifier = GNS(diffusion)
    assert purifier.t_star == 125
    stages = purifier.stage_levels(torch.tensor([125, 0, 250, 60]))
    assert [s.tolist() for s in stages] == [
        [30, 0, 60, 14],
        [30, 0, 60, 14],
        [30, 0, 60, 14],
        [30, 0, 60, 14],
        [50, 0, 100, 24],
        [50, 0, 100, 24],
        [125, 0, 250, 60],
        [125, 0, 250, 60],
    ]
    assert purifier.votes == 10


def test_paper_defaults(diffusion):
    d = DiffPure(diffusion)
    assert d.stages == ((100, 100),) and d.surrogate_stages == ((100, 20),)
    g = GDMP(diffusion)
    assert g.stages == ((36, 36),) * 4 and g.guidance == "none"
    n = GNS(diffusion)
    assert [t for t, _ in n.stages] == [30, 30, 30, 30, 50, 50, 125, 125]
    assert n.surrogate_stages == ((30, 1), (50, 1), (125, 5))


@pytest.mark.parametrize("distance", ["mse", "ssim"])
def test_gdmp_guidance_pulls_toward_the_input_under_no_grad(diffusion, images, distance):
    kwargs = {"t_star": 60, "steps": 20, "runs": 1, "clip_denoised": False}
    with torch.no_grad():
        plain = GDMP(diffusion, generator=3, **kwargs)(images)
        guided = GDMP(
            diffusion,
            guidance=distance,
            guidance_scale=2000.0 if distance == "mse" else 50.0,
            generator=3,
            **kwargs,
        )(images)
    if distance == "mse":
        assert (guided - images).pow(2).mean() < (plain - images).pow(2).mean()
    else:
        assert ssim(guided, images).mean() > ssim(plain, images).mean()


def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    assert (ssim(x, torch.rand(2, 3, 16, 16)) < 0.5).all()


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.full((2, 3, 8, 8), float("nan")), "NaN"),
        (torch.full((2, 3, 8, 8), float("inf")), "Inf"),
        (torch.full((2, 3, 8, 8), 2.0), r"\[0, 1\]"),
        (torch.full((2, 3, 8, 8), -0.5), r"\[0, 1\]"),
        (torch.rand(3, 8, 8), "4-D"),
        (torch.rand(2, 1, 8, 8), "channels"),
        (torch.rand(2, 3, 16, 16), "spatial size"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "floating-point"),
        (torch.rand(0, 3, 8, 8), "empty batch"),
    ],
)
def test_bad_input_raises_a_clear_value_error(diffusion, bad, message):
    with pytest.raises(ValueError, match=message):
        DiffPure(diffusion, **FAST)(bad)


def test_bad_parameters(diffusion):
    with pytest.raises(ValueError, match="gradient"):
        DiffPure(diffusion, gradient="exact")
    with pytest.raises(ValueError, match="guidance"):
        GDMP(diffusion, guidance="lpips")
    with pytest.raises(ValueError, match="t_star"):
        DiffPure(diffusion, t_star=2000)
    with pytest.raises(ValueError, match="steps"):
        DiffPure(diffusion, steps=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        DiffPure(diffusion)(None)


class _Levels:
    """A noise policy that returns fixed per-sample levels."""

    def __init__(self, levels, t_star):
        self.values, self.t_star = torch.tensor(levels), t_star

    def __call__(self, x, generator=None):
        return self.values


def _every_method(model, noise):
    from art_ssni import DAC, MANIPure

    from tiny import half_mask

    chain = {"t_star": 20, "steps": 6, "surrogate_steps": 2, "noise": noise}
    return {
        "diffpure": DiffPure(model, **chain),
        "diffpure-ddim": DiffPure(model, sampler="ddim", **chain),
        "diffpure-sde": DiffPure(model, sampler="sde", **chain),
        "gdmp": GDMP(model, runs=2, guidance="mse", guidance_scale=10.0, **chain),
        "gns": GNS(model, stages=[(10, 3), (20, 5)], surrogate_stages=[(20, 2)], noise=noise),
        "dac": DAC(model, mask=half_mask, t_large=20, t_small=8, stride=3, noise=noise),
        "dac-ddim": DAC(model, mask=half_mask, t_large=20, t_small=8, sampler="ddim", noise=noise),
        "mani-pure": MANIPure(model, radius=2.0, **chain),
    }


@pytest.mark.parametrize("stages", ["real", "surrogate"])
def test_rows_equal_a_counted_run_for_every_method(counted, images, stages):
    levels = [0, 20, 7, 13, 1, 20]
    for name, purifier in _every_method(counted, _Levels(levels, 20)).items():
        chosen = purifier.stages if stages == "real" else purifier.surrogate_stages
        counted.eps_net.rows = 0
        with torch.no_grad():
            purifier.purify(images, torch.tensor(levels), chosen, torch.Generator().manual_seed(0))
        assert purifier.rows(torch.tensor(levels), chosen) == counted.eps_net.rows, name
        assert counted.eps_net.rows > 0, name
    diffpure = DiffPure(counted, t_star=20, steps=6)
    assert diffpure.rows(torch.tensor(levels)) == sum(min(6, t) for t in levels)
    gns = GNS(counted, stages=[(10, 3), (20, 5)], surrogate_stages=[(20, 2)])
    # the stage at level 10 runs at round(t_i / 2): 0, 10, 4, 7, 1, 10
    assert gns.rows(torch.tensor(levels)) == sum(min(3, (t + 1) // 2) + min(5, t) for t in levels)


class _RandomLevels:
    """A stochastic noise policy: each level drawn from the sample's own stream."""

    t_star = 20

    def __call__(self, x, generator):
        return (generator.rand((), device=x.device) * 41).long()


@pytest.mark.parametrize("gradient", ["full", "surrogate", "bpda"])
def test_forward_with_levels_is_forward_plus_the_levels_of_that_pass(diffusion, images, gradient):
    purifier = DiffPure(
        diffusion, noise=_RandomLevels(), t_star=20, steps=4, surrogate_steps=2, gradient=gradient
    )
    weights = _weights(images)
    for grad in (False, True):
        x = images.clone().requires_grad_(grad)
        out, levels = purifier.forward_with_levels(x, generator=4)
        x_ref = images.clone().requires_grad_(grad)
        ref = purifier(x_ref, generator=4)
        assert torch.equal(out, ref)
        expected = (SampleStreams.for_call(4, 6).rand((), device="cpu") * 41).long()
        assert levels.dtype == torch.int64 and torch.equal(levels, expected)
        if grad:
            (out * weights).sum().backward()
            (ref * weights).sum().backward()
            assert torch.equal(x.grad, x_ref.grad)
    purifier.generator = torch.Generator().manual_seed(9)
    _, first = purifier.forward_with_levels(images)
    _, second = purifier.forward_with_levels(images)
    assert not torch.equal(first, second)  # each pass reports its own draw


def test_stage_is_its_pair_when_plain_and_validates():
    from art_ssni.diffusion import StepHooks
    from art_ssni.purification import Stage

    plain = Stage(30, steps=10)
    assert plain == (30, 10) and tuple(plain) == (30, 10) and hash(plain) == hash((30, 10))
    assert plain.plain and repr(plain) == "Stage(30, steps=10)"
    strided = Stage(30, stride=4, end=10, renoise=False)
    assert strided != (30, None) and not strided.plain
    assert repr(strided) == "Stage(30, stride=4, end=10, renoise=False)"
    assert Stage(30, steps=10, hooks=StepHooks(eta=0.0)) != (30, 10)
    assert Stage(30, stride=4, end=10) == Stage(30, stride=4, end=10)
    assert strided.counts(torch.tensor([30, 15, 0]), torch.tensor([10, 5, 0])).tolist() == [5, 3, 0]
    for kwargs, message in [
        ({"level": 0, "steps": 1}, "stage level"),
        ({"level": 5}, "exactly one of steps and stride"),
        ({"level": 5, "steps": 2, "stride": 2}, "exactly one of steps and stride"),
        ({"level": 5, "steps": 0}, "stage steps"),
        ({"level": 5, "stride": 2, "end": 5}, "stage end"),
    ]:
        with pytest.raises(ValueError, match=message):
            Stage(**kwargs)


def test_stage_levels_and_ends_round_half_up(diffusion):
    from art_ssni.purification import Purifier, Stage

    purifier = Purifier(
        diffusion, t_star=40, stages=[Stage(40, stride=3, end=10), (20, 5)],
        surrogate_stages=[(40, 1)],
    )  # fmt: skip
    levels = torch.tensor([40, 6, 2, 0, 80])
    assert [s.tolist() for s in purifier.stage_levels(levels)] == [
        [40, 6, 2, 0, 80],
        [20, 3, 1, 0, 40],
    ]
    assert [e.tolist() for e in purifier.stage_ends(levels)] == [
        [10, 2, 1, 0, 20],  # round(t / 4), half up: 1.5 -> 2, 0.5 -> 1
        [0, 0, 0, 0, 0],
    ]


def test_the_sde_sampler_refuses_settings_naming_the_method_and_why(diffusion):
    with pytest.raises(ValueError, match=r"DiffPure cannot use the 'sde' sampler: eta sets"):
        DiffPure(diffusion, sampler="sde", eta=0.5)
    with pytest.raises(ValueError, match=r"GNS cannot use the 'sde' sampler: clip_denoised"):
        GNS(diffusion, sampler="sde", clip_denoised=True)
    with pytest.raises(ValueError, match=r"GDMP cannot use the 'sde' sampler with guidance"):
        GDMP(diffusion, sampler="sde", guidance="ssim")
    assert DiffPure(diffusion, sampler="sde").step_hooks is None
