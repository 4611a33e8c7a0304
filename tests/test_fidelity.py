"""Engine fidelity against closed forms: clipped step, stage hand-off, conventions, GDMP
guidance, and the reverse VP-SDE solver (issue: engine fidelity)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from art_ssni import GDMP, GNS, DiffPure, DiffusionModel
from art_ssni.diffusion import VPSchedule, level_table, reverse_step, sample, sde_step
from art_ssni.diffusion.model import time_convention

from tiny import RowCounter, TinyEpsNet


class LoudEpsNet(nn.Module):
    """A network whose eps is large enough that x0_hat leaves [-1, 1] (clipping matters)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.sin(2 * x + t.float()[:, None, None, None] / 100)


class GaussianOracle(nn.Module):
    """Exact eps of data x0 ~ N(m, sd^2) per pixel on the continuous VP marginal.

    p_t(x) = N(sqrt(a) m, a sd^2 + 1 - a), so eps* = sqrt(1 - a) (x - sqrt(a) m) / (a sd^2 + 1 - a).
    Its label is score_sde's 999 t / N.
    """

    def __init__(self, mean: float, std: float, schedule: VPSchedule) -> None:
        super().__init__()
        self.mean, self.var, self.schedule = mean, std**2, schedule

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        u = label.double() / 999.0
        a = self.schedule.sde_abar(u).view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x.double() - a.sqrt() * self.mean) / (a * self.var + 1 - a)
        return eps.to(x.dtype)


def _loud(discrete: bool = True) -> DiffusionModel:
    return DiffusionModel(LoudEpsNet(), image_shape=(3, 8, 8), name="loud")


def _posterior(schedule: VPSchedule, x_t, x0, t, s):
    """Closed-form mean and variance of q(x_s | x_t, x0) (Ho et al. 2020, eq. 7)."""
    a_t = schedule.abar(t).view(-1, 1, 1, 1)
    a_s = schedule.abar(s).view(-1, 1, 1, 1)
    alpha = a_t / a_s
    mean = (a_s.sqrt() * (1 - alpha) * x0 + alpha.sqrt() * (1 - a_s) * x_t) / (1 - a_t)
    return mean, (1 - a_s) / (1 - a_t) * (1 - alpha)


@pytest.mark.parametrize("t_level, s_level", [(36, 35), (100, 99), (100, 90)])
def test_clipped_step_is_the_posterior_mean_of_the_clipped_x0(t_level, s_level):
    model = _loud()
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 3, 8, 8, generator=g)
    t, s = torch.full((4,), t_level), torch.full((4,), s_level)
    with torch.no_grad():
        eps = model.eps(x_t, t)
        a_t = model.schedule.abar(t).view(-1, 1, 1, 1)
        x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        assert (x0.abs() > 1).float().mean() > 0.05  # clipping really happens
        mean, var = _posterior(model.schedule, x_t, x0.clamp(-1, 1), t, s)
        z = torch.randn(x_t.shape, generator=g)
        got_mean = reverse_step(model, x_t, t, s, torch.zeros_like(x_t), clip_denoised=True)
        got = reverse_step(model, x_t, t, s, z, clip_denoised=True)
    torch.testing.assert_close(got_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got - got_mean, var.sqrt() * z, atol=1e-5, rtol=1e-5)


def _reference_purify(model, x, stages, seed, *, clip):
    """Independent reference: q_sample then a hand loop of reverse steps, stage after stage,
    with the state passed on unclamped and only the final image clamped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    state = 2 * x - 1
    handoffs = []
    for level, steps in stages:
        a = model.schedule.abar(torch.tensor(level))
        z = torch.randn(state.shape, generator=g)
        cur = a.sqrt() * state + (1 - a).sqrt() * z
        taus = [round(level * (steps - j) / steps + 1e-9) for j in range(steps + 1)]
        for j in range(steps):
            n = torch.randn(state.shape, generator=g)
            t = torch.full((x.shape[0],), taus[j])
            s = torch.full((x.shape[0],), taus[j + 1])
            cur = reverse_step(model, cur, t, s, n, clip_denoised=clip)
        state = cur
        handoffs.append(state)
    return ((state + 1) / 2).clamp(0, 1), handoffs


@pytest.mark.parametrize("method", ["gdmp", "gns"])
def test_multi_stage_equals_the_composition_of_unclamped_stages(images, method):
    model = DiffusionModel(TinyEpsNet(hidden=8, seed=4), image_shape=(3, 8, 8))
    with torch.no_grad():
        model.eps_net.out.weight.mul_(8)  # large eps: stage outputs leave [-1, 1]
    if method == "gdmp":
        purifier = GDMP(model, t_star=40, runs=3, steps=8, clip_denoised=False)
    else:
        purifier = GNS(model, stages=[(10, 5), (10, 5), (40, 8)], surrogate_stages=[(10, 1)])
    with torch.no_grad():
        got = purifier(images, generator=21)
        expected, handoffs = _reference_purify(model, images, purifier.stages, 21, clip=False)
    assert any(h.abs().max() > 1 for h in handoffs[:-1])  # the old inter-stage clamp mattered
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gdmp_default_clips_x0_inside_every_step(images):
    model = _loud()
    purifier = GDMP(model, t_star=12, runs=2, steps=4)
    assert purifier.clip_denoised
    with torch.no_grad():
        got = purifier(images, generator=2)
        expected, _ = _reference_purify(model, images, purifier.stages, 2, clip=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gdmp_guidance_step_follows_the_published_formula(images):
    model = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8))
    scale = 300.0
    purifier = GDMP(model, t_star=30, runs=1, steps=5, guidance="mse", guidance_scale=scale)
    x = 2 * images - 1
    guide = purifier.step_hooks.guide
    per_sample = purifier.stage_state(x, None)  # {"target": x}
    g = torch.Generator().manual_seed(4)
    x_t = torch.randn(x.shape, generator=g)
    guide_noise = torch.randn(x.shape, generator=g)
    t, s = torch.full((6,), 30), torch.full((6,), 24)
    with torch.no_grad():
        plain = reverse_step(model, x_t, t, s, torch.zeros_like(x), clip_denoised=True)
        guided = reverse_step(
            model, x_t, t, s, torch.zeros_like(x), clip_denoised=True, guide=guide,
            hook_noise=(guide_noise,), per_sample=per_sample,
        )  # fmt: skip
    a = model.schedule.abar(t).view(-1, 1, 1, 1)
    _, var = _posterior(model.schedule, x_t, x_t, t, s)
    y_t = a.sqrt() * x + (1 - a).sqrt() * guide_noise
    grad_mse = 2 * (x_t - y_t) / x[0].numel()  # per-sample mean over pixels
    expected = -scale * ((1 - a) / a).sqrt() * var * grad_mse
    torch.testing.assert_close(guided - plain, expected, atol=1e-6, rtol=1e-5)
    # a sample's guidance does not depend on its batch-mates
    alone = guide(model, x_t[:1], t[:1], var[:1], guide_noise[:1], {"target": x[:1]})
    torch.testing.assert_close(alone, expected[:1], atol=1e-6, rtol=1e-5)


def test_conventions_pick_schedule_and_label():
    t = torch.tensor([1, 100, 1000])
    cases = {
        ("continuous", "as-trained"): (True, t.float() * 0.999),
        ("continuous", "diffpure-sde"): (True, t.float() * 0.999),
        ("continuous", "lee-kim"): (False, t - 1),
        ("discrete", "as-trained"): (False, t - 1),
        ("discrete", "lee-kim"): (False, t - 1),
        ("discrete", "diffpure-sde"): (True, t.float()),
    }
    for (trained, name), (continuous, label) in cases.items():
        schedule, time_label = time_convention(trained, name)
        assert schedule.continuous is continuous, (trained, name)
        torch.testing.assert_close(time_label(t).float(), label.float())
    with pytest.raises(ValueError, match="convention"):
        time_convention("discrete", "nie")


def test_loaders_apply_the_convention(monkeypatch):
    from art_ssni.diffusion.networks import adm, ncsnpp

    def fake(*args, **kwargs):
        net = RowCounter(TinyEpsNet())
        net.image_size = 8
        return net

    monkeypatch.setattr(ncsnpp, "load_score_sde_checkpoint", fake)
    monkeypatch.setattr(adm, "load_guided_diffusion_checkpoint", fake)
    x, t = torch.zeros(2, 3, 8, 8), torch.tensor([1, 100])
    expected = {
        ("score", "as-trained"): ([0.999, 99.9], True),
        ("score", "lee-kim"): ([0.0, 99.0], False),
        ("adm", "as-trained"): ([0.0, 99.0], False),
        ("adm", "diffpure-sde"): ([1.0, 100.0], True),
    }
    for (kind, name), (labels, continuous) in expected.items():
        load = (
            DiffusionModel.from_score_sde
            if kind == "score"
            else (DiffusionModel.from_guided_diffusion)
        )
        model = load("unused.pth", convention=name)
        model.eps(x, t)
        assert model.eps_net.labels[-1].float().tolist() == pytest.approx(labels)
        assert model.schedule.continuous is continuous


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
    g = torch.Generator().manual_seed(9)
    noises = [torch.randn(5, 3, 8, 8, generator=g) for _ in range(steps)]
    with torch.no_grad():
        batched = sample(
            model, x_t, levels, steps, sampler="sde", generator=torch.Generator().manual_seed(9)
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


@pytest.mark.parametrize("gradient", ["full", "surrogate", "bpda"])
def test_sde_purifier_gradient_modes(images, gradient):
    model = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8))
    purifier = DiffPure(
        model, t_star=12, steps=4, surrogate_steps=2, sampler="sde", gradient=gradient
    )
    x = images.clone().requires_grad_(True)
    out = purifier(x, generator=3)
    w = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * w).sum().backward()
    if gradient == "bpda":
        assert torch.equal(x.grad, w)
        return
    x_ref = images.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    levels = purifier.levels(x_ref, g)
    stages = purifier.stages if gradient == "full" else purifier.surrogate_stages
    ref = purifier.purify(x_ref, levels, stages, g, checkpoint=False)
    (ref * w).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-6, rtol=1e-5)
    assert x.grad.abs().sum() > 0


def test_sampler_options_are_validated():
    model = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="sampler"):
        DiffPure(model, sampler="heun")
    with pytest.raises(ValueError, match="sde"):
        DiffPure(model, sampler="sde", eta=0.5)
    with pytest.raises(ValueError, match="guidance"):
        GDMP(model, sampler="sde", guidance="mse")
    assert GDMP(model, sampler="sde").clip_denoised is False
    assert DiffPure(model, sampler="ddim").eta == 0.0
    assert DiffPure(model).eta == 1.0


def _saved_bytes(purifier, x, seed):
    """Bytes autograd keeps for the backward pass of one purification (recomputed regions
    excluded: their tensors are not kept)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        purifier(x.clone().requires_grad_(True), generator=seed)
    return total


def test_full_gradient_keeps_at_most_one_state_per_step(images):
    """The whole reverse step, x0 clamp and hooks included, is recomputed in the backward
    pass, so each extra step keeps no more than its input x_t and its three index vectors
    t, s, rows (issue: speed at real size, item 5). Checkpointing only the network call also
    kept the clamp's input: two states per step."""
    model = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8))
    state = images.numel() * images.element_size()
    indices = 3 * images.shape[0] * 8
    for method in (DiffPure, GDMP):
        kwargs = {"runs": 1, "clip_denoised": True} if method is GDMP else {}
        short = _saved_bytes(method(model, t_star=40, steps=5, **kwargs), images, 0)
        long = _saved_bytes(method(model, t_star=40, steps=40, **kwargs), images, 0)
        assert (long - short) / 35 <= state + indices, method.__name__
