"""Heterogeneous noise on the one engine: DAC (by region) and MANI-Pure (by frequency).

Both use only the sampler's general mechanisms: DAC a known-region hook and a resampling
detour in the DDIM-form step (:func:`~art_ssni.diffusion.sampler.ddim_mean`) driven by
:func:`~art_ssni.diffusion.sampler.run_chain` on a strided level table; MANI-Pure the
engine's forward-noising override and an x0_hat correction (``denoised``) at every step.
Per-sample levels (SSNI), row accounting and the gradient modes are the engine's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._rng import SeedLike, randn
from ..diffusion.model import DiffusionModel
from ..diffusion.sampler import Denoised, ddim_mean, run_chain, stride_table
from ..noise.spectral import SpectralNoise
from ..validation import check_number
from .engine import NoisePolicy, Purifier, Stages

Mask = Callable[[torch.Tensor], torch.Tensor]


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    return int(check_number(value, name, low=minimum, integer=True))


class DAC(Purifier):
    """DAC, "Divide and Conquer" (Pei et al., CVPR 2025, arXiv 2503.01407).

    ``mask(x)`` (x in [0, 1]) gives (B, 1, H, W) with 1 on attended pixels (an
    :class:`~art_ssni.noise.AttentionMask` or any callable); it is computed without gradient.
    Forward: noise the whole image to t_large. Stage 1, on a grid of ``stride`` from t_large
    down to t_small: replace the unmasked region by the input freshly noised to the current
    level t, move forward ``resample`` DDPM transitions to t + U, and take one deterministic
    DDIM step (eta = 0) from t + U to the next grid level. Stage 2: DDPM steps on the same
    grid from t_small to 0. One network call per grid step: the CIFAR-10 defaults (stride 2
    from 200) send exactly 100 rows per image.

    Under a noise policy the sample's level t_i sets t_large and t_small keeps the published
    ratio, round(t_i t_small / t_large); :class:`~art_ssni.noise.FixedNoise` (the default)
    reproduces the paper. The attack surrogate is the same process with ``surrogate_stride``
    (2 calls on CIFAR-10; a stride larger than a stage's span is one step). The published
    prediction is a majority vote over ``votes`` purifications (the classifier side's).
    ``stages`` hold (t_large, grid stride).
    """

    def __init__(
        self,
        diffusion: DiffusionModel,
        *,
        mask: Mask,
        noise: NoisePolicy | None = None,
        t_large: int = 200,
        t_small: int = 100,
        stride: int = 2,
        resample: int = 3,
        gradient: str = "full",
        surrogate_stride: int = 100,
        votes: int = 20,
        generator: SeedLike = None,
    ) -> None:
        if not callable(mask):
            raise ValueError(f"mask must be a callable x -> (B, 1, H, W), got {mask!r}")
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
            stages=[(t_large, stride)],
            surrogate_stages=[(t_large, surrogate_stride)],
            noise=noise,
            gradient=gradient,
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
            f"votes={self.votes}"
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

    def purify(
        self,
        x: torch.Tensor,
        levels: torch.Tensor,
        stages: Stages,
        generator: torch.Generator | None = None,
        *,
        checkpoint: bool = False,
    ) -> torch.Tensor:
        """Both DAC stages at the per-sample levels, on the grid stride held in ``stages``."""
        ((_, stride),) = stages
        (high,) = self.stage_levels(levels, stages)
        low = (2 * high * self.t_small + self.t_large) // (2 * self.t_large)
        mask = self.region(x)
        model = self.diffusion
        dtype = x.dtype
        x = 2 * x.to(model.dtype) - 1
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_t = model.q_sample(x, high, noise)

        def known(x_t, t, rows, fresh):
            keep = mask[rows]
            return keep * x_t + (1 - keep) * model.q_sample(x[rows], t, fresh)

        def resampling(x_t, t, s, aux, rows):
            return ddim_mean(
                model, x_t, t, s, eta=0.0, known=known, known_noise=aux[0],
                detour=self.resample, detour_noise=aux[-1], rows=rows,
            )  # fmt: skip

        def plain(x_t, t, s, _aux, rows):
            return ddim_mean(model, x_t, t, s, eta=1.0, rows=rows)

        draws = 1 + bool(self.resample)
        x_low = run_chain(
            resampling,
            x_t,
            stride_table(high, low, stride),
            generator=generator,
            draws=draws,
            checkpoint=checkpoint,
        )
        out = run_chain(
            plain,
            x_low,
            stride_table(low, torch.zeros_like(low), stride),
            generator=generator,
            checkpoint=checkpoint,
        )
        out = torch.where((high > 0).view(-1, 1, 1, 1), out, x)
        return ((out + 1) / 2).clamp(0, 1).to(dtype)


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


class MANIPure(Purifier):
    """MANI-Pure (arXiv 2509.25082), reconstructed from the paper's main text (no public code).

    x_t = sqrt(abar_t) x + sqrt(1 - abar_t) spectral(x, z) at the sample's level (fixed t* or
    an SSNI policy's), then the DDPM reverse chain with K = min(steps, t_i) steps, correcting
    x0_hat at every step by :func:`phase_projection` inside the low-frequency disk of
    ``radius`` toward a reference: the input noised to ``reference_level`` and denoised in
    one network call (FreqPure's reference; one extra row per image and stage). FreqPure's
    public code replaces the phase before clipping it, so its clip does nothing: not copied.
    ``surrogate_steps`` sets the attack surrogate's chain (same level).
    """

    def __init__(
        self,
        diffusion: DiffusionModel,
        *,
        noise: NoisePolicy | None = None,
        t_star: int = 100,
        steps: int = 100,
        spectral: SpectralNoise | None = None,
        radius: float = 10.0,
        delta: float = 0.3,
        reference_level: int = 10,
        gradient: str = "full",
        surrogate_steps: int = 20,
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
        if spectral is not None and not callable(spectral):
            raise ValueError(f"spectral must be callable (x, z) -> noise, got {spectral!r}")
        super().__init__(
            diffusion,
            t_star=t_star,
            stages=[(t_star, steps)],
            surrogate_stages=[(t_star, surrogate_steps)],
            noise=noise,
            gradient=gradient,
            generator=generator,
        )
        self.spectral = spectral if spectral is not None else SpectralNoise()
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

    def reference(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The input noised to ``reference_level`` and denoised in one network call."""
        model = self.diffusion
        level = torch.full((x.shape[0],), self.reference_level, device=x.device)
        x_r = model.q_sample(
            x, level, randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        )
        abar = model.schedule.abar(level, x.dtype).view(-1, 1, 1, 1)
        return (x_r - (1 - abar).sqrt() * model.eps(x_r, level)) / abar.sqrt()

    def denoised(
        self, x: torch.Tensor, levels: torch.Tensor, generator: torch.Generator | None
    ) -> Denoised:
        reference = torch.fft.fft2(self.reference(x, generator))
        disk = low_frequency_disk(*x.shape[-2:], self.radius, device=x.device)
        delta = self.delta

        def correct(x0: torch.Tensor, _t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return phase_projection(x0, reference[rows], disk, delta)

        return correct
