"""DiffPure, GDMP and GNS as configurations of the one engine: their stages and hooks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._rng import SampleStreams, SeedLike
from ..diffusion.model import DiffusionModel
from ..diffusion.sampler import PerSample
from ..validation import check_number
from .engine import NoisePolicy, Purifier
from .guidance import GUIDANCE_DISTANCES, distance_gradient


class DiffPure(Purifier):
    """DiffPure (Nie et al. 2022): one run to t* and back.

    Defaults are the CIFAR-10 Linf setting of the DDPM re-implementation: t* = 100 with 100
    reverse steps, and a 20-step surrogate chain for attack gradients. ``surrogate_t_star``
    sets another level for the surrogate, a whole number from 1 to the model's top level
    (ImageNet: t = 200 with 10 steps around t* = 150); None means t*. Under SSNI it scales
    with the sample's level like a GNS stage.
    """

    def __init__(
        self,
        diffusion: DiffusionModel,
        *,
        noise: NoisePolicy | None = None,
        t_star: int = 100,
        steps: int = 100,
        gradient: str = "full",
        surrogate_steps: int = 20,
        surrogate_t_star: int | None = None,
        sampler: str = "ddpm",
        eta: float | None = None,
        clip_denoised: bool = False,
        generator: SeedLike = None,
    ) -> None:
        if surrogate_t_star is not None:
            top = diffusion.max_level
            check_number(surrogate_t_star, "surrogate_t_star", low=1, high=top, integer=True)
        check_number(surrogate_steps, "surrogate_steps", low=1, integer=True)
        super().__init__(
            diffusion,
            t_star=t_star,
            stages=[(t_star, steps)],
            surrogate_stages=[
                (t_star if surrogate_t_star is None else surrogate_t_star, surrogate_steps)
            ],
            noise=noise,
            gradient=gradient,
            sampler=sampler,
            eta=eta,
            clip_denoised=clip_denoised,
            generator=generator,
        )


@dataclass(frozen=True)
class DistanceGuidance:
    """GDMP's guided mean: mu - a sqrt(1 - abar_t) / sqrt(abar_t) var_t grad D(x_t, y_t).

    y_t is the stage input ``per_sample["target"]`` noised to level t with the step's guide
    draw; D is the mean squared error or 1 - SSIM (``distance``) of *each sample* (official
    GDMP averages the MSE over the batch, so one sample's guidance depends on its batch-mates:
    not copied). The scale sqrt(1 - abar_t) / (m sqrt(abar_t)) is official GDMP's, with
    a = ``scale`` = 1/m.
    """

    distance: str
    scale: float

    def __call__(
        self,
        model: DiffusionModel,
        x_t: torch.Tensor,
        t: torch.Tensor,
        var: torch.Tensor,
        noise: torch.Tensor,
        per_sample: PerSample,
    ) -> torch.Tensor:
        y_t = model.q_sample(per_sample["target"], t, noise)
        abar = model.schedule.abar(t, x_t.dtype).view(-1, 1, 1, 1)
        scale = self.scale * ((1 - abar) / abar).sqrt()
        return -scale * var * distance_gradient(self.distance, x_t, y_t)


class GDMP(Purifier):
    """GDMP (Wang et al. 2022): ``runs`` purifications in sequence, optionally guided.

    Defaults are the CIFAR-10 PGD setting: 4 runs of 36 steps from t* = 36 without guidance
    (the strongest public evaluation uses none); the BPDA setting is runs=2, t_star=steps=50.
    With guidance ``"mse"`` or ``"ssim"`` each reverse step's mean moves toward the run's input
    noised to the step's level (:class:`DistanceGuidance`). x0_hat is clamped to [-1, 1]
    inside each step (``clip_denoised``, official GDMP) unless the sampler is "sde". Under SSNI
    every run uses the sample's level.
    """

    def __init__(
        self,
        diffusion: DiffusionModel,
        *,
        noise: NoisePolicy | None = None,
        t_star: int = 36,
        runs: int = 4,
        steps: int = 36,
        gradient: str = "full",
        surrogate_steps: int = 6,
        guidance: str = "none",
        guidance_scale: float = 1000.0,
        sampler: str = "ddpm",
        eta: float | None = None,
        clip_denoised: bool | None = None,
        generator: SeedLike = None,
    ) -> None:
        check_number(runs, "runs", low=1, integer=True)
        if guidance != "none" and guidance not in GUIDANCE_DISTANCES:
            raise ValueError(
                f"guidance must be 'none' or one of {sorted(GUIDANCE_DISTANCES)}, got {guidance!r}"
            )
        check_number(guidance_scale, "guidance_scale", low=0.0)
        if guidance != "none" and sampler == "sde":
            raise ValueError(
                "GDMP cannot use the 'sde' sampler with guidance: guidance shifts a DDIM-form "
                "step's mean, the reverse SDE step has none (use 'ddpm' or 'ddim')"
            )
        if clip_denoised is None:
            clip_denoised = sampler != "sde"
        guided = guidance != "none" and guidance_scale != 0
        check_number(surrogate_steps, "surrogate_steps", low=1, integer=True)
        super().__init__(
            diffusion,
            t_star=t_star,
            stages=[(t_star, steps)] * runs,
            surrogate_stages=[(t_star, surrogate_steps)] * runs,
            noise=noise,
            gradient=gradient,
            sampler=sampler,
            eta=eta,
            clip_denoised=clip_denoised,
            guide=DistanceGuidance(guidance, float(guidance_scale)) if guided else None,
            generator=generator,
        )
        self.runs = runs
        self.guidance = guidance
        self.guidance_scale = float(guidance_scale)

    def stage_state(self, x: torch.Tensor, streams: SampleStreams) -> dict[str, torch.Tensor]:
        """The guidance target: the run's input x."""
        if self.step_hooks is None or self.step_hooks.guide is None:
            return {}
        return {"target": x if torch.is_grad_enabled() else x.detach()}


GNS_CIFAR10_STAGES = ((30, 30),) * 4 + ((50, 50),) * 2 + ((125, 125),) * 2
GNS_IMAGENET_STAGES = ((30, 30),) * 4 + ((50, 50),) * 2 + ((200, 200),) * 2
GNS_SURROGATE_STAGES = ((30, 1), (50, 1), (125, 5))


class GNS(Purifier):
    """GNS (gradual noise schedule): a climbing list of (level, steps) stages.

    Defaults are the CIFAR-10 setting 30,30,30,30,50,50,125,125 with as many steps as the level,
    and an attack surrogate of 30, 50, 125 with 1, 1, 5 steps. The published prediction is a
    majority vote over ``votes`` = 10 purifications; the vote belongs to the classifier side.
    ``t_star`` defaults to the largest stage level: a policy's level t_i sets that stage and
    every other stage scales with it (t_s t_i / t_star).
    """

    def __init__(
        self,
        diffusion: DiffusionModel,
        *,
        noise: NoisePolicy | None = None,
        stages: Sequence[Sequence[int]] = GNS_CIFAR10_STAGES,
        surrogate_stages: Sequence[Sequence[int]] = GNS_SURROGATE_STAGES,
        t_star: int | None = None,
        gradient: str = "full",
        votes: int = 10,
        sampler: str = "ddpm",
        eta: float | None = None,
        clip_denoised: bool = False,
        generator: SeedLike = None,
    ) -> None:
        check_number(votes, "votes", low=1, integer=True)
        t_star = t_star if t_star is not None else max(int(t) for t, _ in stages)
        super().__init__(
            diffusion,
            t_star=t_star,
            stages=stages,
            surrogate_stages=surrogate_stages,
            noise=noise,
            gradient=gradient,
            sampler=sampler,
            eta=eta,
            clip_denoised=clip_denoised,
            generator=generator,
        )
        self.votes = votes
