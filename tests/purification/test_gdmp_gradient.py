"""GDMP's exact (full) gradient includes the guidance's second-order path: the guided mean
holds grad_x D(x_t, y_t), so its derivative holds the Hessian of the distance (and the
derivative through the target y_t, the run's input). Central finite differences in float64
on a small network agree with autograd; cutting that path (the guidance as a constant)
does not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import art_ssni.purification.guidance as guidance
from art_ssni import GDMP, DiffusionModel

from tiny import TinyEpsNet


class TinyEpsNet64(nn.Module):
    """TinyEpsNet in float64, its time input in the input's dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyEpsNet().double()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.net.inp(x) + self.net.time(t.to(x.dtype)[:, None] / 1000)[:, :, None, None]
        return self.net.out(torch.tanh(h))


def _directional(gdmp: GDMP, x: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> float:
    """d/dh of sum(w * gdmp(x + h v)) at h = 0 by autograd (same noise seed every call)."""
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((gdmp(xg, generator=5) * w).sum(), xg)
    return float((grad * v).sum())


@pytest.mark.parametrize("distance, scale", [("mse", 1e5), ("ssim", 1e3)])
def test_full_gradient_holds_the_guidance_second_order_path(monkeypatch, distance, scale):
    diffusion = DiffusionModel(TinyEpsNet64(), image_shape=(3, 8, 8), name="tiny64")
    gdmp = GDMP(diffusion, t_star=30, runs=2, steps=3, guidance=distance,
                guidance_scale=scale, gradient="full")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(2, 3, 8, 8, generator=g, dtype=torch.double)
    v = torch.randn(x.shape, generator=g, dtype=torch.double)
    w = torch.randn(x.shape, generator=g, dtype=torch.double)
    h = 1e-6
    with torch.no_grad():
        up = (gdmp(x + h * v, generator=5) * w).sum()
        down = (gdmp(x - h * v, generator=5) * w).sum()
    finite = float((up - down) / (2 * h))
    assert _directional(gdmp, x, v, w) == pytest.approx(finite, rel=1e-6)

    exact = guidance.GUIDANCE_DISTANCES[distance]

    def constant(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return exact(a.detach(), b.detach()).detach()

    monkeypatch.setitem(guidance.GUIDANCE_DISTANCES, distance, constant)
    assert abs(_directional(gdmp, x, v, w) - finite) > 1e-3 * abs(finite)  # 1000x the tolerance
