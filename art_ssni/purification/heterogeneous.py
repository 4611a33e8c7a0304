"""Heterogeneous noise on the one engine: DAC (by region) and MANI-Pure (by frequency).

Both use only the engine's general mechanisms: DAC two stages, the first with a known-region
hook and resampling (forward transitions before each step) in its DDIM-form step
(:class:`~art_ssni.diffusion.sampler.StepHooks`) on a strided grid; MANI-Pure the engine's
forward-noising override and an x0_hat correction (``denoised``) at every step. Per-sample
levels (SSNI), the [-1, 1] edges, row accounting and the gradient modes are the engine's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._rng import SampleStreams, SeedLike
from ..diffusion.model import DiffusionModel
from ..diffusion.sampler import PerSample, StepHooks
from ..noise.attention import AttentionMask
from ..noise.spectral import SpectralNoise
from ..validation import check_number
from .engine import NoisePolicy, Purifier, Stage

Mask = Callable[[torch.Tensor], torch.Tensor]


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    return int(check_number(value, name, low=minimum, integer=True))


def keep_attended(
    model: DiffusionModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    per_sample: PerSample,
) -> torch.Tensor:
    """DAC's known region: M x_t + (1 - M) q_sample(x, t, z), with M = ``per_sample["mask"]``
    (1 on attended pixels) and x = ``per_sample["image"]``, the input on [-1, 1]: attended
    pixels keep the chain's state, the others are the input freshly noised to level t."""
    mask = per_sample["mask"]
    return mask * x_t + (1 - mask) * model.q_sample(per_sample["image"], t, noise)


def dac_stages(t_large: int, t_small: int, stride: int, resample: int) -> tuple[Stage, Stage]:
    """DAC's two stages on a grid of ``stride``: t_large -> t_small with the known region,
    ``resample`` forward transitions and a deterministic DDIM step (eta = 0), then t_small -> 0
    continuing from there with the purifier's sampler."""
    hooks = StepHooks(eta=0.0, known=keep_attended, resample=resample)
    return (
        Stage(t_large, stride=stride, end=t_small, hooks=hooks),
        Stage(t_small, stride=stride, renoise=False),
    )


_MASK_DEFAULTS = {
    "mask_layers": (),
    "threshold": 0.9,
    "top_fraction": None,
    "mask_mean": None,
    "mask_std": None,
}


class DAC(Purifier):
    """DAC, "Divide and Conquer" (Pei et al., CVPR 2025, arXiv 2503.01407).

    ``mask(x)`` (x in [0, 1]) gives (B, 1, H, W) with 1 on attended pixels (an
    :class:`~art_ssni.noise.AttentionMask` or any callable); it is computed without gradient.
    Instead of ``mask``, give ``classifier`` and the plain mask settings: DAC builds
    ``AttentionMask(classifier, mask_layers, threshold=, top_fraction=, mean=mask_mean,
    std=mask_std)``.

    Forward: noise the whole image to t_large. Stage 1, on a grid of ``stride`` from t_large
    down to t_small: replace the unmasked region by the input freshly noised to the current
    level t, move forward ``resample`` DDPM transitions to t + U, and take one deterministic
    DDIM step (eta = 0) from t + U to the next grid level. Stage 2: steps of ``sampler`` on
    the same grid from t_small to 0 ("ddpm", the published DAC, by default; "ddim" or "sde"
    change only this stage, with ``eta`` as DiffPure's). One network call per grid step: the
    CIFAR-10 defaults (stride 2 from 200) send exactly 100 rows per image.

    Under a noise policy the sample's level t_i sets t_large and t_small keeps the published
    ratio, round(t_i t_small / t_large); :class:`~art_ssni.noise.FixedNoise` (the default)
    reproduces the paper. The attack surrogate is the same process with ``surrogate_stride``
    (2 calls on CIFAR-10; a stride larger than a stage's span is one step). The published
    prediction is a majority vote over ``votes`` purifications (the classifier side's).
    """

    def __init__(
        self,
        diffusion: DiffusionModel,
        *,
        mask: Mask | None = None,
        classifier: nn.Module | None = None,
        mask_layers: tuple[str, ...] = (),
        threshold: float = 0.9,
        top_fraction: float | None = None,
        mask_mean: tuple[float, ...] | None = None,
        mask_std: tuple[float, ...] | None = None,
        noise: NoisePolicy | None = None,
        t_large: int = 200,
        t_small: int = 100,
        stride: int = 2,
        resample: int = 3,
        gradient: str = "full",
        surrogate_stride: int = 100,
        votes: int = 20,
        sampler: str = "ddpm",
        eta: float | None = None,
        generator: SeedLike = None,
    ) -> None:
        mask = _dac_mask(
            mask, classifier, mask_layers, threshold, top_fraction, mask_mean, mask_std
        )
        _positive_int(t_small, "t_small")
        _positive_int(t_large, "t_large")
        if t_small >= t_large:
            raise ValueError(f"need t_small < t_large, got {t_small} and {t_large}")
        _positive_int(stride, "stride")
        _positive_int(surrogate_stride, "surrogate_stride")
        _positive_int(resample, "resample", minimum=0)
        _positive_int(votes, "votes")
        super().__init__(
            diffusion,
            t_star=t_large,
            stages=dac_stages(t_large, t_small, stride, resample),
            surrogate_stages=dac_stages(t_large, t_small, surrogate_stride, resample),
            noise=noise,
            gradient=gradient,
            sampler=sampler,
            eta=eta,
            generator=generator,
        )
        self.mask = mask
        self.t_large, self.t_small = t_large, t_small
        self.stride, self.surrogate_stride = stride, surrogate_stride
        self.resample = resample
        self.votes = votes

    def extra_repr(self) -> str:
        return (
            f"t_large={self.t_large}, t_small={self.t_small}, stride={self.stride}, "
            f"resample={self.resample}, surrogate_stride={self.surrogate_stride}, "
            f"mask={self.mask!r}, noise={self.noise!r}, gradient={self.gradient!r}, "
            f"sampler={self.sampler!r}, votes={self.votes}"
        )

    def region(self, x: torch.Tensor) -> torch.Tensor:
        """The mask of images x in [0, 1], checked: (B, 1, H, W) with values in [0, 1]."""
        with torch.no_grad():
            mask = torch.as_tensor(self.mask(x.detach())).to(x.device, self.diffusion.dtype)
        expected = (x.shape[0], 1, *x.shape[-2:])
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask must have shape {expected}, got {tuple(mask.shape)}")
        if not bool(((mask >= 0) & (mask <= 1)).all()):
            raise ValueError("mask values must lie in [0, 1]")
        return mask

    def call_state(self, x: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mask of x and the image: what :func:`keep_attended` reads."""
        return {"mask": self.region(x), "image": image}


def _dac_mask(
    mask: Mask | None,
    classifier: nn.Module | None,
    mask_layers: Sequence[str],
    threshold: float,
    top_fraction: float | None,
    mask_mean: Sequence[float] | None,
    mask_std: Sequence[float] | None,
) -> Mask:
    """DAC's mask: the callable given, or the AttentionMask the plain settings describe."""
    settings = {
        "mask_layers": tuple(mask_layers),
        "threshold": threshold,
        "top_fraction": top_fraction,
        "mask_mean": mask_mean,
        "mask_std": mask_std,
    }
    changed = [name for name, value in settings.items() if value != _MASK_DEFAULTS[name]]
    if mask is not None:
        if classifier is not None or changed:
            given = ["classifier"] * (classifier is not None) + changed
            raise ValueError(
                "DAC takes either mask= or classifier= with plain mask settings, not both "
                f"(got mask= and {', '.join(given)})"
            )
        if not callable(mask):
            raise ValueError(f"mask must be a callable x -> (B, 1, H, W), got {mask!r}")
        return mask
    if classifier is None:
        raise ValueError(
            "DAC needs mask= (a callable x -> (B, 1, H, W)) or the classifier its attention "
            "mask reads (classifier= with mask_layers=)"
        )
    if isinstance(mask_layers, str) or not mask_layers:
        raise ValueError(
            "DAC's attention mask needs mask_layers, the classifier's block names, got "
            f"{mask_layers!r}"
        )
    return AttentionMask(
        classifier,
        tuple(mask_layers),
        threshold=threshold,
        top_fraction=top_fraction,
        mean=mask_mean,
        std=mask_std,
    )


def low_frequency_disk(height: int, width: int, radius: float, device=None) -> torch.Tensor:
    """Flat indices of the DFT frequencies within ``radius`` (in frequency-index units) of DC
    on the centred spectrum; the set is symmetric under k -> -k, so a real image stays real."""
    fy = torch.fft.fftfreq(height, device=device)[:, None] * height
    fx = torch.fft.fftfreq(width, device=device)[None, :] * width
    return ((fy**2 + fx**2).sqrt() <= radius).flatten().nonzero()[:, 0]


def phase_projection(
    x0: torch.Tensor, reference: torch.Tensor, disk: torch.Tensor, delta: float
) -> torch.Tensor:
    """FreqPure-style x0_hat correction on the frequencies ``disk`` (flat indices):
    amplitude := |reference spectrum|, phase := phi_ref + clip(wrap(phi - phi_ref), +-delta),
    a real projection of the phase onto [phi_ref - delta, phi_ref + delta] (a real-valued
    frequency, DC or Nyquist, keeps its phase when within delta, else takes phi_ref, so the
    image stays real); other frequencies are kept. ``reference`` is the reference image's
    DFT2 (complex, x0's shape)."""
    height, width = x0.shape[-2:]
    spec = torch.fft.fft2(x0).flatten(-2)
    ref = reference.flatten(-2)[..., disk]
    offset = torch.angle(spec[..., disk] * ref.conj())
    row, col = disk // width, disk % width
    real = ((2 * row) % height == 0) & ((2 * col) % width == 0)
    offset = torch.where(real & (offset.abs() > delta), 0.0, offset.clamp(-delta, delta))
    projected = ref * torch.polar(torch.ones_like(offset), offset)
    spec = spec.clone()
    spec[..., disk] = projected
    return torch.fft.ifft2(spec.view(x0.shape)).real.to(x0.dtype)


@dataclass(frozen=True)
class PhaseProjection:
    """MANI-Pure's x0_hat correction: :func:`phase_projection` inside the low-frequency disk
    of ``radius`` toward the reference spectrum ``per_sample["reference"]``."""

    radius: float
    delta: float

    def __call__(
        self, model: DiffusionModel, x0: torch.Tensor, t: torch.Tensor, per_sample: PerSample
    ) -> torch.Tensor:
        disk = low_frequency_disk(*x0.shape[-2:], self.radius, device=x0.device)
        return phase_projection(x0, per_sample["reference"], disk, self.delta)


class MANIPure(Purifier):
    """MANI-Pure (arXiv 2509.25082), reconstructed from the paper's main text (no public code).

    x_t = sqrt(abar_t) x + sqrt(1 - abar_t) spectral(x, z) at the sample's level (fixed t* or
    an SSNI policy's), then the reverse chain of ``sampler`` ("ddpm" or "ddim", with ``eta``
    and ``clip_denoised`` as DiffPure's) with K = min(steps, t_i) steps, correcting x0_hat at
    every step by :class:`PhaseProjection` inside the low-frequency disk of ``radius`` toward
    a reference: the input noised to ``reference_level`` and denoised in one network call
    (FreqPure's reference; one extra row per image and stage). FreqPure's public code replaces
    the phase before clipping it, so its clip does nothing: not copied. ``surrogate_steps``
    sets the attack surrogate's chain (same level). The spectral noise is
    ``SpectralNoise(bands=, gamma=, mode=spectral_mode)`` unless ``spectral`` gives one.
    """

    def __init__(
        self,
        diffusion: DiffusionModel,
        *,
        noise: NoisePolicy | None = None,
        t_star: int = 100,
        steps: int = 100,
        spectral: SpectralNoise | None = None,
        bands: int = 8,
        gamma: float = 1.8,
        spectral_mode: str = "shaped",
        radius: float = 10.0,
        delta: float = 0.3,
        reference_level: int = 10,
        gradient: str = "full",
        surrogate_steps: int = 20,
        sampler: str = "ddpm",
        eta: float | None = None,
        clip_denoised: bool = False,
        generator: SeedLike = None,
    ) -> None:
        check_number(radius, "radius", low=0.0)
        check_number(delta, "delta", low=0.0, high=torch.pi)
        _positive_int(reference_level, "reference_level")
        if reference_level > diffusion.max_level:
            raise ValueError(
                f"reference_level {reference_level} exceeds the model's top level "
                f"{diffusion.max_level}"
            )
        if spectral is None:
            spectral = SpectralNoise(bands=bands, gamma=gamma, mode=spectral_mode)
        elif (bands, gamma, spectral_mode) != (8, 1.8, "shaped"):
            raise ValueError(
                "MANIPure takes either spectral= or bands/gamma/spectral_mode, not both (got "
                f"spectral={spectral!r} and bands={bands}, gamma={gamma}, "
                f"spectral_mode={spectral_mode!r})"
            )
        elif not callable(spectral):
            raise ValueError(f"spectral must be callable (x, z) -> noise, got {spectral!r}")
        check_number(surrogate_steps, "surrogate_steps", low=1, integer=True)
        super().__init__(
            diffusion,
            t_star=t_star,
            stages=[(t_star, steps)],
            surrogate_stages=[(t_star, surrogate_steps)],
            noise=noise,
            gradient=gradient,
            sampler=sampler,
            eta=eta,
            clip_denoised=clip_denoised,
            denoised=PhaseProjection(float(radius), float(delta)),
            generator=generator,
        )
        self.spectral = spectral
        self.radius, self.delta = float(radius), float(delta)
        self.reference_level = reference_level

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, spectral={self.spectral!r}, radius={self.radius}, "
            f"delta={self.delta}, reference_level={self.reference_level}"
        )

    def noised(self, x: torch.Tensor, levels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x + sqrt(1 - abar_t) spectral(x, z)."""
        abar = self.diffusion.schedule.abar(levels, x.dtype).view(-1, 1, 1, 1)
        return abar.sqrt() * x + (1 - abar).sqrt() * self.spectral(x, noise)

    def reference(self, x: torch.Tensor, streams: SampleStreams) -> torch.Tensor:
        """The input noised to ``reference_level`` (each sample from its own stream) and
        denoised in one network call."""
        model = self.diffusion
        level = torch.full((x.shape[0],), self.reference_level, device=x.device)
        x_r = model.q_sample(x, level, streams.randn(x.shape[1:], device=x.device, dtype=x.dtype))
        abar = model.schedule.abar(level, x.dtype).view(-1, 1, 1, 1)
        return (x_r - (1 - abar).sqrt() * model.eps(x_r, level)) / abar.sqrt()

    def stage_state(self, x: torch.Tensor, streams: SampleStreams) -> dict[str, torch.Tensor]:
        """The reference spectrum DFT2(:meth:`reference`) of the stage input x."""
        return {"reference": torch.fft.fft2(self.reference(x, streams))}

    def extra_rows(self, batch: int) -> int:
        """The reference call: one row per sample and stage."""
        return batch
