import pytest
import torch

from art_ssni import GDMP, GNS, DiffPure, EPSNorm, SSNISigmoid
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
    g = torch.Generator().manual_seed(11)
    levels = purifier.levels(x_ref, g)
    ref = purifier.purify(x_ref, levels, purifier.stages, g, checkpoint=False)
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
