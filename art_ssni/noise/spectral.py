"""MANI-Pure's magnitude-adaptive noise (arXiv 2509.25082, sec. 3; reconstructed from the
paper's main text: its appendix and code are not public).

Per image and channel: A = |DFT2(x)|; the spectrum is split into ``bands`` equal-width
annuli of radius r = sqrt(f_y^2 + f_x^2) (f in cycles per pixel, so r runs from 0 at DC to
sqrt(1/2) at the corner); M_i is the mean of A over band i and w_i = 1 / (M_i^gamma + eps0):
more noise where the input's spectrum is weak. The weights are data statistics, computed
without gradient unless ``differentiable`` is set (the spectral attack sets it for its run,
so that its gradient also flows through the weights).
"""

from __future__ import annotations

import math

import torch

from ..validation import check_number

SPECTRAL_MODES = ("shaped", "spatial")


def radial_bands(height: int, width: int, bands: int, device=None) -> torch.Tensor:
    """(H, W) LongTensor: the band 0..bands-1 of each DFT frequency (equal-width annuli)."""
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.fftfreq(width, device=device)[None, :]
    radius = (fy**2 + fx**2).sqrt() / math.sqrt(0.5)
    return (radius * bands).long().clamp(max=bands - 1)


def _unit_rms(noise: torch.Tensor) -> torch.Tensor:
    rms = noise.pow(2).mean((-2, -1), keepdim=True).sqrt()
    return noise / rms.clamp(min=torch.finfo(noise.dtype).tiny)


class SpectralNoise:
    """``spectral(x, z)`` -> the noise to inject for input x and standard normal z (same shape).

    ``mode="shaped"``: IDFT(w(u, v) DFT(z)), Gaussian noise shaped in the Fourier domain.
    ``mode="spatial"``: |IDFT(w DFT(x))| z, the paper's Eq. 10 read literally (a pixel map).
    Either is scaled to unit RMS per image and channel, so sqrt(abar) x + sqrt(1 - abar) n
    keeps the variance of the model's marginal.
    """

    def __init__(
        self, bands: int = 8, gamma: float = 1.8, mode: str = "shaped", eps0: float = 1e-8
    ) -> None:
        if isinstance(bands, bool) or not isinstance(bands, int) or bands < 1:
            raise ValueError(f"bands must be an integer >= 1, got {bands!r}")
        check_number(gamma, "gamma", low=0.0)
        if mode not in SPECTRAL_MODES:
            raise ValueError(f"mode must be one of {SPECTRAL_MODES}, got {mode!r}")
        if not (math.isfinite(eps0) and eps0 > 0):
            raise ValueError(f"eps0 must be finite and > 0, got {eps0}")
        self.bands, self.gamma, self.mode, self.eps0 = bands, float(gamma), mode, float(eps0)
        self.differentiable = False

    def __repr__(self) -> str:
        return f"SpectralNoise(bands={self.bands}, gamma={self.gamma}, mode={self.mode!r})"

    def _tracked(self) -> bool:
        """Whether the weights carry a gradient now (``differentiable`` and grad enabled)."""
        return self.differentiable and torch.is_grad_enabled()

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """w(u, v) = 1 / (M_band(u,v)^gamma + eps0) per image and channel (B, C, H, W);
        differentiable in x when ``differentiable`` is set and grad is enabled."""
        if x.dim() != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        tracked = self._tracked()
        with torch.set_grad_enabled(tracked):
            source = x.double() if tracked else x.detach().double()
            amplitude = torch.fft.fft2(source).abs().flatten(2)
            band = radial_bands(*x.shape[-2:], self.bands, device=x.device).flatten()
            index = band.expand_as(amplitude)
            total = amplitude.new_zeros(*amplitude.shape[:2], self.bands)
            total = total.scatter_add(2, index, amplitude)
            count = torch.bincount(band, minlength=self.bands).clamp(min=1)
            weight = 1.0 / ((total / count).pow(self.gamma) + self.eps0)
            return weight.gather(2, index).view(x.shape)

    def __call__(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The noise for images x (B, C, H, W) in [-1, 1] (the engine's scale; [0, 1] images
        lie in it too) and standard normal draws z of x's shape."""
        if x.dim() != 4:
            raise ValueError(f"expected images x (B, C, H, W), got shape {tuple(x.shape)}")
        if z.shape != x.shape:
            raise ValueError(f"z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
        for name, value in (("x", x), ("z", z)):
            if not value.is_floating_point() or not bool(torch.isfinite(value.detach()).all()):
                raise ValueError(f"{name} must be a finite floating-point tensor")
        low, high = float(x.detach().min()), float(x.detach().max())
        if low < -1 or high > 1:
            raise ValueError(
                f"x must have values in [-1, 1] (or [0, 1]), got min {low:.4g} and max "
                f"{high:.4g} (images in [0, 255] must be rescaled)"
            )
        weight = self.weights(x)
        if self.mode == "shaped":
            shaped = torch.fft.ifft2(weight.to(z.dtype) * torch.fft.fft2(z)).real
            return _unit_rms(shaped)
        tracked = self._tracked()
        with torch.set_grad_enabled(tracked):
            source = x.double() if tracked else x.detach().double()
            pixel_map = torch.fft.ifft2(weight * torch.fft.fft2(source)).abs()
        return _unit_rms(pixel_map.to(z.dtype) * z)
