"""The heterogeneous-noise purifiers DAC and MANI-Pure (art_ssni.purification.heterogeneous):
each against a hand loop or closed form of its published steps, its rows, gradient modes,
seeding, dtype, settings and refusals."""

from __future__ import annotations

import math

import pytest
import torch

from art_ssni import DAC, AttentionMask, DiffusionModel, EPSNorm, MANIPure, SpectralNoise
from art_ssni._rng import SampleStreams
from art_ssni.diffusion import VPSchedule
from art_ssni.noise import SSNILinear
from art_ssni.purification import phase_projection
from art_ssni.purification.heterogeneous import low_frequency_disk

from tiny import GaussianOracle, Probe, RowCounter, TinyEpsNet, half_mask, saved_bytes

# --- DAC ---------------------------------------------------------------------------------


def _reference_dac(model, x, mask, seed, *, t_large, t_small, stride, resample, eta=1.0):
    """Independent hand loop of DAC at one level for the whole batch, same draw order;
    ``eta`` is the second stage's (1: DDPM, the published DAC; 0: DDIM). Each draw is the next
    one of every sample's own stream (keyed by position)."""
    own = SampleStreams.for_call(seed, x.shape[0])
    draw = lambda: own.randn(x.shape[1:], device="cpu")  # noqa: E731
    ab = lambda t: model.schedule.abar(torch.tensor(t))  # noqa: E731
    n = x.shape[0]
    x = 2 * x - 1
    cur = ab(t_large).sqrt() * x + (1 - ab(t_large)).sqrt() * draw()
    grid1 = list(range(t_large, t_small - 1, -stride))
    for t, s in zip(grid1[:-1], grid1[1:]):
        draw()  # the driver's step noise (scale 0 here)
        fresh, resampling = draw(), draw()
        cur = mask * cur + (1 - mask) * (ab(t).sqrt() * x + (1 - ab(t)).sqrt() * fresh)
        up = t + resample
        ratio = ab(up) / ab(t)
        cur = ratio.sqrt() * cur + (1 - ratio).sqrt() * resampling
        eps = model.eps_net(cur, torch.full((n,), up - 1))
        x0 = (cur - (1 - ab(up)).sqrt() * eps) / ab(up).sqrt()
        cur = ab(s).sqrt() * x0 + (1 - ab(s)).sqrt() * eps
    grid2 = list(range(t_small, -1, -stride))
    for t, s in zip(grid2[:-1], grid2[1:]):
        z = draw()
        eps = model.eps_net(cur, torch.full((n,), t - 1))
        x0 = (cur - (1 - ab(t)).sqrt() * eps) / ab(t).sqrt()
        var = eta**2 * (1 - ab(s)) / (1 - ab(t)) * (1 - ab(t) / ab(s))
        mean = ab(s).sqrt() * x0 + (1 - ab(s) - var).sqrt() * eps
        cur = mean + var.sqrt() * z
    return ((cur + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("sampler, eta", [("ddpm", 1.0), ("ddim", 0.0)])
def test_dac_equals_a_hand_loop_of_its_published_steps(diffusion, images, sampler, eta):
    """The default sampler is the published DAC; "ddim" changes only the second stage."""
    kw = {"t_large": 20, "t_small": 10, "stride": 2, "resample": 3}
    purifier = DAC(diffusion, mask=half_mask, sampler=sampler, **kw)
    with torch.no_grad():
        got = purifier(images, generator=5)
        expected = _reference_dac(diffusion, images, half_mask(images), 5, eta=eta, **kw)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dac_is_two_engine_stages(diffusion):
    from art_ssni.purification.heterogeneous import keep_attended

    dac = DAC(diffusion, mask=half_mask, t_large=40, t_small=20, stride=4, surrogate_stride=20)
    first, second = dac.stages
    assert (first.level, first.stride, first.end, first.renoise) == (40, 4, 20, True)
    assert (first.hooks.eta, first.hooks.known, first.hooks.resample) == (0.0, keep_attended, 3)
    assert (second.level, second.stride, second.end, second.renoise) == (20, 4, 0, False)
    assert second.hooks is None and dac.step_hooks.eta == 1.0  # the purifier's DDPM steps
    assert [s.stride for s in dac.surrogate_stages] == [20, 20]
    assert "purify" not in vars(DAC) and "purify" not in vars(MANIPure)  # the engine's edges
    levels = torch.tensor([40, 0, 7, 30])
    assert [e.tolist() for e in dac.stage_ends(levels)] == [[20, 0, 4, 15], [0, 0, 0, 0]]
    assert [s.tolist() for s in dac.stage_levels(levels)] == [[40, 0, 7, 30], [20, 0, 4, 15]]


def test_dac_level_zero_and_sde_second_stage(counted, images):
    class Mixed:
        t_star = 20

        def __call__(self, x, generator=None):
            return torch.tensor([0, 20, 0, 9, 1, 20])

    purifier = DAC(counted, mask=half_mask, noise=Mixed(), t_large=20, t_small=10, sampler="sde")
    with torch.no_grad():
        out, levels = purifier.forward_with_levels(images, generator=0)
    assert levels.tolist() == [0, 20, 0, 9, 1, 20]
    torch.testing.assert_close(out[[0, 2]], images[[0, 2]], rtol=0, atol=1e-6)
    assert not torch.allclose(out[1], images[1], atol=1e-3)
    # stage 1: ceil((t - round(t / 2)) / 2) steps, stage 2: ceil(round(t / 2) / 2) steps
    assert counted.eps_net.rows == purifier.rows(levels) == 0 + 10 + 0 + 5 + 1 + 10


def test_dac_on_a_gaussian_oracle_keeps_unmasked_pixels_and_moves_masked_ones():
    """Pixels are independent under the oracle: masked pixels are denoised from t_large = 200
    (the posterior mean pulls them far toward the data mean), unmasked ones are re-noised from
    the input at every stage-1 level down to t_small = 20 and stay close to it."""
    schedule = VPSchedule(continuous=True)
    oracle = DiffusionModel(
        GaussianOracle(0.0, 0.5, schedule), schedule, time_label=lambda t: t.double() * 0.999
    )
    x = torch.full((8, 1, 16, 16), 0.9)
    with torch.no_grad():
        out = DAC(oracle, mask=half_mask, t_small=20)(x, generator=0)
    moved, kept = (out - x)[..., :8], (out - x)[..., 8:]
    a = math.exp(-(0.1 * 0.2 + 0.5 * 19.9 * 0.04))  # abar at level 200
    posterior_mean = (a / (1 - a)) / (4 + a / (1 - a)) * 0.8  # [-1, 1] scale, data mean 0
    assert float(moved.mean()) < (posterior_mean - 0.8) / 2 / 2  # at least half of the pull
    assert abs(float(kept.mean())) < 0.03 and float(kept.std()) < 0.1
    assert float(moved.abs().mean()) > 4 * float(kept.abs().mean())


def test_dac_rows_per_image_on_the_defaults():
    counted = DiffusionModel(RowCounter(TinyEpsNet()), image_shape=(3, 8, 8))
    purifier = DAC(counted, mask=half_mask)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    levels = torch.full((2,), 200)
    with torch.no_grad():
        purifier(x, generator=0)
        assert counted.eps_net.rows == 2 * 100 == purifier.rows(levels)
        assert counted.eps_net.calls == 100
        counted.eps_net.rows = 0
        purifier.purify(x, purifier.levels(x), purifier.surrogate_stages, None)
    assert counted.eps_net.rows == 2 * 2 == purifier.rows(levels, purifier.surrogate_stages)


def test_dac_ssni_levels_set_t_large_and_scale_t_small(counted, stats, images):
    from art_ssni import ReferenceStats

    eps_norm = EPSNorm(counted, num_levels=5)
    stats = ReferenceStats(stats.norms, counted.fingerprint(), stats.schedule, 5, (3, 8, 8))
    policy = SSNILinear(eps_norm, stats, t_star=40, bias=0)
    purifier = DAC(counted, mask=half_mask, noise=policy, t_large=40, t_small=20, stride=3)
    g = torch.Generator().manual_seed(3)
    clean = torch.rand(6, 3, 8, 8, generator=g) * 0.5 + 0.25
    perturbed = (clean + 0.4 * torch.randn(clean.shape, generator=g).sign()).clamp(0, 1)
    levels_clean = purifier.levels(clean, 0)
    levels_perturbed = purifier.levels(perturbed, 0)
    assert bool((levels_perturbed > levels_clean).all())
    counted.eps_net.rows = 0
    with torch.no_grad():
        purifier.purify(perturbed, levels_perturbed, purifier.stages, g)
    low = [(2 * t * 20 + 40) // 80 for t in levels_perturbed.tolist()]
    expected = sum(
        math.ceil((t - s) / 3) + math.ceil(s / 3) for t, s in zip(levels_perturbed.tolist(), low)
    )
    assert counted.eps_net.rows == expected == purifier.rows(levels_perturbed)


@pytest.mark.parametrize("method", ["dac", "mani"])
def test_full_gradient_equals_autograd_and_bpda_is_identity(diffusion, images, method):
    def build(gradient):
        if method == "dac":
            return DAC(diffusion, mask=half_mask, t_large=12, t_small=6, gradient=gradient)
        return MANIPure(diffusion, t_star=12, steps=4, radius=2, gradient=gradient)

    purifier = build("full")
    x = images.clone().requires_grad_(True)
    out = purifier(x, generator=3)
    w = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * w).sum().backward()
    x_ref = images.clone().requires_grad_(True)
    streams = purifier.streams(x_ref, 3)
    ref = purifier.purify(x_ref, purifier.levels(x_ref, streams), purifier.stages, streams)
    (ref * w).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-6, rtol=1e-5)
    assert x.grad.abs().sum() > 0
    x_b = images.clone().requires_grad_(True)
    (build("bpda")(x_b, generator=3) * w).sum().backward()
    assert torch.equal(x_b.grad, w)


@pytest.mark.parametrize("method", ["dac", "mani"])
def test_same_seed_same_output(diffusion, images, method):
    purifier = (
        DAC(diffusion, mask=half_mask, t_large=10, t_small=4)
        if method == "dac"
        else MANIPure(diffusion, t_star=10, steps=5)
    )
    with torch.no_grad():
        a, b, c = purifier(images, generator=1), purifier(images, generator=1), purifier(images, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("method", ["dac", "mani-pure"])
def test_output_keeps_the_callers_dtype(diffusion, images, method):
    purifier = (
        DAC(diffusion, mask=half_mask, t_large=10, t_small=4)
        if method == "dac"
        else MANIPure(diffusion, t_star=10, steps=5)
    )
    with torch.no_grad():
        out64 = purifier(images.double(), generator=1)
        out32 = purifier(images, generator=1)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32)


def test_dac_bad_inputs(diffusion, images):
    for kwargs, message in [
        ({"mask": None}, "needs mask= .* or the classifier"),
        ({"mask": 3}, "mask must be a callable"),
        ({"t_small": 200}, "t_small < t_large"),
        ({"stride": 0}, "stride"),
        ({"resample": -1}, "resample"),
        ({"votes": 0}, "votes"),
        ({"gradient": "exact"}, "gradient"),
        ({"classifier": Probe()}, "either mask= or classifier=.*got mask= and classifier"),
        ({"threshold": 0.5}, "either mask= or classifier=.*got mask= and threshold"),
        ({"sampler": "heun"}, "sampler"),
    ]:
        with pytest.raises(ValueError, match=message):
            DAC(diffusion, **{"mask": half_mask, **kwargs})
    with pytest.raises(ValueError, match="mask_layers"):
        DAC(diffusion, classifier=Probe())
    with pytest.raises(ValueError, match="shape"):
        DAC(diffusion, mask=lambda x: torch.ones(x.shape[0], 3, 8, 8), t_large=4, t_small=2)(images)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DAC(diffusion, mask=lambda x: 2 * half_mask(x), t_large=4, t_small=2)(images)


def test_dac_builds_its_attention_mask_from_plain_settings(diffusion, images):
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    net = Probe()
    built = DAC(
        diffusion, classifier=net, mask_layers=("first", "second"), threshold=0.6,
        mask_mean=mean, mask_std=std, t_large=10, t_small=4,
    )  # fmt: skip
    given = AttentionMask(net, ["first", "second"], threshold=0.6, mean=mean, std=std)
    assert isinstance(built.mask, AttentionMask) and built.mask.layers == ("first", "second")
    assert torch.equal(built.mask(images), given(images))
    explicit = DAC(diffusion, mask=given, t_large=10, t_small=4)
    with torch.no_grad():
        assert torch.equal(built(images, generator=2), explicit(images, generator=2))
    top = DAC(diffusion, classifier=net, mask_layers=("first",), top_fraction=0.25)
    assert top.mask.top_fraction == 0.25 and top.mask.threshold == 0.9


# --- MANI-Pure ---------------------------------------------------------------------------


def test_phase_projection_moves_no_phase_beyond_delta():
    g = torch.Generator().manual_seed(0)
    x0, ref_image = torch.randn(3, 2, 16, 16, generator=g), torch.randn(3, 2, 16, 16, generator=g)
    reference = torch.fft.fft2(ref_image)
    disk = low_frequency_disk(16, 16, 4.0)
    delta = 0.3
    out = phase_projection(x0, reference, disk, delta)
    spec_in = torch.fft.fft2(x0).flatten(-2)
    spec_out = torch.fft.fft2(out).flatten(-2)
    ref = reference.flatten(-2)
    inside = torch.zeros(256, dtype=torch.bool)
    inside[disk] = True
    offset_in = torch.angle(spec_in * ref.conj())[..., inside]
    offset_out = torch.angle(spec_out * ref.conj())[..., inside]
    assert float(offset_out.abs().max()) <= delta + 1e-4
    within = offset_in.abs() < delta - 1e-3
    assert bool(within.any()) and bool((~within).any())
    torch.testing.assert_close(offset_out[within], offset_in[within], atol=1e-4, rtol=0)
    torch.testing.assert_close(spec_out[..., inside].abs(), ref[..., inside].abs())
    torch.testing.assert_close(spec_out[..., ~inside], spec_in[..., ~inside], atol=1e-4, rtol=0)
    assert disk.numel() == int(
        (
            (torch.fft.fftfreq(16) * 16)[:, None] ** 2 + (torch.fft.fftfreq(16) * 16)[None] ** 2
            <= 16
        ).sum()
    )
    whole = low_frequency_disk(16, 16, 100.0)
    torch.testing.assert_close(
        phase_projection(x0, reference, whole, 0.0), ref_image, atol=1e-5, rtol=0
    )


def test_mani_pure_noising_and_rows(images):
    counted = DiffusionModel(RowCounter(TinyEpsNet()), image_shape=(3, 8, 8))
    spectral = SpectralNoise(bands=3)
    purifier = MANIPure(counted, t_star=20, steps=10, spectral=spectral)
    x = 2 * images - 1
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    levels = torch.tensor([20, 20, 5, 0, 20, 1])
    a = counted.schedule.abar(levels).view(-1, 1, 1, 1)
    expected = a.sqrt() * x + (1 - a).sqrt() * spectral(x, z)
    torch.testing.assert_close(purifier.noised(x, levels, z), expected)
    with torch.no_grad():
        purifier(images, generator=0)
    assert counted.eps_net.rows == images.shape[0] * (10 + 1)  # the chain and the reference
    assert purifier.rows(torch.full((6,), 20)) == counted.eps_net.rows
    assert purifier.rows(levels) == 10 + 10 + 5 + 0 + 10 + 1 + 6  # a reference row for each


def test_mani_pure_ssni_gives_perturbed_inputs_higher_levels(counted, stats):
    from art_ssni import ReferenceStats

    eps_norm = EPSNorm(counted, num_levels=5)
    stats = ReferenceStats(stats.norms, counted.fingerprint(), stats.schedule, 5, (3, 8, 8))
    purifier = MANIPure(counted, noise=SSNILinear(eps_norm, stats, t_star=30), t_star=30, steps=6)
    g = torch.Generator().manual_seed(3)
    clean = torch.rand(6, 3, 8, 8, generator=g) * 0.5 + 0.25
    perturbed = (clean + 0.4 * torch.randn(clean.shape, generator=g).sign()).clamp(0, 1)
    levels_clean, levels_perturbed = purifier.levels(clean, 0), purifier.levels(perturbed, 0)
    assert bool((levels_perturbed > levels_clean).all())
    counted.eps_net.rows = 0
    with torch.no_grad():
        purifier.purify(perturbed, levels_perturbed, purifier.stages, g)
    assert counted.eps_net.rows == sum(min(6, t) + 1 for t in levels_perturbed.tolist())
    assert purifier.rows(levels_perturbed) == counted.eps_net.rows


def test_mani_pure_builds_its_spectral_noise_from_plain_settings(diffusion, images):
    built = MANIPure(diffusion, t_star=10, steps=5, bands=3, gamma=1.2, spectral_mode="spatial")
    assert (built.spectral.bands, built.spectral.gamma, built.spectral.mode) == (3, 1.2, "spatial")
    given = MANIPure(
        diffusion, t_star=10, steps=5, spectral=SpectralNoise(bands=3, gamma=1.2, mode="spatial")
    )
    with torch.no_grad():
        assert torch.equal(built(images, generator=4), given(images, generator=4))
    default = MANIPure(diffusion).spectral
    assert (default.bands, default.gamma, default.mode) == (8, 1.8, "shaped")
    with pytest.raises(ValueError, match="either spectral= or bands"):
        MANIPure(diffusion, spectral=SpectralNoise(), bands=4)


@pytest.mark.parametrize("sampler, eta", [("ddpm", 1.0), ("ddim", 0.0)])
def test_mani_pure_sampler_sets_the_chains_eta(diffusion, images, sampler, eta):
    """sampler="ddim" is the same chain with eta = 0: equal to eta=0.0 given explicitly."""
    purifier = MANIPure(diffusion, t_star=10, steps=5, radius=2, sampler=sampler)
    assert purifier.step_hooks.eta == eta and purifier.sampler == sampler
    explicit = MANIPure(diffusion, t_star=10, steps=5, radius=2, eta=eta)
    with torch.no_grad():
        assert torch.equal(purifier(images, generator=3), explicit(images, generator=3))


def test_the_sde_sampler_refuses_hooks_naming_the_method():
    model = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"MANIPure cannot use the 'sde' sampler: its x0_hat"):
        MANIPure(model, sampler="sde")
    with pytest.raises(ValueError, match=r"sampler: clip_denoised clamps .*; its x0_hat"):
        MANIPure(model, sampler="sde", clip_denoised=True)
    assert DAC(model, mask=half_mask, sampler="sde").step_hooks is None  # a plain second stage


def test_mani_pure_bad_inputs(diffusion):
    for kwargs, message in [
        ({"radius": -1.0}, "radius"),
        ({"radius": "2"}, "radius"),
        ({"radius": math.inf}, "radius"),
        ({"delta": 4.0}, "delta"),
        ({"delta": math.nan}, "delta"),
        ({"reference_level": 0}, "reference_level"),
        ({"reference_level": 5000}, "reference_level"),
        ({"spectral": 3}, "spectral"),
        ({"spectral_mode": "pixel"}, "mode"),
        ({"bands": 0}, "bands"),
        ({"t_star": 0}, "t_star"),
    ]:
        with pytest.raises(ValueError, match=message):
            MANIPure(diffusion, **kwargs)


@pytest.mark.parametrize("method", ["dac", "mani"])
def test_full_gradient_memory_stays_flat_in_the_steps(diffusion, images, method):
    """The known-region replacement, the resampling and the x0 correction run inside the
    checkpointed step, so each extra step keeps at most one state and its index vectors
    (the same bound as DiffPure's, tests/purification/test_reference_fidelity.py)."""

    def build(steps):
        if method == "dac":
            return DAC(diffusion, mask=half_mask, t_large=40, t_small=20, stride=40 // steps)
        return MANIPure(diffusion, t_star=40, steps=steps, radius=2)

    state = images.numel() * images.element_size()
    indices = 3 * images.shape[0] * 8
    short, long = saved_bytes(build(4), images, 0), saved_bytes(build(40), images, 0)
    assert 0 < (long - short) / 36 <= state + indices
