"""Reverse samplers over per-sample level tables: short functions over a model callable.

Every sample starts exactly at its own level t_i and takes K_i = min(K, t_i) strided steps to
0. One batched network call serves all samples still running at a step, so the rows sent
through the network total sum_i K_i: no call is spent on a repeated or finished index.

Two step rules share one driver (:func:`run_chain`):
- :func:`reverse_step`, the DDIM-form update (eta = 1 is DDPM ancestral sampling, eta = 0 is
  DDIM) on integer levels;
- :func:`sde_step`, one Euler-Maruyama step of the reverse VP-SDE (DiffPure's solver) on
  continuous levels.

Hooks (general mechanisms any method can use): ``known`` replaces a known region of x_t
before the network sees it (inpainting, DAC); ``detour`` first moves x_t forward by U DDPM
transitions t -> t + U (resampling, DAC) so the step jumps from t + U; ``denoised`` corrects
x0_hat inside a step (``clip_denoised`` is the clamp to [-1, 1]; MANI-Pure's spectral
projection), after which eps is re-derived from the corrected x0_hat so that the update is the
posterior mean of q(x_s | x_t, x0_hat); ``guide`` shifts the step's mean. Random draws a step
needs are made by the driver before the step runs (``run_chain``'s ``draws``), so a step is a
pure function of its inputs and can be recomputed in the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .._rng import randn
from .model import DiffusionModel

Guide = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]
"""``guide(x_t, t, var, rows, noise)`` -> mean shift; ``noise`` is a standard normal draw of
x_t's shape made for the guide, ``rows`` the batch indices of these samples."""
Denoised = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoised(x0_hat, t, rows)`` -> corrected x0_hat (for example a clamp or a projection)."""
Known = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``known(x_t, t, rows, noise)`` -> x_t with a known region replaced, typically
M x_t + (1 - M) q_sample(x_input, t, noise); ``noise`` is a fresh draw made by the driver."""
Step = Callable[..., torch.Tensor]

SAMPLERS = ("ddpm", "ddim", "sde")


def _check_levels(levels: torch.Tensor, steps: int) -> torch.Tensor:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if levels.dim() != 1:
        raise ValueError(f"levels must be a 1-D LongTensor, got shape {tuple(levels.shape)}")
    levels = levels.long()
    if levels.numel() and int(levels.min()) < 0:
        raise ValueError(f"levels must be >= 0, got {int(levels.min())}")
    return levels


def timestep_table(levels: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, max_i K_i + 1) table; row i is t_i = tau_0 > ... > tau_{K_i} = 0, then zeros.

    tau_j = round(t_i (K_i - j) / K_i) (half up), so the stride is t_i / K_i >= 1 and the
    indices are distinct.
    """
    levels = _check_levels(levels, steps)
    k = levels.clamp(max=steps)
    width = int(k.max()) if k.numel() else 0
    j = torch.arange(width + 1, device=levels.device)
    remaining = (k[:, None] - j[None, :]).clamp(min=0)
    denom = k.clamp(min=1)[:, None]
    return (2 * levels[:, None] * remaining + denom) // (2 * denom)


def level_table(levels: torch.Tensor, steps: int) -> torch.Tensor:
    """Like :func:`timestep_table` but exact: tau_j = t_i (K_i - j) / K_i as float64 levels.

    The continuous-time solver steps on this uniform grid (stride t_i / K_i level units).
    """
    levels = _check_levels(levels, steps)
    k = levels.clamp(max=steps)
    width = int(k.max()) if k.numel() else 0
    j = torch.arange(width + 1, device=levels.device)
    remaining = (k[:, None] - j[None, :]).clamp(min=0).double()
    return levels[:, None].double() * remaining / k.clamp(min=1)[:, None].double()


def stride_table(high: torch.Tensor, low: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, max_i K_i + 1) table from level high_i down to low_i <= high_i on a grid of
    ``stride``: K_i = ceil((high_i - low_i) / stride) steps (one when the stride exceeds the
    span, none when high_i = low_i), tau_j = low_i + round((high_i - low_i)(K_i - j) / K_i)
    (half up), then low_i repeated (finished rows have t = s and take no step)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
    if high.shape != low.shape or high.dim() != 1:
        raise ValueError(
            f"high and low must be 1-D of one shape, got {tuple(high.shape)}, {tuple(low.shape)}"
        )
    high, low = high.long(), low.long()
    span = high - low
    if span.numel() and (int(span.min()) < 0 or int(low.min()) < 0):
        raise ValueError("need 0 <= low <= high for every sample")
    k = (span + stride - 1) // stride
    width = int(k.max()) if k.numel() else 0
    j = torch.arange(width + 1, device=high.device)
    remaining = (k[:, None] - j[None, :]).clamp(min=0)
    denom = k.clamp(min=1)[:, None]
    return low[:, None] + (2 * span[:, None] * remaining + denom) // (2 * denom)


def forward_jump(
    model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, u: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """u composed forward DDPM transitions from level t to t + u in one exact draw:
    x_{t+u} = sqrt(abar_{t+u} / abar_t) x_t + sqrt(1 - abar_{t+u} / abar_t) z."""
    ratio = (model.schedule.abar(t + u, x_t.dtype) / model.schedule.abar(t, x_t.dtype)).view(
        -1, 1, 1, 1
    )
    return ratio.sqrt() * x_t + (1 - ratio).clamp(min=0).sqrt() * noise


def ddim_mean(
    model: DiffusionModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    *,
    eta: float = 1.0,
    clip_denoised: bool = False,
    denoised: Denoised | None = None,
    guide: Guide | None = None,
    guide_noise: torch.Tensor | None = None,
    known: Known | None = None,
    known_noise: torch.Tensor | None = None,
    detour: int = 0,
    detour_noise: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic part of :func:`reverse_step`: its mean and its noise scale c1.

    Before the network call, ``known`` replaces a region of x_t (with ``known_noise``), then a
    ``detour`` of U >= 1 moves x_t forward to level min(t + U, N) with ``detour_noise``
    (:func:`forward_jump`), and the step is taken from that level to s.
    """
    if rows is None:
        rows = torch.arange(x_t.shape[0], device=x_t.device)
    if known is not None:
        if known_noise is None:
            raise ValueError("a known-region step needs known_noise (drawn by the sampler)")
        x_t = known(x_t, t, rows, known_noise)
    if detour:
        if detour_noise is None:
            raise ValueError("a detour step needs detour_noise (drawn by the sampler)")
        up = (t + detour).clamp(max=model.schedule.num_steps)
        x_t, t = forward_jump(model, x_t, t, up - t, detour_noise), up
    shape = (-1, 1, 1, 1)
    abar_t = model.schedule.abar(t, x_t.dtype).view(shape)
    abar_s = model.schedule.abar(s, x_t.dtype).view(shape)
    eps = model.eps(x_t, t)
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if denoised is not None or clip_denoised:
        if denoised is not None:
            x0 = denoised(x0, t, rows)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        eps = (x_t - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
    c1 = eta * ((1 - abar_t / abar_s) * (1 - abar_s) / (1 - abar_t)).clamp(min=0).sqrt()
    c2 = (1 - abar_s - c1**2).clamp(min=0).sqrt()
    mean = abar_s.sqrt() * x0 + c2 * eps
    if guide is not None:
        if guide_noise is None:
            raise ValueError("a guided step needs guide_noise (drawn by the sampler)")
        mean = mean + guide(x_t, t, c1**2, rows, guide_noise)
    return mean, c1


def reverse_step(
    model: DiffusionModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    noise: torch.Tensor,
    **hooks,
) -> torch.Tensor:
    """One DDIM-form step from level t to level s < t (eta = 1 is DDPM ancestral sampling).

    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), corrected by ``denoised`` and clamped to
    [-1, 1] with ``clip_denoised``; a corrected x0 re-derives eps = (x_t - sqrt(abar_t) x0) /
    sqrt(1 - abar_t) (guided-diffusion's p_sample and ddim_sample, official GDMP), so with
    eta = 1 the mean is exactly the posterior mean of q(x_s | x_t, x0).
    c1 = eta sqrt((1 - abar_t/abar_s)(1 - abar_s)/(1 - abar_t)); c2 = sqrt(1 - abar_s - c1^2);
    x_s = sqrt(abar_s) x0 + c2 eps + guide + c1 z. ``hooks`` are :func:`ddim_mean`'s keywords.
    """
    mean, c1 = ddim_mean(model, x_t, t, s, **hooks)
    return mean + c1 * noise


def sde_mean(
    model: DiffusionModel, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic part of :func:`sde_step`: x + drift h, and the noise scale."""
    schedule = model.schedule
    shape = (-1, 1, 1, 1)
    u = schedule.time(t)
    beta = schedule.sde_beta(u).to(x.dtype).view(shape)
    sigma = (1 - schedule.sde_abar(u)).sqrt().to(x.dtype).view(shape)
    h = ((t - s) / schedule.num_steps).to(x.dtype).view(shape)
    score = -model.eps(x, t.to(x.dtype)) / sigma
    return x + (0.5 * beta * x + beta * score) * h, (beta * h).sqrt()


def sde_step(
    model: DiffusionModel,
    x: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """One Euler-Maruyama step of the reverse VP-SDE from continuous level t to s < t.

    With u = level / N, beta(u) = beta_min + (beta_max - beta_min) u and h = (t - s) / N:
    x_s = x + (beta(u) x / 2 + beta(u) score(x, u)) h + sqrt(beta(u) h) z, where
    score = -eps(x, t) / sqrt(1 - abar(u)) on the VP-SDE marginal (DiffPure, Song et al. 2021).
    """
    mean, scale = sde_mean(model, x, t, s)
    return mean + scale * noise


def run_chain(
    step: Step,
    x: torch.Tensor,
    table: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    draws: int = 0,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Drive ``step(x, t, s, aux, rows) -> (mean, scale)`` along a level table; each step's
    new state is mean + scale z. A row runs while t > s (finished rows repeat their level).

    Step j draws one standard normal z of the whole batch's shape from ``generator``, then
    ``draws`` more, handed to the step as the tuple ``aux`` (None without draws), whatever
    rows are still running, so results depend only on the seed. With ``checkpoint=True`` (and
    grad enabled) the deterministic part of every step is recomputed in the backward pass: a
    step keeps only its input x_t (and its draws), so the memory of an exact gradient does not
    grow with the number of steps.
    """
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 0:
        raise ValueError(f"draws must be an integer >= 0, got {draws!r}")
    for j in range(table.shape[1] - 1):
        t, s = table[:, j], table[:, j + 1]
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        extra = [
            randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            for _ in range(draws)
        ]
        running = t > s
        everyone = bool(running.all())
        rows = torch.arange(x.shape[0], device=x.device) if everyone else running.nonzero()[:, 0]
        if not rows.numel():
            continue
        if everyone:
            x_in = x
        else:
            x_in, t, s, noise = x[rows], t[rows], s[rows], noise[rows]
            extra = [e[rows] for e in extra]
        aux = tuple(extra) if draws else None
        if checkpoint and torch.is_grad_enabled():
            mean, scale = _checkpoint(step, x_in, t, s, aux, rows, use_reentrant=False)
        else:
            mean, scale = step(x_in, t, s, aux, rows)
        update = mean + scale * noise
        x = update if everyone else x.index_copy(0, rows, update)
    return x


def sample(
    model: DiffusionModel,
    x_t: torch.Tensor,
    levels: torch.Tensor,
    steps: int,
    *,
    sampler: str = "ddpm",
    eta: float | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = False,
    denoised: Denoised | None = None,
    guide: Guide | None = None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Run each x_t[i] from its level ``levels[i]`` back to 0 in K_i = min(steps, t_i) steps.

    ``sampler`` is "ddpm" (eta = 1 unless given), "ddim" (eta = 0 unless given) or "sde"
    (reverse VP-SDE, Euler-Maruyama, on the exact grid t_i (K_i - j) / K_i; it takes no eta,
    x0 hook or guide). See :func:`run_chain` for draws and ``checkpoint``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    levels = levels.to(x_t.device)
    if sampler == "sde":
        if eta is not None or clip_denoised or denoised is not None or guide is not None:
            raise ValueError("the 'sde' sampler takes no eta, clip_denoised, denoised or guide")

        def sde(x, t, s, _aux, _rows):
            return sde_mean(model, x, t, s)

        return run_chain(
            sde, x_t, level_table(levels, steps), generator=generator, checkpoint=checkpoint
        )
    eta = (1.0 if sampler == "ddpm" else 0.0) if eta is None else float(eta)

    def ddim(x, t, s, aux, rows):
        return ddim_mean(
            model,
            x,
            t,
            s,
            eta=eta,
            clip_denoised=clip_denoised,
            denoised=denoised,
            guide=guide,
            guide_noise=aux[0] if aux else None,
            rows=rows,
        )

    return run_chain(
        ddim,
        x_t,
        timestep_table(levels, steps),
        generator=generator,
        draws=int(guide is not None),
        checkpoint=checkpoint,
    )
