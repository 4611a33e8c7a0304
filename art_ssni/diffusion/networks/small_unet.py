"""A small noise-prediction UNet for 8x8 images (the embedded offline diffusion model).

Written for the digits zoo model (``art_ssni.models.zoo``): with the zoo config
(``base_channels=16``) it has 164k parameters and costs about 3.9 GFLOP per forward pass at
batch 512 (roughly 0.1 s on one core of a shared 2-core CPU), so the purification and EPS
code can be exercised end to end without a GPU.

Layout (for the default ``channel_mult=(1, 2)``): 8x8 -> 4x4, residual blocks with
GroupNorm and SiLU conditioned on a sinusoidal embedding of the timestep, an optional
self-attention block at the coarsest resolution, skip connections by concatenation, and a
zero-initialised output convolution. Call it as ``eps_net(x_t, k)`` with ``x_t`` of shape
(B, C, H, W) in the model's [-1, 1] space and ``k`` the 0-based DDPM timestep index
(LongTensor of shape (B,), or a scalar broadcast to the batch); it returns the predicted
noise with the shape of ``x_t``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SmallUNet", "timestep_embedding"]


def timestep_embedding(k: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``k`` (B,) -> (B, dim).

    Frequencies are geometric from 1 down to ``1/max_period``; cos and sin halves are
    concatenated (a zero column pads an odd ``dim``).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=k.device) / half
    )
    args = k.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the timestep embedding added in between."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.t_proj = nn.Linear(t_dim, c_out)
        self.norm2 = _norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.t_proj(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _SelfAttention(nn.Module):
    """Single-head self-attention over the spatial positions, residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, hw, c)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class SmallUNet(nn.Module):
    """Small timestep-conditioned UNet predicting the DDPM noise ``eps`` for small images.

    Args:
        in_channels: image channels (1 for digits); the output has the same number.
        base_channels: width of the first level.
        channel_mult: width multiplier per resolution level; ``len(channel_mult) - 1``
            downsamplings by 2 (8x8 -> 4x4 for two levels, -> 2x2 for three).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention: add a self-attention block in the middle (coarsest resolution).
        groups: GroupNorm groups (reduced to a divisor of each width).
        dropout: dropout inside the residual blocks.
        num_timesteps: number of discrete timesteps of the schedule (metadata).
        max_level: the network was trained only on the 0-based indices ``k < max_level``
            (levels 1..max_level); ``DiffusionModel`` refuses higher levels. ``None``: all.

    ``config`` holds these keyword arguments as plain data, so ``SmallUNet(**net.config)``
    rebuilds the architecture.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        groups: int = 8,
        dropout: float = 0.0,
        num_timesteps: int = 1000,
        max_level: int | None = None,
    ) -> None:
        super().__init__()
        if not channel_mult:
            raise ValueError("channel_mult must not be empty")
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "base_channels": base_channels,
            "channel_mult": list(channel_mult),
            "num_res_blocks": num_res_blocks,
            "attention": attention,
            "groups": groups,
            "dropout": dropout,
            "num_timesteps": num_timesteps,
        }
        if max_level is not None:
            if not 0 < max_level <= num_timesteps:
                raise ValueError(f"max_level must be in 1..{num_timesteps}, got {max_level}")
            self.config["max_level"] = max_level
        self.max_level = max_level
        self.in_channels = in_channels
        self.num_timesteps = num_timesteps
        t_dim = 4 * base_channels
        self.t_embed_dim = base_channels
        self.t_mlp = nn.Sequential(
            nn.Linear(base_channels, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim)
        )
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        widths = [base_channels * m for m in channel_mult]
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skip_widths = [base_channels]
        c = base_channels
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(_ResBlock(c, width, t_dim, groups, dropout))
                c = width
                skip_widths.append(c)
            self.down_blocks.append(blocks)
            if level < len(widths) - 1:
                self.downsamples.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skip_widths.append(c)

        self.mid1 = _ResBlock(c, c, t_dim, groups, dropout)
        self.mid_attn = _SelfAttention(c, groups) if attention else nn.Identity()
        self.mid2 = _ResBlock(c, c, t_dim, groups, dropout)

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(_ResBlock(c + skip_widths.pop(), width, t_dim, groups, dropout))
                c = width
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamples.append(nn.Conv2d(c, c, 3, padding=1))

        self.norm_out = _norm(c, groups)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
        """Predict ``eps`` for noisy images ``x`` (B, C, H, W) at timestep indices ``k``."""
        k = torch.as_tensor(k, device=x.device)
        if k.ndim == 0:
            k = k.expand(x.shape[0])
        if k.shape != (x.shape[0],):
            raise ValueError(f"k must be a scalar or of shape ({x.shape[0]},), got {k.shape}")
        temb = self.t_mlp(timestep_embedding(k, self.t_embed_dim))

        h = self.conv_in(x)
        skips = [h]
        for level, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, temb)
                skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
                skips.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)

        for i, blocks in enumerate(self.up_blocks):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            if i < len(self.upsamples):
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                h = self.upsamples[i](h)

        return self.conv_out(F.silu(self.norm_out(h)))
