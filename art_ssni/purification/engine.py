"""One purification engine: staged forward noising and reverse sampling with gradient modes.

A purifier is a list of stages (level, steps): each stage noises its input to the level and
runs the reverse chain back to 0; DiffPure is one stage, GDMP repeats one, GNS climbs a
schedule. The noise policy picks a level t_i per sample from the *input* once per call; the
stage with the purifier's reference level ``t_star`` runs at t_i and every other stage s at
round(t_i * t_s / t_star), keeping the published ratios between stages. A stage runs
K_i = min(K_s, t_i) steps, and t_i = 0 leaves the sample untouched.

Gradient modes (DESIGN section 3), used only when a gradient is requested (grad enabled and
the input requires grad); otherwise every call runs the real defence:
- ``full``: exact gradient through every step; each whole reverse step is recomputed in the
  backward pass (activation checkpointing): a step keeps only its input x_t.
- ``surrogate``: run and differentiate ``surrogate_stages`` (same levels, fewer steps).
- ``bpda``: real defence forward, identity backward (Athalye et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .._rng import SeedLike, as_generator, randn
from ..diffusion.model import DiffusionModel
from ..diffusion.sampler import SAMPLERS, Denoised, Guide, sample
from ..noise.fixed import FixedNoise
from ..validation import check_images, check_number

GRADIENT_MODES = ("full", "surrogate", "bpda")
Stages = tuple[tuple[int, int], ...]
NoisePolicy = Callable[..., torch.Tensor]


def _as_stages(stages: Sequence[Sequence[int]], what: str) -> Stages:
    out = tuple(
        (
            check_number(t, f"{what} level", low=1, integer=True),
            check_number(k, f"{what} steps", low=1, integer=True),
        )
        for t, k in stages
    )
    if not out:
        raise ValueError(f"{what} must hold at least one (level, steps) pair")
    for t, k in out:
        if t < 1 or k < 1:
            raise ValueError(f"{what}: levels and steps must be >= 1, got ({t}, {k})")
    return out


def _trained_levels(diffusion: DiffusionModel) -> str:
    top = diffusion.max_level
    if top < diffusion.schedule.num_steps:
        return f"the levels 1..{top} that {diffusion.name} was trained for"
    return f"the schedule's {top} levels"


class Purifier(nn.Module):
    """Maps images x in [0, 1] (B, C, H, W) to purified images in [0, 1]."""

    def __init__(
        self,
        diffusion: DiffusionModel,
        *,
        t_star: int,
        stages: Sequence[Sequence[int]],
        surrogate_stages: Sequence[Sequence[int]],
        noise: NoisePolicy | None = None,
        gradient: str = "full",
        sampler: str = "ddpm",
        eta: float | None = None,
        clip_denoised: bool = False,
        generator: SeedLike = None,
    ) -> None:
        super().__init__()
        if gradient not in GRADIENT_MODES:
            raise ValueError(f"gradient must be one of {GRADIENT_MODES}, got {gradient!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "sde" and (eta is not None or clip_denoised):
            raise ValueError("the 'sde' sampler takes neither eta nor clip_denoised")
        if eta is not None:
            check_number(eta, "eta", low=0.0, high=1.0)
        check_number(t_star, "t_star", low=1, high=diffusion.max_level, integer=True)
        self.diffusion = diffusion
        self.t_star = int(t_star)
        self.stages = _as_stages(stages, "stages")
        self.surrogate_stages = _as_stages(surrogate_stages, "surrogate_stages")
        for t, _ in self.stages + self.surrogate_stages:
            if t > diffusion.max_level:
                raise ValueError(f"stage level {t} exceeds {_trained_levels(diffusion)}")
        self.noise = noise if noise is not None else FixedNoise(self.t_star)
        self.gradient = gradient
        self.sampler = sampler
        self.eta = (
            None if sampler == "sde" else float(eta if eta is not None else sampler == "ddpm")
        )
        self.clip_denoised = bool(clip_denoised)
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

    def levels(self, x: torch.Tensor, generator: SeedLike = None) -> torch.Tensor:
        """The per-sample levels the noise policy picks for x (LongTensor of B, no gradient)."""
        self.check_input(x)
        generator = self._generator(generator)
        with torch.no_grad():
            levels = self.noise(x.to(self.diffusion.dtype), generator=generator)
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

    def stage_levels(
        self, levels: torch.Tensor, stages: Stages | None = None
    ) -> list[torch.Tensor]:
        """Per-sample level of each stage: round(t_i * t_s / t_star), half up."""
        stages = self.stages if stages is None else stages
        top = self.diffusion.max_level
        return [
            ((2 * levels * t + self.t_star) // (2 * self.t_star)).clamp(0, top) for t, _ in stages
        ]

    def forward(self, x: torch.Tensor, generator: SeedLike = None) -> torch.Tensor:
        generator = self._generator(generator)
        levels = self.levels(x, generator)
        wants_grad = torch.is_grad_enabled() and x.requires_grad
        if not wants_grad:
            with torch.no_grad():
                return self._check_output(self.purify(x, levels, self.stages, generator))
        if self.gradient == "bpda":
            with torch.no_grad():
                purified = self._check_output(self.purify(x, levels, self.stages, generator))
            return x + (purified - x).detach()
        stages = self.surrogate_stages if self.gradient == "surrogate" else self.stages
        return self._check_output(self.purify(x, levels, stages, generator, checkpoint=True))

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
        stages: Stages,
        generator: torch.Generator | None = None,
        *,
        checkpoint: bool = False,
    ) -> torch.Tensor:
        """The defence itself: run ``stages`` at the given per-sample levels, no mode logic.

        The state passes from stage to stage unclamped, as in Lee & Kim's re-implementation and
        official GDMP; only the image handed back is clamped to [0, 1] (the API contract).
        """
        out = 2 * x.to(self.diffusion.dtype) - 1
        for (_, steps), stage_levels in zip(stages, self.stage_levels(levels, stages)):
            out = self.run_stage(out, stage_levels, steps, generator, checkpoint=checkpoint)
        return ((out + 1) / 2).clamp(0, 1).to(x.dtype)

    def run_stage(
        self,
        x: torch.Tensor,
        levels: torch.Tensor,
        steps: int,
        generator: torch.Generator | None,
        *,
        checkpoint: bool = False,
    ) -> torch.Tensor:
        """Noise x (the [-1, 1] scale, unclamped) to each sample's level and denoise it back."""
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_t = self.noised(x, levels, noise)
        x0 = sample(
            self.diffusion,
            x_t,
            levels,
            steps,
            sampler=self.sampler,
            eta=self.eta,
            generator=generator,
            clip_denoised=self.clip_denoised,
            denoised=self.denoised(x, levels, generator),
            guide=self.guide(x),
            checkpoint=checkpoint,
        )
        return torch.where((levels > 0).view(-1, 1, 1, 1), x0, x)

    def guide(self, x: torch.Tensor) -> Guide | None:
        """Guidance toward the stage input x (none here; GDMP overrides)."""
        return None

    def noised(self, x: torch.Tensor, levels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The stage's forward noising of x with the standard normal draw ``noise``
        (q_sample here; MANI-Pure shapes the draw)."""
        return self.diffusion.q_sample(x, levels, noise)

    def denoised(
        self, x: torch.Tensor, levels: torch.Tensor, generator: torch.Generator | None
    ) -> Denoised | None:
        """A correction of x0_hat at every reverse step of a stage with input x (none here;
        MANI-Pure overrides). It may draw from ``generator`` once, before the chain."""
        return None

    def _generator(self, generator: SeedLike) -> torch.Generator | None:
        return as_generator(generator) if generator is not None else self.generator
