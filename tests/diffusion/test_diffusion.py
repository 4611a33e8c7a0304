"""The diffusion core (art_ssni.diffusion): the VP schedule, q_sample, score and eps
conventions, level grids and rounding, step hooks, the batched per-sample sampler, the
model's fingerprint, and the diffusers loader."""

import math

import pytest
import torch
from torch import nn

from art_ssni import DiffusionModel, EPSNorm, ReferenceStats, VPSchedule
from art_ssni._rng import SampleStreams
from art_ssni.diffusion import (
    StepHooks,
    ddim_mean,
    level_grid,
    round_half_up,
    sample,
    step_counts,
    timestep_table,
)
from art_ssni.diffusion.sampler import reverse_step

from tiny import RowCounter, TinyEpsNet


def test_schedule_matches_closed_form_product():
    schedule = VPSchedule()
    betas = [1e-4 + i * (0.02 - 1e-4) / 999 for i in range(1000)]
    expected = [1.0]
    for beta in betas:
        expected.append(expected[-1] * (1 - beta))
    t = torch.tensor([0, 1, 2, 100, 500, 1000])
    got = schedule.abar(t, torch.float64)
    assert torch.allclose(got, torch.tensor([expected[i] for i in t.tolist()], dtype=torch.float64))
    assert got[0] == 1.0


def test_continuous_schedule_is_the_vp_sde_marginal():
    schedule = VPSchedule(continuous=True)
    s = 0.1
    expected = math.exp(-(0.1 * s + 0.5 * (20 - 0.1) * s**2))
    assert schedule.abar(torch.tensor([100]), torch.float64).item() == pytest.approx(expected)
    assert schedule.level(0.1).item() == 100
    assert schedule.time(torch.tensor([250])).item() == pytest.approx(0.25)
    # the discrete and continuous schedules agree to first order at t* = 100
    discrete = VPSchedule().abar(torch.tensor([100])).item()
    assert discrete == pytest.approx(expected, rel=2e-3)


def test_schedule_rejects_bad_levels():
    schedule = VPSchedule()
    with pytest.raises(ValueError, match="levels must lie in"):
        schedule.abar(torch.tensor([1001]))
    with pytest.raises(ValueError, match="integer"):
        schedule.abar(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="beta"):
        VPSchedule(beta_start=0.1, beta_end=0.01)


def test_q_sample_moments(diffusion):
    x0 = torch.full((20000, 1, 1, 1), 0.4)
    diffusion.image_shape = None
    t = torch.full((20000,), 300)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    x_t = diffusion.q_sample(x0, t, noise)
    abar = VPSchedule().abar(torch.tensor([300])).item()
    assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * 0.4, abs=0.02)
    assert x_t.std().item() == pytest.approx(math.sqrt(1 - abar), rel=0.02)


def test_score_is_minus_eps_over_sigma(diffusion, images):
    t = torch.tensor([1, 5, 50, 100, 500, 999])
    x = 2 * images - 1
    sigma = (1 - VPSchedule().abar(t)).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(diffusion.score(x, t), -diffusion.eps(x, t) / sigma)


def test_eps_output_conventions():
    class Learned(torch.nn.Module):
        def forward(self, x, t):
            return torch.cat([x * 2, x * 3], dim=1)

    class WithSample(torch.nn.Module):
        def forward(self, x, t):
            class Out:
                sample = x * 5

            return Out()

    x = torch.randn(2, 3, 4, 4)
    t = torch.tensor([3, 4])
    assert torch.equal(DiffusionModel(Learned()).eps(x, t), x * 2)
    assert torch.equal(DiffusionModel(WithSample()).eps(x, t), x * 5)


def test_network_receives_zero_based_ddpm_index():
    counter = RowCounter(TinyEpsNet())
    model = DiffusionModel(counter)
    model.eps(torch.zeros(2, 3, 8, 8), torch.tensor([1, 1000]))
    assert counter.labels[0].tolist() == [0, 999]


def test_timestep_table_starts_at_each_level_and_strides_to_zero():
    levels = torch.tensor([0, 1, 7, 10, 100, 150])
    table = timestep_table(levels, steps=10)
    for i, t in enumerate(levels.tolist()):
        k = min(10, t)
        row = table[i].tolist()
        assert row[0] == t
        assert row[k] == 0 and all(v == 0 for v in row[k:])
        assert all(a > b for a, b in zip(row[:k], row[1 : k + 1]))
    assert table[5].tolist() == [150, 135, 120, 105, 90, 75, 60, 45, 30, 15, 0]
    assert table[4].tolist() == list(range(100, -1, -10))


def test_round_half_up_integer_and_float():
    n = torch.arange(-60, 61)
    for d in (1, 2, 3, 7, 10):
        expected = torch.tensor([math.floor(v / d + 0.5) for v in n.tolist()])
        assert torch.equal(round_half_up(n, d), expected)
        assert torch.equal(round_half_up(n, torch.full_like(n, d)), expected)
    assert round_half_up(torch.tensor([2.5, -2.5, 0.49999, 1.5, 7.0])).tolist() == [3, -2, 0, 2, 7]
    big = torch.tensor([2**61 + 1])  # exact in integers: no float division
    assert round_half_up(big, 2).item() == 2**60 + 1
    assert round_half_up(torch.tensor([5]), 2).dtype == torch.int64


def test_level_grid_ends_at_each_low_level():
    high, low = torch.tensor([20, 9, 5, 0, 12]), torch.tensor([10, 5, 5, 0, 0])
    assert step_counts(high, low, steps=4).tolist() == [4, 4, 0, 0, 4]
    assert step_counts(high, low, stride=3).tolist() == [4, 2, 0, 0, 4]
    table = level_grid(high, low, steps=4)
    assert table[0].tolist() == [20, 18, 15, 13, 10]  # 10 + round(10 (4 - j) / 4), half up
    assert table[1].tolist() == [9, 8, 7, 6, 5] and table[2].tolist() == [5] * 5
    exact = level_grid(high, low, stride=3, exact=True)
    assert exact[0].tolist() == [20, 17.5, 15, 12.5, 10] and exact.dtype == torch.float64
    assert torch.equal(level_grid(high, torch.zeros_like(high), steps=4), timestep_table(high, 4))
    with pytest.raises(ValueError, match="exactly one of steps and stride"):
        level_grid(high, low)
    with pytest.raises(ValueError, match="low <= high"):
        level_grid(low, high, steps=2)


def test_step_hooks_draws_and_plain_step():
    assert StepHooks().hook_draws == 0
    known = lambda model, x, t, noise, per_sample: x  # noqa: E731
    guide = lambda model, x, t, var, noise, per_sample: 0 * x  # noqa: E731
    assert StepHooks(known=known, resample=3, guide=guide).hook_draws == 3
    with pytest.raises(ValueError, match="eta"):
        StepHooks(eta=1.5)
    with pytest.raises(ValueError, match="resample"):
        StepHooks(resample=-1)


def test_step_hooks_apply_in_order_with_aligned_per_sample_tensors(diffusion):
    """known, then the resampling jump, then the network at t + U, x0 correction and guide,
    each hook reading per-sample tensors aligned with x_t, checked against the closed form."""
    g = torch.Generator().manual_seed(2)
    x_t, z_known, z_up, z_guide = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(4))
    image, shift = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    t, s = torch.tensor([10, 20]), torch.tensor([8, 15])
    seen = {}

    def known(model, x, level, noise, per_sample):
        seen["known"] = level.tolist()
        return 0.5 * x + 0.5 * model.q_sample(per_sample["image"], level, noise)

    def denoised(model, x0, level, per_sample):
        seen["denoised"] = level.tolist()
        return x0 + per_sample["shift"]

    def guide(model, x, level, var, noise, per_sample):
        return var * noise

    hooks = StepHooks(eta=0.5, known=known, resample=2, denoised=denoised, guide=guide)
    with torch.no_grad():
        mean, c1 = ddim_mean(
            diffusion, x_t, t, s, hooks, (z_known, z_up, z_guide),
            {"image": image, "shift": shift},
        )  # fmt: skip
        ab = lambda v: diffusion.schedule.abar(v).view(-1, 1, 1, 1)  # noqa: E731
        cur = 0.5 * x_t + 0.5 * (ab(t).sqrt() * image + (1 - ab(t)).sqrt() * z_known)
        up = t + 2
        ratio = ab(up) / ab(t)
        cur = ratio.sqrt() * cur + (1 - ratio).sqrt() * z_up
        eps = diffusion.eps(cur, up)
        x0 = (cur - (1 - ab(up)).sqrt() * eps) / ab(up).sqrt() + shift
        eps = (cur - ab(up).sqrt() * x0) / (1 - ab(up)).sqrt()
        var = 0.25 * (1 - ab(up) / ab(s)) * (1 - ab(s)) / (1 - ab(up))
        expected = ab(s).sqrt() * x0 + (1 - ab(s) - var).sqrt() * eps + var * z_guide
    assert seen == {"known": [10, 20], "denoised": [12, 22]}
    torch.testing.assert_close(mean, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c1**2, var)
    with pytest.raises(ValueError, match="3 standard normal draws, got 1"):
        ddim_mean(diffusion, x_t, t, s, hooks, (z_known,), {})


def _reference_loop(model, x_t, levels, steps, noises, eta):
    """One sample at a time, with plain Python stepping; sample i's step j takes noises[j][i]."""
    out = []
    for i in range(x_t.shape[0]):
        x = x_t[i : i + 1]
        t_i = int(levels[i])
        k = min(steps, t_i)
        taus = [round(t_i * (k - j) / k + 1e-9) if k else 0 for j in range(k + 1)]
        for j in range(k):
            t, s = torch.tensor([taus[j]]), torch.tensor([taus[j + 1]])
            x = reverse_step(model, x, t, s, noises[j][i : i + 1], eta=eta)
        out.append(x)
    return torch.cat(out)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_batched_sampler_equals_per_sample_loop(diffusion, eta):
    levels = torch.tensor([0, 3, 12, 40, 25])
    g = torch.Generator().manual_seed(5)
    x_t = torch.randn(5, 3, 8, 8, generator=g)
    steps = 10
    own = SampleStreams(9, torch.arange(5))
    noises = [own.randn((3, 8, 8), device="cpu") for _ in range(steps)]  # row i: its j-th draw
    with torch.no_grad():
        batched = sample(
            diffusion,
            x_t,
            levels,
            steps,
            sampler="ddpm" if eta else "ddim",
            generator=SampleStreams(9, torch.arange(5)),
        )
        reference = _reference_loop(diffusion, x_t, levels, steps, noises, eta)
    assert torch.allclose(batched, reference, atol=1e-5)
    assert torch.equal(batched[0], x_t[0])


def test_rows_through_network_equal_sum_of_steps(counted):
    levels = torch.tensor([0, 3, 12, 40, 100, 7])
    steps = 10
    with torch.no_grad():
        sample(counted, torch.randn(6, 3, 8, 8), levels, steps, generator=torch.Generator())
    expected = sum(min(steps, t) for t in levels.tolist())
    assert counted.eps_net.rows == expected == 0 + 3 + 10 + 10 + 10 + 7
    assert counted.eps_net.calls == 10
    # the labels each sample received are strictly decreasing: no index is visited twice
    seen = [[] for _ in range(6)]
    running = [[i for i, t in enumerate(levels.tolist()) if min(steps, t) > j] for j in range(10)]
    for samples, labels in zip(running, counted.eps_net.labels):
        for i, label in zip(samples, labels.tolist()):
            seen[i].append(label)
    assert all(a > b for row in seen for a, b in zip(row, row[1:]))
    assert [len(row) for row in seen] == [0, 3, 10, 10, 10, 7]


def test_from_diffusers_wraps_a_unet_instance_and_folder(tmp_path):
    from art_ssni._compat import import_torchvision

    import_torchvision()
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    model = DiffusionModel.from_diffusers(unet)
    assert model.image_shape == (3, 8, 8)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([1, 500])
    with torch.no_grad():
        expected = unet(x, t - 1).sample
        assert torch.allclose(model.eps(x, t), expected)
    unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(beta_start=2e-4, beta_end=0.03, num_train_timesteps=500).save_pretrained(
        tmp_path / "scheduler"
    )
    loaded = DiffusionModel.from_diffusers(tmp_path)
    assert loaded.schedule == VPSchedule(2e-4, 0.03, 500)
    with torch.no_grad():
        assert torch.allclose(loaded.eps(x, t), expected, atol=1e-6)
    with pytest.raises(ValueError, match="could not load"):
        DiffusionModel.from_diffusers(tmp_path / "scheduler")


class ScalarNet(TinyEpsNet):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t):
        return super().forward(x, t) * self.scale


def test_fingerprint_and_stats_with_a_scalar_parameter(images):
    diffusion = DiffusionModel(ScalarNet(), image_shape=(3, 8, 8))
    first = diffusion.fingerprint()
    other = DiffusionModel(ScalarNet(), image_shape=(3, 8, 8))
    with torch.no_grad():
        other.eps_net.scale.fill_(0.25)
    assert first != other.fingerprint()
    stats = ReferenceStats.from_images(EPSNorm(diffusion, 3), images, progress=False)
    assert stats.model == first
