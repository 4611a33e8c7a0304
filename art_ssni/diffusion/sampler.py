"""Reverse samplers over per-sample level tables: short functions over a model callable.

Every sample starts exactly at its own level t_i and takes K_i strided steps down to its end
level (0 unless a stage says otherwise). One batched network call serves all samples still
running at a step, so the rows sent through the network total sum_i K_i: no call is spent on a
repeated or finished index.

Two step rules share one driver (:func:`run_chain`):
- :func:`ddim_mean` / :func:`reverse_step`, the DDIM-form update (eta = 1 is DDPM ancestral
  sampling, eta = 0 is DDIM) on integer levels, with the general mechanisms of
  :class:`StepHooks`;
- :func:`sde_mean` / :func:`sde_step`, one Euler-Maruyama step of the reverse VP-SDE
  (DiffPure's solver) on continuous levels.

Random draws a step needs are made by the driver before the step runs (the step noise z, then
the hooks' draws), so a step is a pure function of its inputs and can be recomputed in the
backward pass. They come from per-sample streams (:class:`~art_ssni._rng.SampleStreams`), drawn
only for the samples still running, so a sample's draws never depend on how many steps its
batch-mates take. Per-sample tensors the hooks read (a mask, a reference image) are handed to the
driver whole; each step sees only the running samples' slices, aligned with x_t.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .._rng import RandomSource, as_streams
from .model import DiffusionModel
from .rounding import round_half_up

PerSample = Mapping[str, torch.Tensor]
"""Tensors with one entry per sample along dimension 0 (a mask, a reference spectrum) that a
step's hooks read; the driver slices them to the running samples."""
Known = Callable[
    [DiffusionModel, torch.Tensor, torch.Tensor, torch.Tensor, PerSample], torch.Tensor
]
"""``known(model, x_t, t, noise, per_sample)`` -> x_t with a known region replaced, typically
M x_t + (1 - M) q_sample(x, t, noise); ``noise`` is a standard normal draw of x_t's shape."""
Denoised = Callable[[DiffusionModel, torch.Tensor, torch.Tensor, PerSample], torch.Tensor]
"""``denoised(model, x0_hat, t, per_sample)`` -> corrected x0_hat (a projection, say)."""
Guide = Callable[
    [DiffusionModel, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, PerSample],
    torch.Tensor,
]
"""``guide(model, x_t, t, var, noise, per_sample)`` -> a shift of the step's mean; ``var`` is
the step's variance c1^2 and ``noise`` a standard normal draw of x_t's shape."""
Step = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], PerSample],
    tuple[torch.Tensor, torch.Tensor],
]
"""``step(x_t, t, s, hook_noise, per_sample)`` -> (mean, scale) of the update to level s."""

SAMPLERS = ("ddpm", "ddim", "sde")


@dataclass(frozen=True)
class StepHooks:
    """What a DDIM-form step does besides the plain update, in this order.

    ``known`` replaces a known region of x_t (inpainting, DAC); ``resample`` = U >= 1 then
    moves x_t forward by U DDPM transitions t -> min(t + U, N) (:func:`forward_jump`) and the
    step is taken from there (DAC's resampling); ``denoised`` corrects x0_hat (MANI-Pure's
    projection) and ``clip_denoised`` clamps it to [-1, 1], after which eps is re-derived from
    the corrected x0_hat; ``guide`` shifts the mean (GDMP); ``eta`` scales the noise (1: DDPM,
    0: DDIM). ``known``, ``resample`` and ``guide`` each take one standard normal draw per step,
    drawn by the driver in that order.
    """

    eta: float = 1.0
    clip_denoised: bool = False
    denoised: Denoised | None = None
    guide: Guide | None = None
    known: Known | None = None
    resample: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {self.eta}")
        if isinstance(self.resample, bool) or not isinstance(self.resample, int):
            raise ValueError(f"resample must be an integer >= 0, got {self.resample!r}")
        if self.resample < 0:
            raise ValueError(f"resample must be an integer >= 0, got {self.resample}")

    @property
    def hook_draws(self) -> int:
        """Standard normal draws the hooks take per step (known region, resampling, guide)."""
        return (self.known is not None) + (self.resample > 0) + (self.guide is not None)


def _whole(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def step_counts(
    high: torch.Tensor,
    low: torch.Tensor,
    *,
    steps: int | None = None,
    stride: int | None = None,
) -> torch.Tensor:
    """K_i, the steps from level high_i down to low_i <= high_i: min(steps, high_i - low_i)
    with ``steps``, ceil((high_i - low_i) / stride) on a grid of ``stride`` (one step when the
    stride exceeds the span); none when high_i = low_i."""
    if (steps is None) == (stride is None):
        raise ValueError("give exactly one of steps and stride")
    if high.shape != low.shape or high.dim() != 1:
        raise ValueError(
            f"high and low must be 1-D of one shape, got {tuple(high.shape)}, {tuple(low.shape)}"
        )
    span = high.long() - low.long()
    if span.numel() and (int(span.min()) < 0 or int(low.min()) < 0):
        raise ValueError("need 0 <= low <= high for every sample")
    if steps is not None:
        return span.clamp(max=_whole(steps, "steps"))
    stride = _whole(stride, "stride")
    return (span + stride - 1) // stride


def level_grid(
    high: torch.Tensor,
    low: torch.Tensor,
    *,
    steps: int | None = None,
    stride: int | None = None,
    exact: bool = False,
) -> torch.Tensor:
    """(B, max_i K_i + 1) table; row i is high_i = tau_0 > ... > tau_{K_i} = low_i, then low_i
    repeated (a finished row has t = s and takes no step). K_i is :func:`step_counts`'s.

    tau_j = low_i + round((high_i - low_i)(K_i - j) / K_i), half up: distinct integer levels,
    stride (high_i - low_i) / K_i >= 1. ``exact``: the unrounded float64 levels (the
    continuous-time solver's uniform grid).
    """
    k = step_counts(high, low, steps=steps, stride=stride)
    span = (high.long() - low.long())[:, None]
    width = int(k.max()) if k.numel() else 0
    j = torch.arange(width + 1, device=high.device)
    remaining = (k[:, None] - j[None, :]).clamp(min=0)
    denom = k.clamp(min=1)[:, None]
    if exact:
        return low.long()[:, None].double() + span.double() * remaining.double() / denom.double()
    return low.long()[:, None] + round_half_up(span * remaining, denom)


def _levels(levels: torch.Tensor) -> torch.Tensor:
    if levels.dim() != 1:
        raise ValueError(f"levels must be a 1-D LongTensor, got shape {tuple(levels.shape)}")
    levels = levels.long()
    if levels.numel() and int(levels.min()) < 0:
        raise ValueError(f"levels must be >= 0, got {int(levels.min())}")
    return levels


def timestep_table(levels: torch.Tensor, steps: int) -> torch.Tensor:
    """:func:`level_grid` from each level t_i to 0 in K_i = min(steps, t_i) steps:
    tau_j = round(t_i (K_i - j) / K_i), half up."""
    _whole(steps, "steps")
    levels = _levels(levels)
    return level_grid(levels, torch.zeros_like(levels), steps=steps)


def level_table(levels: torch.Tensor, steps: int) -> torch.Tensor:
    """Like :func:`timestep_table` but exact: tau_j = t_i (K_i - j) / K_i as float64 levels.

    The continuous-time solver steps on this uniform grid (stride t_i / K_i level units).
    """
    _whole(steps, "steps")
    levels = _levels(levels)
    return level_grid(levels, torch.zeros_like(levels), steps=steps, exact=True)


def stride_table(high: torch.Tensor, low: torch.Tensor, stride: int) -> torch.Tensor:
    """:func:`level_grid` from high_i down to low_i on a grid of ``stride``:
    K_i = ceil((high_i - low_i) / stride), tau_j = low_i + round((high_i - low_i)(K_i - j) / K_i)
    (half up), then low_i repeated."""
    return level_grid(high, low, stride=stride)


def forward_jump(
    model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, u: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """u composed forward DDPM transitions from level t to t + u in one exact draw:
    x_{t+u} = sqrt(abar_{t+u} / abar_t) x_t + sqrt(1 - abar_{t+u} / abar_t) z."""
    ratio = (model.schedule.abar(t + u, x_t.dtype) / model.schedule.abar(t, x_t.dtype)).view(
        -1, 1, 1, 1
    )
    return ratio.sqrt() * x_t + (1 - ratio).clamp(min=0).sqrt() * noise


PLAIN = StepHooks()
"""DDPM ancestral sampling without hooks."""


def ddim_mean(
    model: DiffusionModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    hooks: StepHooks = PLAIN,
    hook_noise: Sequence[torch.Tensor] = (),
    per_sample: PerSample | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic part of :func:`reverse_step`: its mean and its noise scale c1.

    ``hook_noise`` holds the hooks' standard normal draws (:attr:`StepHooks.hook_draws`, in
    the order known region, resampling, guide); ``per_sample`` the hooks' per-sample tensors,
    aligned with x_t.
    """
    if len(hook_noise) != hooks.hook_draws:
        raise ValueError(
            f"these step hooks take {hooks.hook_draws} standard normal draws, got "
            f"{len(hook_noise)} (the chain driver draws them)"
        )
    per_sample = {} if per_sample is None else per_sample
    draws = iter(hook_noise)
    if hooks.known is not None:
        x_t = hooks.known(model, x_t, t, next(draws), per_sample)
    if hooks.resample:
        up = (t + hooks.resample).clamp(max=model.schedule.num_steps)
        x_t, t = forward_jump(model, x_t, t, up - t, next(draws)), up
    shape = (-1, 1, 1, 1)
    abar_t = model.schedule.abar(t, x_t.dtype).view(shape)
    abar_s = model.schedule.abar(s, x_t.dtype).view(shape)
    eps = model.eps(x_t, t)
    x0 = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if hooks.denoised is not None or hooks.clip_denoised:
        if hooks.denoised is not None:
            x0 = hooks.denoised(model, x0, t, per_sample)
        if hooks.clip_denoised:
            x0 = x0.clamp(-1, 1)
        eps = (x_t - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
    c1 = hooks.eta * ((1 - abar_t / abar_s) * (1 - abar_s) / (1 - abar_t)).clamp(min=0).sqrt()
    c2 = (1 - abar_s - c1**2).clamp(min=0).sqrt()
    mean = abar_s.sqrt() * x0 + c2 * eps
    if hooks.guide is not None:
        mean = mean + hooks.guide(model, x_t, t, c1**2, next(draws), per_sample)
    return mean, c1


def reverse_step(
    model: DiffusionModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    noise: torch.Tensor,
    *,
    hook_noise: Sequence[torch.Tensor] = (),
    per_sample: PerSample | None = None,
    **hooks: object,
) -> torch.Tensor:
    """One DDIM-form step from level t to level s < t (eta = 1 is DDPM ancestral sampling).

    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), corrected by ``denoised`` and clamped to
    [-1, 1] with ``clip_denoised``; a corrected x0 re-derives eps = (x_t - sqrt(abar_t) x0) /
    sqrt(1 - abar_t) (guided-diffusion's p_sample and ddim_sample, official GDMP), so with
    eta = 1 the mean is exactly the posterior mean of q(x_s | x_t, x0).
    c1 = eta sqrt((1 - abar_t/abar_s)(1 - abar_s)/(1 - abar_t)); c2 = sqrt(1 - abar_s - c1^2);
    x_s = sqrt(abar_s) x0 + c2 eps + guide + c1 z. ``hooks`` are :class:`StepHooks`' fields.
    """
    mean, c1 = ddim_mean(model, x_t, t, s, StepHooks(**hooks), hook_noise, per_sample)
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


def _step_running(
    step: Step,
    x: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    hook_noise: tuple[torch.Tensor, ...],
    per_sample: PerSample,
    running: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``step`` on the running samples (batch indices ``running``; None: all of them)."""
    if running is not None:
        per_sample = {name: value[running] for name, value in per_sample.items()}
    return step(x, t, s, hook_noise, per_sample)


def run_chain(
    step: Step,
    x: torch.Tensor,
    table: torch.Tensor,
    *,
    per_sample: PerSample | None = None,
    generator: RandomSource = None,
    hook_draws: int = 0,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Drive ``step(x_t, t, s, hook_noise, per_sample) -> (mean, scale)`` along a level
    table; each step's new state is mean + scale z. A sample runs while t > s (a finished
    sample repeats its level and is left as it is).

    At step j every running sample draws one standard normal z of its own shape from its own
    stream, then ``hook_draws`` more (the tuple ``hook_noise``); ``generator`` is the call's
    per-sample streams, or a seed, generator or None they are made from (keyed by position).
    A finished sample draws nothing, so its draws depend only on its own levels and stream.
    The step sees only the running samples: their x_t, t, s, draws and ``per_sample`` slices.
    With ``checkpoint=True`` (and grad enabled) the whole step is recomputed in the backward
    pass: a step keeps only its inputs (x_t, its draws and index vectors), so the memory of an
    exact gradient does not grow with the number of steps.
    """
    if isinstance(hook_draws, bool) or not isinstance(hook_draws, int) or hook_draws < 0:
        raise ValueError(f"hook_draws must be an integer >= 0, got {hook_draws!r}")
    per_sample = {} if per_sample is None else dict(per_sample)
    for name, value in per_sample.items():
        if value.shape[:1] != x.shape[:1]:
            raise ValueError(
                f"per-sample tensor {name!r} has {tuple(value.shape[:1])} samples, x has "
                f"{x.shape[0]}"
            )
    streams = as_streams(generator, x.shape[0])
    for j in range(table.shape[1] - 1):
        t, s = table[:, j], table[:, j + 1]
        is_running = t > s
        if not bool(is_running.any()):
            continue
        if bool(is_running.all()):
            running = None
            x_in = x
        else:
            running = is_running.nonzero()[:, 0]
            x_in, t, s = x[running], t[running], s[running]
        noise, *hook_noise = (
            streams.randn(x.shape[1:], device=x.device, dtype=x.dtype, rows=running)
            for _ in range(1 + hook_draws)
        )
        args = (step, x_in, t, s, tuple(hook_noise), per_sample, running)
        if checkpoint and torch.is_grad_enabled():
            mean, scale = _checkpoint(_step_running, *args, use_reentrant=False)
        else:
            mean, scale = _step_running(*args)
        update = mean + scale * noise
        x = update if running is None else x.index_copy(0, running, update)
    return x


def ddim_chain(
    model: DiffusionModel,
    x_t: torch.Tensor,
    table: torch.Tensor,
    hooks: StepHooks = PLAIN,
    *,
    per_sample: PerSample | None = None,
    generator: RandomSource = None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """DDIM-form steps with ``hooks`` along an integer level table (:func:`run_chain`)."""

    def step(x, t, s, hook_noise, state):
        return ddim_mean(model, x, t, s, hooks, hook_noise, state)

    return run_chain(
        step,
        x_t,
        table,
        per_sample=per_sample,
        generator=generator,
        hook_draws=hooks.hook_draws,
        checkpoint=checkpoint,
    )


def sde_chain(
    model: DiffusionModel,
    x_t: torch.Tensor,
    table: torch.Tensor,
    *,
    generator: RandomSource = None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Euler-Maruyama steps of the reverse VP-SDE along a (float) level table."""

    def step(x, t, s, _hook_noise, _state):
        return sde_mean(model, x, t, s)

    return run_chain(step, x_t, table, generator=generator, checkpoint=checkpoint)


def sample(
    model: DiffusionModel,
    x_t: torch.Tensor,
    levels: torch.Tensor,
    steps: int,
    *,
    sampler: str = "ddpm",
    hooks: StepHooks | None = None,
    per_sample: PerSample | None = None,
    generator: RandomSource = None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Run each x_t[i] from its level ``levels[i]`` back to 0 in K_i = min(steps, t_i) steps.

    ``sampler`` "ddpm" or "ddim" takes DDIM-form steps with ``hooks`` (default: eta = 1 for
    "ddpm", 0 for "ddim"); "sde" takes reverse VP-SDE Euler-Maruyama steps on the exact grid
    t_i (K_i - j) / K_i and no hooks. See :func:`run_chain` for draws and ``checkpoint``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    levels = levels.to(x_t.device)
    if sampler == "sde":
        if hooks is not None or per_sample:
            raise ValueError("the 'sde' sampler takes no step hooks (eta, x0 hooks, guide)")
        table = level_table(levels, steps)
        return sde_chain(model, x_t, table, generator=generator, checkpoint=checkpoint)
    if hooks is None:
        hooks = StepHooks(eta=1.0 if sampler == "ddpm" else 0.0)
    return ddim_chain(
        model,
        x_t,
        timestep_table(levels, steps),
        hooks,
        per_sample=per_sample,
        generator=generator,
        checkpoint=checkpoint,
    )
