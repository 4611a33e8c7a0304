"""The reverse steps against closed forms (art_ssni.diffusion.sampler): the clipped DDPM step is
the posterior mean of the clipped x0, and the reverse VP-SDE is Euler-Maruyama, per sample,
one network row per step, and exact on a Gaussian oracle."""

import math

import pytest
import torch

from art_ssni import DiffusionModel
from art_ssni._rng import SampleStreams
from art_ssni.diffusion import VPSchedule, level_table, reverse_step, sample, sde_step

from tiny import GaussianOracle, RowCounter, TinyEpsNet, loud_model, posterior


@pytest.mark.parametrize("t_level, s_level", [(36, 35), (100, 99), (100, 90)])
def test_clipped_step_is_the_posterior_mean_of_the_clipped_x0(t_level, s_level):
    model = loud_model()
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 3, 8, 8, generator=g)
    t, s = torch.full((4,), t_level), torch.full((4,), s_level)
    with torch.no_grad():
        eps = model.eps(x_t, t)
        a_t = model.schedule.abar(t).view(-1, 1, 1, 1)
        x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        assert (x0.abs() > 1).float().mean() > 0.05  # clipping really happens
        mean, var = posterior(model.schedule, x_t, x0.clamp(-1, 1), t, s)
        z = torch.randn(x_t.shape, generator=g)
        got_mean = reverse_step(model, x_t, t, s, torch.zeros_like(x_t), clip_denoised=True)
        got = reverse_step(model, x_t, t, s, z, clip_denoised=True)
    torch.testing.assert_close(got_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got - got_mean, var.sqrt() * z, atol=1e-5, rtol=1e-5)


def test_sde_step_is_one_euler_maruyama_step():
    model = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 8, 8, generator=g)
    z = torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([100.0, 37.5, 2.0], dtype=torch.float64)
    s = torch.tensor([99.0, 30.0, 0.0], dtype=torch.float64)
    with torch.no_grad():
        got = sde_step(model, x, t, s, z)
        out = []
        for i in range(3):
            u = float(t[i]) / 1000
            beta = 0.1 + 19.9 * u
            abar = math.exp(-(0.1 * u + 0.5 * 19.9 * u * u))
            h = float(t[i] - s[i]) / 1000
            eps = model.eps_net(x[i : i + 1], t[i : i + 1].float() - 1)
            score = -eps / math.sqrt(1 - abar)
            drift = 0.5 * beta * x[i : i + 1] + beta * score
            out.append(x[i : i + 1] + drift * h + math.sqrt(beta * h) * z[i : i + 1])
    torch.testing.assert_close(got, torch.cat(out), atol=1e-6, rtol=1e-5)


def test_sde_mixed_levels_equal_each_sample_alone():
    model = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8))
    levels = torch.tensor([0, 3, 12, 40, 25])
    steps = 10
    g = torch.Generator().manual_seed(5)
    x_t = torch.randn(5, 3, 8, 8, generator=g)
    own = SampleStreams(9, torch.arange(5))
    noises = [own.randn((3, 8, 8), device="cpu") for _ in range(steps)]  # row i: its j-th draw
    with torch.no_grad():
        batched = sample(
            model, x_t, levels, steps, sampler="sde", generator=SampleStreams(9, torch.arange(5))
        )
        alone = []
        for i, level in enumerate(levels.tolist()):
            x = x_t[i : i + 1]
            k = min(steps, level)
            grid = [level * (k - j) / k for j in range(k + 1)] if k else [0]
            for j in range(k):
                t = torch.tensor([grid[j]], dtype=torch.float64)
                s = torch.tensor([grid[j + 1]], dtype=torch.float64)
                x = sde_step(model, x, t, s, noises[j][i : i + 1])
            alone.append(x)
    torch.testing.assert_close(batched, torch.cat(alone), atol=1e-5, rtol=1e-5)
    assert torch.equal(batched[0], x_t[0])
    assert level_table(levels, steps)[2].tolist() == [12 * (10 - j) / 10 for j in range(11)]


def test_sde_rows_through_network_equal_sum_of_steps():
    counted = DiffusionModel(RowCounter(TinyEpsNet()), image_shape=(3, 8, 8))
    levels = torch.tensor([0, 3, 12, 40])
    with torch.no_grad():
        sample(counted, torch.randn(4, 3, 8, 8), levels, 10, sampler="sde")
    assert counted.eps_net.rows == 0 + 3 + 10 + 10


def test_sde_on_a_gaussian_oracle_matches_the_analytic_posterior():
    """With the exact score, the reverse SDE from x_T draws from p(x_0 | x_T)."""
    schedule = VPSchedule(continuous=True)
    mean, std, level, x_T = 0.2, 0.5, 100, 0.7
    oracle = DiffusionModel(
        GaussianOracle(mean, std, schedule),
        schedule,
        time_label=lambda t: t.double() * 0.999,
    )
    x_t = torch.full((64, 1, 16, 16), x_T, dtype=torch.float64)
    with torch.no_grad():
        out = sample(
            oracle,
            x_t,
            torch.full((64,), level),
            level,
            sampler="sde",
            generator=torch.Generator().manual_seed(0),
        )
    a = float(schedule.sde_abar(torch.tensor(level / 1000)))
    post_var = 1 / (1 / std**2 + a / (1 - a))
    post_mean = post_var * (mean / std**2 + math.sqrt(a) * x_T / (1 - a))
    assert float(out.mean()) == pytest.approx(post_mean, abs=0.01)
    assert float(out.var()) == pytest.approx(post_var, rel=0.05)
