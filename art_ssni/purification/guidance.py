"""Distances that guide a reverse step toward a reference image (GDMP, Wang et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-sample mean SSIM (Wang et al. 2004) of images in [0, 1], Gaussian window."""
    channels = a.shape[1]
    window = min(window, a.shape[-1], a.shape[-2])
    coords = torch.arange(window, dtype=a.dtype, device=a.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window, window).contiguous()

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, kernel, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(1)


def _mse_gradient(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x of mean((x - y)^2) per sample, in closed form."""
    return 2 * (x - y) / x[0].numel()


def _ssim_gradient(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x of 1 - SSIM((x + 1)/2, (y + 1)/2) per sample; differentiable when grad is on."""
    outer = torch.is_grad_enabled() and x.requires_grad
    with torch.enable_grad():
        xi = x if outer else x.detach().requires_grad_(True)
        yi = y if outer else y.detach()
        distance = (1 - ssim((xi + 1) / 2, (yi + 1) / 2)).sum()
        (grad,) = torch.autograd.grad(distance, xi, create_graph=outer)
    return grad


GUIDANCE_DISTANCES = {"mse": _mse_gradient, "ssim": _ssim_gradient}


def distance_gradient(kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the named guidance distance D(x, y) with respect to x."""
    return GUIDANCE_DISTANCES[kind](x, y)
