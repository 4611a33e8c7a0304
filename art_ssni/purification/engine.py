"""One purification engine: staged forward noising and reverse sampling with gradient modes.

A purifier is a list of :class:`Stage` s: each noises its input to its level (or continues
from it) and runs the reverse chain down to its end level. DiffPure is one stage, GDMP repeats
one, GNS climbs a schedule, DAC runs a stage with a known region down to t_small and a plain
one from there. The noise policy picks a level t_i per sample from the *input* once per call;
every stage level l (start and end) runs at round(t_i * l / t_star), half up, where ``t_star``
is the purifier's reference level, keeping the published ratios between levels. t_i = 0
leaves the sample untouched.

The engine owns the edges for every method: images in [0, 1] map to [-1, 1], the state passes
from stage to stage unclamped (Lee & Kim's re-implementation, official GDMP), and only the
image handed back is clamped to [0, 1] (the API contract).

Gradient modes, used only when a gradient is requested (grad enabled and the input requires
grad); otherwise every call runs the real defence:
- ``full``: exact gradient through every step; each whole reverse step is recomputed in the
  backward pass (activation checkpointing): a step keeps only its input x_t.
- ``surrogate``: run and differentiate ``surrogate_stages`` (same levels, fewer steps).
- ``bpda``: real defence forward, identity backward (Athalye et al. 2018).

Randomness is per sample: a call draws one call seed from its generator and gives every sample
its own stream keyed by (call seed, sample key) (:class:`~art_ssni._rng.SampleStreams`). The key
is the sample's id when the caller gives ``sample_ids`` (its index in the evaluated data set),
else its position in the batch. Every draw of the call (the policy's, the forward noise, each
reverse step's and each hook's) comes from the sample's own stream and is made only for the
samples that use it, so a sample's output and level never depend on the batch size or on the
other samples; without ids they depend on the sample's position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn

from .._rng import RandomSource, SampleStreams, SeedLike, as_generator
from ..diffusion.model import DiffusionModel
from ..diffusion.rounding import round_half_up
from ..diffusion.sampler import (
    SAMPLERS,
    Denoised,
    Guide,
    PerSample,
    StepHooks,
    ddim_chain,
    level_grid,
    sde_chain,
    step_counts,
)
from ..noise.fixed import FixedNoise
from ..validation import check_images, check_number

GRADIENT_MODES = ("full", "surrogate", "bpda")
NoisePolicy = Callable[..., torch.Tensor]


@dataclass(frozen=True, eq=False, repr=False)
class Stage:
    """One stage: noise the input to ``level`` and run the reverse chain down to ``end``.

    The chain takes K_i = min(steps, t_i - e_i) steps or, with ``stride``, K_i =
    ceil((t_i - e_i) / stride) steps on a grid of that stride (:func:`level_grid`). ``level``
    and ``end`` are at the purifier's reference level; each sample runs them scaled to its
    own. ``renoise=False`` continues from the input, which already sits at ``level`` (the
    previous stage's end). ``hooks`` set the stage's own DDIM-form step rule; None runs the
    purifier's sampler and hooks. A plain stage (steps, end 0, renoised, the purifier's rule)
    equals and unpacks as its (level, steps) pair.
    """

    level: int
    steps: int | None = None
    stride: int | None = None
    end: int = 0
    renoise: bool = True
    hooks: StepHooks | None = None

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.stride is None):
            raise ValueError(f"a stage takes exactly one of steps and stride, got {self!r}")
        checked = {"level": check_number(self.level, "stage level", low=1, integer=True)}
        for name in ("steps", "stride"):
            if getattr(self, name) is not None:
                checked[name] = check_number(
                    getattr(self, name), f"stage {name}", low=1, integer=True
                )
        top = checked["level"] - 1
        checked["end"] = check_number(self.end, "stage end", low=0, high=top, integer=True)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def plain(self) -> bool:
        """Whether the stage is the plain (level, steps) pair."""
        return self.stride is None and self.end == 0 and self.renoise and self.hooks is None

    def counts(self, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """K_i: the steps (network rows) of each sample from its start to its end level."""
        return step_counts(start, end, steps=self.steps, stride=self.stride)

    def grid(self, start: torch.Tensor, end: torch.Tensor, *, exact: bool = False) -> torch.Tensor:
        """The (B, max_i K_i + 1) level table of the chain (:func:`level_grid`)."""
        return level_grid(start, end, steps=self.steps, stride=self.stride, exact=exact)

    def _values(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def __iter__(self) -> Iterator[int | None]:
        return iter((self.level, self.steps))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Stage):
            return self._values() == other._values()
        if isinstance(other, tuple):
            return self.plain and (self.level, self.steps) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.level, self.steps) if self.plain else self._values())

    def __repr__(self) -> str:
        optional = (
            ("steps", self.steps, None),
            ("stride", self.stride, None),
            ("end", self.end, 0),
            ("renoise", self.renoise, True),
            ("hooks", self.hooks, None),
        )
        shown = [f"{name}={value!r}" for name, value, default in optional if value != default]
        return f"Stage({', '.join([str(self.level), *shown])})"


Stages = tuple[Stage, ...]


def _as_stages(stages: Sequence[Stage | Sequence[int]], what: str) -> Stages:
    """Stages as given, (level, steps) pairs as plain stages."""
    out = []
    for stage in stages:
        if not isinstance(stage, Stage):
            level, steps = stage
            stage = Stage(
                check_number(level, f"{what} level", low=1, integer=True),
                check_number(steps, f"{what} steps", low=1, integer=True),
            )
        out.append(stage)
    if not out:
        raise ValueError(f"{what} must hold at least one stage or (level, steps) pair")
    return tuple(out)


def _trained_levels(diffusion: DiffusionModel) -> str:
    top = diffusion.max_level
    if top < diffusion.schedule.num_steps:
        return f"the levels 1..{top} that {diffusion.name} was trained for"
    return f"the schedule's {top} levels"


_SDE_REFUSALS = {
    "eta": "eta sets the noise of a DDIM-form step; the reverse SDE has none to set",
    "clip_denoised": "clip_denoised clamps a DDIM-form step's x0_hat; the reverse SDE forms none",
    "denoised": "its x0_hat correction needs a DDIM-form step's x0_hat; the reverse SDE forms none",
    "guide": "its guidance shifts a DDIM-form step's mean; the reverse SDE step has none",
}


class Purifier(nn.Module):
    """Maps images x in [0, 1] (B, C, H, W) to purified images in [0, 1].

    ``stages`` (and ``surrogate_stages``, the attack surrogate) are :class:`Stage` s or plain
    (level, steps) pairs. The purifier's own step rule (for stages without hooks of their own)
    is ``sampler`` ("ddpm": eta = 1 unless given, "ddim": eta = 0 unless given, "sde": the
    reverse VP-SDE, no hooks) with ``clip_denoised``, the x0_hat correction ``denoised`` and
    the mean shift ``guide`` (:class:`~art_ssni.diffusion.sampler.StepHooks`). Subclasses
    declare their stages and hooks, and the per-sample tensors the hooks read
    (:meth:`call_state`, :meth:`stage_state`).
    """

    def __init__(
        self,
        diffusion: DiffusionModel,
        *,
        t_star: int,
        stages: Sequence[Stage | Sequence[int]],
        surrogate_stages: Sequence[Stage | Sequence[int]],
        noise: NoisePolicy | None = None,
        gradient: str = "full",
        sampler: str = "ddpm",
        eta: float | None = None,
        clip_denoised: bool = False,
        denoised: Denoised | None = None,
        guide: Guide | None = None,
        generator: SeedLike = None,
    ) -> None:
        super().__init__()
        if gradient not in GRADIENT_MODES:
            raise ValueError(f"gradient must be one of {GRADIENT_MODES}, got {gradient!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "sde":
            given = {"eta": eta is not None, "clip_denoised": clip_denoised}
            given |= {"denoised": denoised is not None, "guide": guide is not None}
            refused = [_SDE_REFUSALS[name] for name, on in given.items() if on]
            if refused:
                raise ValueError(
                    f"{type(self).__name__} cannot use the 'sde' sampler: {'; '.join(refused)} "
                    "(use 'ddpm' or 'ddim')"
                )
        if eta is not None:
            check_number(eta, "eta", low=0.0, high=1.0)
        check_number(t_star, "t_star", low=1, high=diffusion.max_level, integer=True)
        self.diffusion = diffusion
        self.t_star = int(t_star)
        self.stages = _as_stages(stages, "stages")
        self.surrogate_stages = _as_stages(surrogate_stages, "surrogate_stages")
        for stage in self.stages + self.surrogate_stages:
            if stage.level > diffusion.max_level:
                raise ValueError(f"stage level {stage.level} exceeds {_trained_levels(diffusion)}")
        self.noise = noise if noise is not None else FixedNoise(self.t_star)
        self.gradient = gradient
        self.sampler = sampler
        self.eta = (
            None if sampler == "sde" else float(eta if eta is not None else sampler == "ddpm")
        )
        self.clip_denoised = bool(clip_denoised)
        self.step_hooks = (
            None
            if sampler == "sde"
            else StepHooks(
                eta=self.eta, clip_denoised=self.clip_denoised, denoised=denoised, guide=guide
            )
        )
        self.generator = as_generator(generator)

    def extra_repr(self) -> str:
        return (
            f"t_star={self.t_star}, stages={self.stages}, surrogate_stages="
            f"{self.surrogate_stages}, noise={self.noise!r}, gradient={self.gradient!r}, "
            f"sampler={self.sampler!r}, eta={self.eta}"
        )

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.diffusion.image_shape
        return check_images(
            x, channels=shape[0] if shape else None, size=tuple(shape[1:]) if shape else None
        )

    def streams(
        self, x: torch.Tensor, generator: RandomSource = None, sample_ids: object | None = None
    ) -> SampleStreams:
        """The per-sample random streams of one call on x: ``generator`` itself when it is
        streams, else one call seed drawn from ``generator`` (the purifier's own when None) and
        the keys ``sample_ids`` ((B,) ids or (B, 2) (id, copy) pairs; default: positions)."""
        if isinstance(generator, SampleStreams):
            if sample_ids is not None:
                raise ValueError("give sample_ids or ready streams, not both")
            if len(generator) != x.shape[0]:
                raise ValueError(
                    f"the call has {x.shape[0]} samples but {len(generator)} random streams"
                )
            return generator
        return SampleStreams.for_call(self._generator(generator), x.shape[0], sample_ids)

    def levels(
        self, x: torch.Tensor, generator: RandomSource = None, *, sample_ids: object | None = None
    ) -> torch.Tensor:
        """The per-sample levels the noise policy picks for x (LongTensor of B, no gradient);
        the policy draws from the call's per-sample streams (:meth:`streams`)."""
        self.check_input(x)
        streams = self.streams(x, generator, sample_ids)
        with torch.no_grad():
            levels = self.noise(x.to(self.diffusion.dtype), generator=streams)
        levels = torch.as_tensor(levels, device=x.device)
        if levels.shape != (x.shape[0],):
            raise ValueError(
                f"noise policy returned shape {tuple(levels.shape)} for {x.shape[0]} samples"
            )
        return self._check_levels(levels)

    def _check_levels(self, levels: torch.Tensor) -> torch.Tensor:
        """The policy's levels as a LongTensor; a level that is not a whole number in [0, N]
        is the policy's error, never mapped silently (NaN -> 0 would mean no purification)."""
        top = self.diffusion.max_level
        values = levels.detach().double()
        bad = ~torch.isfinite(values) | (values < 0) | (values > top) | (values != values.round())
        if bool(bad.any()):
            raise ValueError(
                f"noise policy {self.noise!r} returned levels {values[bad][:5].tolist()} "
                f"outside the whole numbers 0..{top} (for {int(bad.sum())} of "
                f"{values.numel()} samples; {_trained_levels(self.diffusion)})"
            )
        return levels.long()

    def _scaled(self, levels: torch.Tensor, level: int) -> torch.Tensor:
        """round(t_i * level / t_star), half up, within the model's levels."""
        return round_half_up(levels * level, self.t_star).clamp(0, self.diffusion.max_level)

    def stage_levels(
        self, levels: torch.Tensor, stages: Sequence[Stage | Sequence[int]] | None = None
    ) -> list[torch.Tensor]:
        """Per-sample start level of each stage: round(t_i * t_s / t_star), half up."""
        stages = self.stages if stages is None else _as_stages(stages, "stages")
        return [self._scaled(levels, stage.level) for stage in stages]

    def stage_ends(
        self, levels: torch.Tensor, stages: Sequence[Stage | Sequence[int]] | None = None
    ) -> list[torch.Tensor]:
        """Per-sample end level of each stage: round(t_i * e_s / t_star), half up."""
        stages = self.stages if stages is None else _as_stages(stages, "stages")
        return [self._scaled(levels, stage.end) for stage in stages]

    def rows(
        self, levels: torch.Tensor, stages: Sequence[Stage | Sequence[int]] | None = None
    ) -> int:
        """Network rows (samples through the network, summed over calls) that purifying at
        these per-sample levels sends: sum over stages of K_i and the stage's
        :meth:`extra_rows`. ``stages`` defaults to the real defence's; the noise policy's own
        network calls (SSNI's scoring) are not included."""
        stages = self.stages if stages is None else _as_stages(stages, "stages")
        levels = self._check_levels(torch.as_tensor(levels))
        starts, ends = self.stage_levels(levels, stages), self.stage_ends(levels, stages)
        return sum(
            int(stage.counts(start, end).sum()) + self.extra_rows(levels.numel())
            for stage, start, end in zip(stages, starts, ends)
        )

    def extra_rows(self, batch: int) -> int:
        """Network rows a stage sends for ``batch`` samples outside its chain (none here;
        MANI-Pure: its reference call)."""
        return 0

    def forward(
        self, x: torch.Tensor, generator: RandomSource = None, *, sample_ids: object | None = None
    ) -> torch.Tensor:
        """Purified images; ``sample_ids`` key each sample's random stream (see the module)."""
        return self.forward_with_levels(x, generator, sample_ids=sample_ids)[0]

    def forward_with_levels(
        self, x: torch.Tensor, generator: RandomSource = None, *, sample_ids: object | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The purified images (as :meth:`forward`, same gradient mode) and the per-sample
        levels (LongTensor of B) the noise policy picked in this very pass."""
        self.check_input(x)
        streams = self.streams(x, generator, sample_ids)
        levels = self.levels(x, streams)
        wants_grad = torch.is_grad_enabled() and x.requires_grad
        if not wants_grad:
            with torch.no_grad():
                return self._check_output(self.purify(x, levels, self.stages, streams)), levels
        if self.gradient == "bpda":
            with torch.no_grad():
                purified = self._check_output(self.purify(x, levels, self.stages, streams))
            return x + (purified - x).detach(), levels
        stages = self.surrogate_stages if self.gradient == "surrogate" else self.stages
        out = self.purify(x, levels, stages, streams, checkpoint=True)
        return self._check_output(out), levels

    def _check_output(self, out: torch.Tensor) -> torch.Tensor:
        """Raise instead of returning NaN or Inf images (a diverged network or guidance)."""
        finite = torch.isfinite(out.detach())
        if not bool(finite.all()):
            raise ValueError(
                f"{type(self).__name__} produced {int((~finite).sum())} non-finite values: the "
                "diffusion network or the guidance diverged (check its weights and settings)"
            )
        return out

    def purify(
        self,
        x: torch.Tensor,
        levels: torch.Tensor,
        stages: Sequence[Stage | Sequence[int]],
        generator: RandomSource = None,
        *,
        checkpoint: bool = False,
    ) -> torch.Tensor:
        """The defence itself: run ``stages`` at the given per-sample levels, no mode logic,
        drawing from the per-sample streams ``generator`` (or streams made from it)."""
        stages = _as_stages(stages, "stages")
        streams = self.streams(x, generator)
        image = 2 * x.to(self.diffusion.dtype) - 1
        state = self.call_state(x, image)
        out = image
        for stage, start, end in zip(
            stages, self.stage_levels(levels, stages), self.stage_ends(levels, stages)
        ):
            out = self.run_stage(out, stage, start, end, state, streams, checkpoint=checkpoint)
        return ((out + 1) / 2).clamp(0, 1).to(x.dtype)

    def run_stage(
        self,
        x: torch.Tensor,
        stage: Stage,
        start: torch.Tensor,
        end: torch.Tensor,
        state: PerSample,
        streams: SampleStreams,
        *,
        checkpoint: bool = False,
    ) -> torch.Tensor:
        """One stage on x (the [-1, 1] scale, unclamped): noise each sample to its start level
        (unless the stage continues from x) and run the chain down to its end level; a sample
        whose start level is 0 is handed back untouched."""
        x_t = x
        if stage.renoise:
            noise = streams.randn(x.shape[1:], device=x.device, dtype=x.dtype)
            x_t = self.noised(x, start, noise)
        per_sample = {**state, **self.stage_state(x, streams)}
        hooks = stage.hooks if stage.hooks is not None else self.step_hooks
        if hooks is None:
            table = stage.grid(start, end, exact=True)
            out = sde_chain(self.diffusion, x_t, table, generator=streams, checkpoint=checkpoint)
        else:
            out = ddim_chain(
                self.diffusion,
                x_t,
                stage.grid(start, end),
                hooks,
                per_sample=per_sample,
                generator=streams,
                checkpoint=checkpoint,
            )
        return torch.where((start > 0).view(-1, 1, 1, 1), out, x)

    def noised(self, x: torch.Tensor, levels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The stage's forward noising of x with the standard normal draw ``noise``
        (q_sample here; MANI-Pure shapes the draw)."""
        return self.diffusion.q_sample(x, levels, noise)

    def call_state(self, x: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample tensors of one call that the hooks read, from the input x in [0, 1] and
        its [-1, 1] image (none here; DAC: its mask and the image)."""
        return {}

    def stage_state(self, x: torch.Tensor, streams: SampleStreams) -> dict[str, torch.Tensor]:
        """Per-sample tensors of one stage that the hooks read, from the stage input x (none
        here; GDMP: its guidance target, MANI-Pure: its reference spectrum). It may draw from
        the per-sample ``streams``, after the stage's forward noise."""
        return {}

    def _generator(self, generator: SeedLike) -> torch.Generator | None:
        return as_generator(generator) if generator is not None else self.generator
