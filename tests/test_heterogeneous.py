"""Heterogeneous noise: the sampler's new mechanisms, AttentionMask, SpectralNoise, DAC and
MANI-Pure."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from art_ssni import DAC, AttentionMask, DiffusionModel, EPSNorm, MANIPure, SpectralNoise
from art_ssni.diffusion import VPSchedule, forward_jump, run_chain, stride_table
from art_ssni.noise import ATTENTION_LAYERS, SSNILinear
from art_ssni.noise.spectral import radial_bands
from art_ssni.purification import phase_projection
from art_ssni.purification.heterogeneous import low_frequency_disk

from test_fidelity import GaussianOracle
from tiny import RowCounter, TinyEpsNet


def half_mask(x: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(x.shape[0], 1, *x.shape[-2:])
    mask[..., : x.shape[-1] // 2] = 1
    return mask


# --- sampler mechanisms --------------------------------------------------------------------


def test_stride_table_values():
    table = stride_table(torch.tensor([200, 150, 0, 7, 9]), torch.tensor([100, 75, 0, 7, 0]), 2)
    assert table.shape == (5, 51)
    assert table[0].tolist() == list(range(200, 99, -2))
    row = table[1].tolist()
    assert row[0] == 150 and row[38:] == [75] * 13  # ceil(75 / 2) = 38 steps, then repeats
    assert all(a > b for a, b in zip(row[:38], row[1:39]))
    assert table[2].tolist() == [0] * 51 and table[3].tolist() == [7] * 51
    assert table[4, :6].tolist() == [9, 7, 5, 4, 2, 0]  # 9 in ceil(9 / 2) = 5 steps, half up
    one = stride_table(torch.tensor([150]), torch.tensor([75]), 100)
    assert one.tolist() == [[150, 75]]  # a stride larger than the span: one step
    with pytest.raises(ValueError, match="stride"):
        stride_table(torch.tensor([4]), torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="low <= high"):
        stride_table(torch.tensor([4]), torch.tensor([5]), 1)


def test_forward_jump_composes_single_ddpm_transitions():
    model = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8))
    betas = 1 - model.schedule.alphas_cumprod[1:] / model.schedule.alphas_cumprod[:-1]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t, u = torch.tensor([40, 97]), torch.tensor([3, 3])
    got = forward_jump(model, x, t, u, torch.zeros_like(x))
    for i, level in enumerate(t.tolist()):
        keep = torch.prod(1 - betas[level : level + 3]).sqrt()
        torch.testing.assert_close(got[i], keep.float() * x[i])
    z = torch.ones_like(x)
    var = (forward_jump(model, x, t, u, z) - got)[:, 0, 0, 0] ** 2
    expected = 1 - torch.stack([torch.prod(1 - betas[s : s + 3]) for s in t.tolist()])
    torch.testing.assert_close(var, expected.float(), atol=1e-7, rtol=1e-5)


def test_run_chain_hands_hook_draws_and_aligned_per_sample_slices():
    seen = []

    def step(x, t, s, hook_noise, per_sample):
        seen.append((t.tolist(), len(hook_noise), per_sample["tag"].flatten().tolist()))
        assert all(n.shape == x.shape for n in hook_noise)
        return x + per_sample["tag"], torch.zeros(())

    table = stride_table(torch.tensor([4, 2, 3]), torch.tensor([0, 0, 0]), 1)
    tag = torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1, 1)
    out = run_chain(step, torch.zeros(3, 1, 2, 2), table, per_sample={"tag": tag}, hook_draws=2)
    assert seen == [
        ([4, 2, 3], 2, [10.0, 20.0, 30.0]),
        ([3, 1, 2], 2, [10.0, 20.0, 30.0]),
        ([2, 1], 2, [10.0, 30.0]),  # the running samples' own slices
        ([1], 2, [10.0]),
    ]
    assert out[:, 0, 0, 0].tolist() == [40.0, 40.0, 90.0]
    with pytest.raises(ValueError, match="hook_draws"):
        run_chain(step, torch.zeros(3, 1, 2, 2), table, hook_draws=-1)
    with pytest.raises(ValueError, match="per-sample tensor 'tag'"):
        run_chain(step, torch.zeros(3, 1, 2, 2), table, per_sample={"tag": tag[:2]})


def test_run_chain_draws_the_same_numbers_whichever_samples_run():
    """A sample's draws do not depend on which of its batch-mates still run."""

    def step(x, t, s, hook_noise, per_sample):
        return x + hook_noise[0], torch.ones(())

    x = torch.zeros(2, 1, 2, 2)
    both = stride_table(torch.tensor([3, 3]), torch.tensor([0, 0]), 1)
    mixed = stride_table(torch.tensor([3, 1]), torch.tensor([0, 0]), 1)
    a = run_chain(step, x, both, generator=torch.Generator().manual_seed(0), hook_draws=1)
    b = run_chain(step, x, mixed, generator=torch.Generator().manual_seed(0), hook_draws=1)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(2, 1, 2, 2, generator=g) for _ in range(2)]  # step 1: z, then hook draw
    torch.testing.assert_close(b[1], z[0][1] + z[1][1], rtol=0, atol=0)


def _reference_dac(model, x, mask, seed, *, t_large, t_small, stride, resample, eta=1.0):
    """Independent hand loop of DAC at one level for the whole batch, same draw order;
    ``eta`` is the second stage's (1: DDPM, the published DAC; 0: DDIM)."""
    g = torch.Generator().manual_seed(seed)
    ab = lambda t: model.schedule.abar(torch.tensor(t))  # noqa: E731
    n = x.shape[0]
    x = 2 * x - 1
    cur = ab(t_large).sqrt() * x + (1 - ab(t_large)).sqrt() * torch.randn(x.shape, generator=g)
    grid1 = list(range(t_large, t_small - 1, -stride))
    for t, s in zip(grid1[:-1], grid1[1:]):
        torch.randn(x.shape, generator=g)  # the driver's step noise (scale 0 here)
        fresh, resampling = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
        cur = mask * cur + (1 - mask) * (ab(t).sqrt() * x + (1 - ab(t)).sqrt() * fresh)
        up = t + resample
        ratio = ab(up) / ab(t)
        cur = ratio.sqrt() * cur + (1 - ratio).sqrt() * resampling
        eps = model.eps_net(cur, torch.full((n,), up - 1))
        x0 = (cur - (1 - ab(up)).sqrt() * eps) / ab(up).sqrt()
        cur = ab(s).sqrt() * x0 + (1 - ab(s)).sqrt() * eps
    grid2 = list(range(t_small, -1, -stride))
    for t, s in zip(grid2[:-1], grid2[1:]):
        z = torch.randn(x.shape, generator=g)
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


# --- DAC ---------------------------------------------------------------------------------


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
    g = torch.Generator().manual_seed(3)
    ref = purifier.purify(x_ref, purifier.levels(x_ref, g), purifier.stages, g)
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


# --- AttentionMask -----------------------------------------------------------------------


class Probe(nn.Module):
    """A classifier whose first block is the identity (its energy is sum_c x^2) and whose
    second block halves the resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Identity()
        self.second = nn.AvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
        self.head(torch.zeros(1, 3 * 4 * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.second(self.first(x)))


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
    return ((flat - lo) / (hi - lo)).view_as(m)


def test_attention_mask_values(images):
    net = Probe()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    mask = AttentionMask(net, ["first", "second"], threshold=0.6, mean=mean, std=std)
    z = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    first = _minmax(z.pow(2).sum(1, keepdim=True))
    second = _minmax(
        F.interpolate(F.avg_pool2d(z, 2).pow(2).sum(1, keepdim=True), size=(8, 8), mode="bilinear")
    )
    expected = torch.maximum(first, second)
    torch.testing.assert_close(mask.saliency(images), expected)
    assert torch.equal(mask(images), (expected >= 0.6).float())
    assert 0 < float(mask(images).mean()) < 1


def test_top_fraction_is_exact_and_takes_the_highest_pixels(images):
    mask = AttentionMask(Probe(), ["first"], top_fraction=0.15)
    out = mask(images)
    assert out.sum((1, 2, 3)).tolist() == [round(0.15 * 64)] * images.shape[0]
    saliency = mask.saliency(images).flatten(1)
    chosen = out.flatten(1).bool()
    for i in range(images.shape[0]):
        assert float(saliency[i][chosen[i]].min()) >= float(saliency[i][~chosen[i]].max())


def test_hooks_are_removed_and_the_mode_restored(images):
    net = Probe().train()
    mask = AttentionMask(net, ["first", "second"])
    for _ in range(3):
        mask(images)
    assert not net.first._forward_hooks and not net.second._forward_hooks
    assert net.training
    with pytest.raises(RuntimeError):
        mask(images[:, :2])  # the classifier fails: hooks must still be gone
    assert not net.first._forward_hooks and not net.second._forward_hooks


def test_a_sample_mask_does_not_depend_on_its_batch(images):
    from art_ssni.models import SmallCNN

    net = SmallCNN()
    mask = AttentionMask(net, ATTENTION_LAYERS["digits"], top_fraction=0.25)
    x = images[:, :1]
    batched = mask(x)
    alone = torch.cat([mask(x[i : i + 1]) for i in range(x.shape[0])])
    assert torch.equal(batched, alone)


def test_constant_map_gives_a_finite_mask():
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Conv2d(3, 2, 1)
            nn.init.zeros_(self.block.weight)
            nn.init.ones_(self.block.bias)

        def forward(self, x):
            return self.block(x).mean((1, 2, 3))

    mask = AttentionMask(Flat(), ["block"], threshold=0.5)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(mask.saliency(x), torch.zeros(2, 1, 8, 8))
    assert torch.equal(mask(x), torch.zeros(2, 1, 8, 8))
    assert AttentionMask(Flat(), ["block"], top_fraction=0.5)(x).sum() == 64


def test_attention_mask_bad_inputs():
    net = Probe()
    for kwargs, message in [
        ({"layers": ["nope"]}, "no module named"),
        ({"layers": []}, "non-empty"),
        ({"layers": "first"}, "non-empty"),
        ({"threshold": 1.5}, "threshold"),
        ({"top_fraction": 0.0}, "top_fraction"),
        ({"mean": (0.5, 0.5, 0.5)}, "both mean and std"),
        ({"mean": (0.5,) * 3, "std": (0.0,) * 3}, "std must be positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            AttentionMask(net, **{"layers": ["first"], **kwargs})


# --- SpectralNoise -----------------------------------------------------------------------


def _smooth_images(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 16)
    base = ramp[None, :] * ramp[:, None]
    return (base + 0.02 * torch.randn(2, 3, 16, 16, generator=g)).clamp(0, 1)


def test_spectral_weights_are_inverse_band_magnitudes():
    x = _smooth_images()
    spectral = SpectralNoise(bands=4, gamma=1.8)
    weight = spectral.weights(x)
    band = radial_bands(16, 16, 4)
    amplitude = torch.fft.fft2(x.double()).abs()
    for b in range(4):
        where = band == b
        m = amplitude[..., where].mean(-1)
        expected = 1 / (m**1.8 + 1e-8)
        torch.testing.assert_close(
            weight[..., where], expected[..., None].expand_as(weight[..., where])
        )
    assert band[0, 0] == 0 and band[8, 8] == 3  # DC, then the corner frequency


def test_shaped_noise_has_unit_rms_and_more_power_where_the_spectrum_is_weak():
    x = _smooth_images()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    spectral = SpectralNoise(bands=4)
    out = spectral(x, z)
    torch.testing.assert_close(out.pow(2).mean((-2, -1)), torch.ones(2, 3))
    gain = torch.fft.fft2(out.double()) / torch.fft.fft2(z.double())
    weight = spectral.weights(x)
    ratio = gain.real / weight  # one constant per image and channel: the RMS scale
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio), rtol=1e-3, atol=0)
    torch.testing.assert_close(gain.imag, torch.zeros_like(gain.imag), atol=1e-4, rtol=0)
    band = radial_bands(16, 16, 4)
    power = torch.fft.fft2(out).abs().pow(2)
    assert float(power[..., band == 3].mean()) > 100 * float(power[..., band == 0].mean())


def test_spatial_mode_is_a_pixel_map_times_z():
    x = _smooth_images()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    spectral = SpectralNoise(mode="spatial")
    out = spectral(x, z)
    torch.testing.assert_close(out.pow(2).mean((-2, -1)), torch.ones(2, 3))
    pixel_map = torch.fft.ifft2(spectral.weights(x) * torch.fft.fft2(x.double())).abs()
    ratio = out.double() / (pixel_map * z.double())
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio), rtol=1e-3, atol=0)


def test_empty_bands_give_no_nan():
    x = torch.rand(2, 1, 2, 2)
    out = SpectralNoise(bands=8)(x, torch.randn(2, 1, 2, 2))
    assert bool(torch.isfinite(out).all())
    assert torch.bincount(radial_bands(2, 2, 8).flatten(), minlength=8).eq(0).sum() > 0


def test_spectral_bad_inputs():
    for kwargs, message in [
        ({"bands": 0}, "bands"),
        ({"gamma": -1.0}, "gamma"),
        ({"mode": "pixel"}, "mode"),
        ({"eps0": 0.0}, "eps0"),
    ]:
        with pytest.raises(ValueError, match=message):
            SpectralNoise(**kwargs)
    with pytest.raises(ValueError, match="shape"):
        SpectralNoise()(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 4))


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


# --- faces: ART and torchattacks ---------------------------------------------------------

SMALL_DEFENCES = {
    "dac": {"mask": half_mask, "t_large": 8, "t_small": 4, "surrogate_stride": 4},
    "mani": {"t_star": 8, "steps": 3, "surrogate_steps": 1, "radius": 2},
}


@pytest.mark.parametrize("method", ["dac", "mani"])
@pytest.mark.parametrize("gradient", ["full", "surrogate", "bpda"])
def test_art_loss_gradient_through_each_defence(diffusion, images, method, gradient):
    import numpy as np
    from art.estimators.classification import PyTorchClassifier

    from art_ssni.defences import DACPyTorch, MANIPurePyTorch

    from tiny import TinyClassifier

    cls = DACPyTorch if method == "dac" else MANIPurePyTorch
    kwargs = {"gradient": gradient, "generator": 0, "device_type": "cpu"}
    defence = cls(diffusion, **kwargs, **SMALL_DEFENCES[method])
    classifier = PyTorchClassifier(
        model=TinyClassifier(), loss=nn.CrossEntropyLoss(reduction="sum"), input_shape=(3, 8, 8),
        nb_classes=10, clip_values=(0, 1), preprocessing_defences=[defence], device_type="cpu",
    )  # fmt: skip
    y = np.eye(10, dtype=np.float32)[np.arange(6) % 10]
    grad = classifier.loss_gradient(images.numpy(), y)
    purifier = cls(diffusion, **kwargs, **SMALL_DEFENCES[method]).purifier
    x = images.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    if gradient == "bpda":
        with torch.no_grad():
            purified = purifier.purify(x, purifier.levels(x, g), purifier.stages, g)
        purified.requires_grad_(True)
        loss = F.cross_entropy(TinyClassifier()(purified), torch.arange(6) % 10, reduction="sum")
        expected = torch.autograd.grad(loss, purified)[0]
    else:
        stages = purifier.stages if gradient == "full" else purifier.surrogate_stages
        purified = purifier.purify(x, purifier.levels(x, g), stages, g)
        loss = F.cross_entropy(TinyClassifier()(purified), torch.arange(6) % 10, reduction="sum")
        expected = torch.autograd.grad(loss, x)[0]
    np.testing.assert_allclose(grad, expected.numpy(), atol=1e-5, rtol=1e-4)
    assert np.abs(grad).sum() > 0


@pytest.mark.parametrize("method", ["dac", "mani"])
def test_torchattacks_pgd_through_the_defended_classifier(diffusion, images, method):
    import torchattacks

    from art_ssni import DefendedClassifier

    from tiny import TinyClassifier

    purifier = (DAC if method == "dac" else MANIPure)(
        diffusion, gradient="surrogate", generator=0, **SMALL_DEFENCES[method]
    )
    model = DefendedClassifier(purifier, TinyClassifier())
    assert model.votes == (20 if method == "dac" else 1)
    attack = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=2, random_start=False)
    x_adv = attack(images, torch.arange(6) % 10)
    delta = (x_adv - images).abs()
    assert float(delta.max()) <= 8 / 255 + 1e-6 and float(delta.max()) > 0


# --- command line and presets ------------------------------------------------------------


@pytest.mark.parametrize("method", ["dac", "mani-pure"])
def test_command_line_runs_both_methods_on_the_embedded_default(tmp_path, method):
    import json

    from art_ssni.cli import main

    out = tmp_path / method
    args = ["evaluate", "--method", method, "--n-images", "2", "--batch-size", "2"]
    args += ["--iterations", "1", "--eot", "1", "--draws", "1", "--steps", "4"]
    args += ["--noise", "fixed", "--attack", "pgd-eot", "--no-progress", "--no-baseline"]
    args += ["--judge-draws", "0"]
    assert main([*args, "--out", str(out)]) == 0
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["method"] == ("DAC" if method == "dac" else "MANI-Pure") + " (t*=60)"


def test_embedded_and_preset_purifiers_carry_the_published_settings():
    from art_ssni.models.classifiers import NormalizedClassifier
    from art_ssni.pipeline import build_rows
    from art_ssni.presets import build_purifier, get_preset

    from tiny import plan

    base = ["evaluate", "--method", "dac", "--noise", "fixed", "--attack", "pgd-eot"]
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
    mani_args = [*base[:2], "mani-pure", *base[3:], "--steps", "20"]
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


def test_paper_commands_for_the_heterogeneous_methods_parse():
    import re
    import shlex
    from pathlib import Path

    from art_ssni.cli import build_parser

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "PAPER.md").read_text()
    section = text.split("#### Heterogeneous-noise methods")[1].split("## The settings")[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = block.replace("\\\n", " ").strip().splitlines()
    assert len(commands) == 8
    parser = build_parser()
    seen = set()
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "art-ssni"
        args = parser.parse_args(words[1:])
        seen.add((args.preset, args.method, tuple(args.noises)))
    assert {(p, m) for p, m, _ in seen} == {
        (p, m) for p in ("cifar10-linf", "imagenet-linf") for m in ("dac", "mani-pure")
    }


@pytest.mark.parametrize("method", ["dac", "mani"])
def test_full_gradient_memory_stays_flat_in_the_steps(diffusion, images, method):
    """The known-region replacement, the resampling and the x0 correction run inside the
    checkpointed step, so each extra step keeps at most one state and its index vectors
    (the same bound as DiffPure's, tests/test_fidelity.py)."""
    from test_fidelity import _saved_bytes

    def build(steps):
        if method == "dac":
            return DAC(diffusion, mask=half_mask, t_large=40, t_small=20, stride=40 // steps)
        return MANIPure(diffusion, t_star=40, steps=steps, radius=2)

    state = images.numel() * images.element_size()
    indices = 3 * images.shape[0] * 8
    short, long = _saved_bytes(build(4), images, 0), _saved_bytes(build(40), images, 0)
    assert 0 < (long - short) / 36 <= state + indices
