"""Reverse sampling over per-sample timestep tables.

Every sample starts exactly at its own level t_i and takes K_i = min(K, t_i) strided steps to
0. One batched network call serves all samples still running at a step, so the rows sent
through the network total sum_i K_i: no call is spent on a repeated or finished index.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .._rng import randn
from .model import DiffusionModel

Guide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def timestep_table(levels: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, max_i K_i + 1) table; row i is t_i = tau_0 > ... > tau_{K_i} = 0, then zeros.

    tau_j = round(t_i (K_i - j) / K_i) (half up), so the stride is t_i / K_i >= 1 and the
    indices are distinct.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    levels = levels.long()
    if levels.dim() != 1:
        raise ValueError(f"levels must be a 1-D LongTensor, got shape {tuple(levels.shape)}")
    if levels.numel() and int(levels.min()) < 0:
        raise ValueError(f"levels must be >= 0, got {int(levels.min())}")
    k = levels.clamp(max=steps)
    width = int(k.max()) if k.numel() else 0
    j = torch.arange(width + 1, device=levels.device)
    remaining = (k[:, None] - j[None, :]).clamp(min=0)
    denom = k.clamp(min=1)[:, None]
    return (2 * levels[:, None] * remaining + denom) // (2 * denom)


def reverse_step(
    model: DiffusionModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    noise: torch.Tensor,
    *,
    eta: float = 1.0,
    clip_denoised: bool = False,
    guide: Guide | None = None,
    rows: torch.Tensor | None = None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """One DDIM-form step from level t to level s < t (eta = 1 is DDPM ancestral sampling).

    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t);
    c1 = eta sqrt((1 - abar_t/abar_s)(1 - abar_s)/(1 - abar_t)); c2 = sqrt(1 - abar_s - c1^2);
    x_s = sqrt(abar_s) x0 + c2 eps + c1 z. ``guide(x_t, t, c1^2, rows)`` may shift the
    mean; ``rows`` are the batch indices of these samples.
    """
    shape = (-1, 1, 1, 1)
    abar_t = model.schedule.abar(t, x_t.dtype).view(shape)
    abar_s = model.schedule.abar(s, x_t.dtype).view(shape)
    if checkpoint and torch.is_grad_enabled():
        eps = _checkpoint(model.eps, x_t, t, use_reentrant=False)
    else:
        eps = model.eps(x_t, t)
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
    c1 = eta * ((1 - abar_t / abar_s) * (1 - abar_s) / (1 - abar_t)).clamp(min=0).sqrt()
    c2 = (1 - abar_s - c1**2).clamp(min=0).sqrt()
    mean = abar_s.sqrt() * x0 + c2 * eps
    if guide is not None:
        if rows is None:
            rows = torch.arange(x_t.shape[0], device=x_t.device)
        mean = mean + guide(x_t, t, c1**2, rows)
    return mean + c1 * noise


def sample(
    model: DiffusionModel,
    x_t: torch.Tensor,
    levels: torch.Tensor,
    steps: int,
    *,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    clip_denoised: bool = False,
    guide: Guide | None = None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Run each x_t[i] from its level ``levels[i]`` back to 0 in K_i = min(steps, t_i) steps.

    Step j draws one standard normal tensor of the whole batch's shape from ``generator``
    (rows of finished samples are unused), so results depend only on the seed. With
    ``checkpoint=True`` each network call is recomputed in the backward pass, so the memory of
    an exact gradient does not grow with the number of steps.
    """
    table = timestep_table(levels.to(x_t.device), steps)
    x = x_t
    for j in range(table.shape[1] - 1):
        t, s = table[:, j], table[:, j + 1]
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        running = t > 0
        if bool(running.all()):
            x = reverse_step(
                model,
                x,
                t,
                s,
                noise,
                eta=eta,
                clip_denoised=clip_denoised,
                guide=guide,
                checkpoint=checkpoint,
            )
            continue
        rows = running.nonzero().squeeze(1)
        update = reverse_step(
            model,
            x[rows],
            t[rows],
            s[rows],
            noise[rows],
            eta=eta,
            clip_denoised=clip_denoised,
            guide=guide,
            rows=rows,
            checkpoint=checkpoint,
        )
        x = x.index_copy(0, rows, update)
    return x
