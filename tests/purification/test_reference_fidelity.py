"""The purifiers against independent references: DiffPure, GDMP and GNS stage hand-offs equal
a hand loop of reverse steps, GDMP's clipping and guidance step follow the published formulas,
the SDE purifier's gradient modes, sampler options, and the memory the full gradient keeps."""

from __future__ import annotations

import pytest
import torch

from art_ssni import GDMP, GNS, DiffPure, DiffusionModel
from art_ssni._rng import SampleStreams
from art_ssni.diffusion import reverse_step

from tiny import TinyEpsNet, loud_model, posterior, saved_bytes


def _reference_purify(model, x, stages, seed, *, clip):
    """Independent reference: q_sample then a hand loop of reverse steps, stage after stage,
    with the state passed on unclamped and only the final image clamped to [0, 1]; every
    draw is the next one of each sample's own stream (keyed by position)."""
    own = SampleStreams.for_call(seed, x.shape[0])
    state = 2 * x - 1
    handoffs = []
    for level, steps in stages:
        a = model.schedule.abar(torch.tensor(level))
        z = own.randn(state.shape[1:], device="cpu")
        cur = a.sqrt() * state + (1 - a).sqrt() * z
        taus = [round(level * (steps - j) / steps + 1e-9) for j in range(steps + 1)]
        for j in range(steps):
            n = own.randn(state.shape[1:], device="cpu")
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
    model = loud_model()
    purifier = GDMP(model, t_star=12, runs=2, steps=4)
    assert purifier.clip_denoised
    with torch.no_grad():
        got = purifier(images, generator=2)
        expected, _ = _reference_purify(model, images, purifier.stages, 2, clip=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gdmp_guidance_step_follows_the_published_formula(images):
    """mean shift = -a sqrt((1 - abar_t) / abar_t) var grad_x MSE(x_t, y_t), y_t the stage
    input noised to t with the guide draw; each sample's shift reads only its own target."""
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
    _, var = posterior(model.schedule, x_t, x_t, t, s)
    y_t = a.sqrt() * x + (1 - a).sqrt() * guide_noise
    grad_mse = 2 * (x_t - y_t) / x[0].numel()  # per-sample mean over pixels
    expected = -scale * ((1 - a) / a).sqrt() * var * grad_mse
    torch.testing.assert_close(guided - plain, expected, atol=1e-6, rtol=1e-5)
    # a sample's guidance does not depend on its batch-mates
    alone = guide(model, x_t[:1], t[:1], var[:1], guide_noise[:1], {"target": x[:1]})
    torch.testing.assert_close(alone, expected[:1], atol=1e-6, rtol=1e-5)
    alone = guide(model, x_t[3:4], t[3:4], var[3:4], guide_noise[3:4], {"target": x[3:4]})
    torch.testing.assert_close(alone, expected[3:4], atol=1e-6, rtol=1e-5)


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
    streams = purifier.streams(x_ref, 3)
    levels = purifier.levels(x_ref, streams)
    stages = purifier.stages if gradient == "full" else purifier.surrogate_stages
    ref = purifier.purify(x_ref, levels, stages, streams, checkpoint=False)
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


def test_full_gradient_keeps_at_most_one_state_per_step(images):
    """The whole reverse step, x0 clamp and hooks included, is recomputed in the backward
    pass, so each extra step keeps no more than its input x_t and its three index vectors
    t, s, rows. Checkpointing only the network call also
    kept the clamp's input: two states per step."""
    model = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8))
    state = images.numel() * images.element_size()
    indices = 3 * images.shape[0] * 8
    for method in (DiffPure, GDMP):
        kwargs = {"runs": 1, "clip_denoised": True} if method is GDMP else {}
        short = saved_bytes(method(model, t_star=40, steps=5, **kwargs), images, 0)
        long = saved_bytes(method(model, t_star=40, steps=40, **kwargs), images, 0)
        assert (long - short) / 35 <= state + indices, method.__name__
