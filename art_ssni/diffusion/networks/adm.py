"""ADM UNet of guided-diffusion (Dhariwal & Nichol, 2021, "Diffusion Models Beat GANs on
Image Synthesis"), sized by default for the unconditional ImageNet 256x256 checkpoint
``256x256_diffusion_uncond.pt`` that DiffPure, GDMP and GNS purify with.

The module and parameter names reproduce the published checkpoint layout exactly (a plain
``state_dict``), so the released weights load strictly without any key remapping. The network
is written here from the paper's description and the checkpoint's tensor layout.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...checkpoints import check_finite_weights, read_checkpoint

__all__ = [
    "GUIDED_DIFFUSION_256_UNCOND",
    "ADMUNet",
    "load_guided_diffusion_checkpoint",
    "timestep_embedding",
]

GUIDED_DIFFUSION_256_UNCOND: Mapping[str, Any] = MappingProxyType(
    {
        "image_size": 256,
        "in_channels": 3,
        "model_channels": 256,
        "out_channels": 6,
        "num_res_blocks": 2,
        "attention_resolutions": (32, 16, 8),
        "channel_mult": (1, 1, 2, 2, 4, 4),
        "num_head_channels": 64,
        "resblock_updown": True,
        "use_scale_shift_norm": True,
        "use_new_attention_order": False,
        "dropout": 0.0,
    }
)
"""Configuration of ``256x256_diffusion_uncond.pt`` (DiffPure ``configs/imagenet.yml``)."""

_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NORM_GROUPS = 32


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape ``(B, dim)``.

    Cosines of all frequencies come first, then sines, with frequencies spaced geometrically
    from 1 down to ``1 / max_period``; the trained weights depend on this exact order.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = timesteps.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class _GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 whatever the activation dtype, for reduced precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _norm(channels: int) -> _GroupNorm32:
    return _GroupNorm32(_NORM_GROUPS, channels)


def _zeroed(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


class _TimestepBlock(nn.Module):
    """A block whose forward also takes the timestep embedding."""


class _EmbedSequential(nn.Sequential):
    """Sequential container that hands the timestep embedding to the blocks that need it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _TimestepBlock) else layer(x)
        return x


class _Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 convolution."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        elif out_channels != channels:
            raise ValueError("upsampling without a convolution cannot change the channel count")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        conv = getattr(self, "conv", None)
        return x if conv is None else conv(x)


class _Downsample(nn.Module):
    """2x downsampling by a strided 3x3 convolution or by 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        elif out_channels != channels:
            raise ValueError("downsampling without a convolution cannot change the channel count")
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _ResBlock(_TimestepBlock):
    """Residual block conditioned on the timestep embedding, optionally resampling by 2.

    With ``use_scale_shift_norm`` the embedding modulates the second normalisation as
    ``norm(h) * (1 + scale) + shift`` (adaptive group normalisation of the ADM paper).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = _Upsample(channels, False)
            self.x_upd: nn.Module = _Upsample(channels, False)
        elif down:
            self.h_upd = _Downsample(channels, False)
            self.x_upd = _Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class _AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection.

    ``qkv`` is one 1x1 convolution producing ``3 * channels`` rows. In the original ("legacy")
    order, used by all released guided-diffusion checkpoints, those rows are grouped per head
    as ``[q_h; k_h; v_h]``; the "new" order groups them as ``[q_all; k_all; v_all]``. The two
    orders give identical parameter shapes but different functions of the same weights.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        use_new_attention_order: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.use_new_attention_order = use_new_attention_order
        self.use_checkpoint = use_checkpoint
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        n = x.shape[-1]
        heads = self.num_heads
        d = c // heads
        qkv = self.qkv(self.norm(x))
        if self.use_new_attention_order:
            qkv = qkv.reshape(b, 3, heads, d, n).transpose(-1, -2).contiguous()
            q, k, v = qkv.unbind(dim=1)
        else:
            qkv = qkv.reshape(b, heads, 3 * d, n).transpose(-1, -2).contiguous()
            q, k, v = qkv.split(d, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(b, c, n)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class ADMUNet(nn.Module):
    """The ADM UNet of Dhariwal & Nichol (2021), by default the 256x256 unconditional model.

    ``forward(x, timesteps)`` takes images in ``[-1, 1]`` of shape ``(B, in_channels, H, W)``
    and integer (or fractional) steps of the 1000-step schedule, and returns all
    ``out_channels`` outputs in float32: for the released model the first 3 channels are the
    noise prediction and the last 3 the learned-variance interpolation.

    ``attention_resolutions`` are feature-map sizes in pixels relative to ``image_size`` (the
    ``'32,16,8'`` of the guided-diffusion flags). ``dtype`` (or :meth:`set_compute_dtype`)
    runs the convolutional body in float16/bfloat16 while GroupNorm, the timestep MLP and the
    output head stay in float32, like guided-diffusion's ``use_fp16``. ``use_checkpoint``
    recomputes block activations in the backward pass, trading compute for memory when
    attacks differentiate through the purifier.
    """

    def __init__(
        self,
        *,
        image_size: int = 256,
        in_channels: int = 3,
        model_channels: int = 256,
        out_channels: int = 6,
        num_res_blocks: int = 2,
        attention_resolutions: Iterable[int] = (32, 16, 8),
        channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4),
        num_head_channels: int | None = 64,
        num_heads: int = 4,
        resblock_updown: bool = True,
        conv_resample: bool = True,
        use_scale_shift_norm: bool = True,
        use_new_attention_order: bool = False,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        channel_mult = tuple(channel_mult)
        attention_resolutions = tuple(sorted(set(attention_resolutions), reverse=True))
        if not channel_mult:
            raise ValueError("channel_mult must have at least one level")
        reachable = {image_size // 2**level for level in range(len(channel_mult))}
        unreachable = [r for r in attention_resolutions if r not in reachable]
        if unreachable:
            raise ValueError(
                f"attention_resolutions {unreachable} are not feature-map sizes of this UNet "
                f"(image_size {image_size}, {len(channel_mult)} levels: {sorted(reachable)})"
            )
        widths = {model_channels * m for m in channel_mult}
        if any(w % _NORM_GROUPS for w in widths):
            raise ValueError(
                f"all widths model_channels * channel_mult {sorted(widths)} must be multiples "
                f"of {_NORM_GROUPS} (GroupNorm groups)"
            )
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.channel_mult = channel_mult

        def heads(ch: int) -> int:
            if num_head_channels is None or num_head_channels == -1:
                return num_heads
            if ch % num_head_channels:
                raise ValueError(f"{ch} channels are not a multiple of {num_head_channels=}")
            return ch // num_head_channels

        def attention(ch: int) -> _AttentionBlock:
            return _AttentionBlock(ch, heads(ch), use_new_attention_order, use_checkpoint)

        def resblock(ch: int, out: int, **kw: bool) -> _ResBlock:
            return _ResBlock(
                ch, emb_dim, dropout, out, use_scale_shift_norm, use_checkpoint=use_checkpoint, **kw
            )

        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        ch = model_channels * channel_mult[0]
        self.input_blocks = nn.ModuleList(
            [_EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
        )
        skip_widths = [ch]
        resolution = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, model_channels * mult)]
                ch = model_channels * mult
                if resolution in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(_EmbedSequential(*layers))
                skip_widths.append(ch)
            if level != len(channel_mult) - 1:
                if resblock_updown:
                    down: nn.Module = resblock(ch, ch, down=True)
                else:
                    down = _Downsample(ch, conv_resample)
                self.input_blocks.append(_EmbedSequential(down))
                skip_widths.append(ch)
                resolution //= 2

        self.middle_block = _EmbedSequential(resblock(ch, ch), attention(ch), resblock(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + skip_widths.pop(), model_channels * mult)]
                ch = model_channels * mult
                if resolution in attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    if resblock_updown:
                        layers.append(resblock(ch, ch, up=True))
                    else:
                        layers.append(_Upsample(ch, conv_resample))
                    resolution *= 2
                self.output_blocks.append(_EmbedSequential(*layers))

        self.out = nn.Sequential(
            _norm(ch), nn.SiLU(), _zeroed(nn.Conv2d(ch, out_channels, 3, padding=1))
        )
        if dtype is not None:
            self.set_compute_dtype(dtype)

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype the UNet body runs in (the dtype of its convolution weights)."""
        return self.input_blocks[0][0].weight.dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> ADMUNet:
        """Run the body's convolutions in ``dtype`` (float32, float16 or bfloat16).

        Only convolution weights inside the input, middle and output blocks are cast, as in
        guided-diffusion's ``convert_to_fp16``: normalisation, the timestep MLP and the output
        head keep float32 parameters, and the output is float32. Returns ``self``.
        """
        if dtype not in _COMPUTE_DTYPES:
            raise ValueError(f"compute dtype must be one of {_COMPUTE_DTYPES}, got {dtype}")
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            for module in part.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                    module.to(dtype)
        return self

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float) -> torch.Tensor:
        """Predict ``out_channels`` maps (eps, then learned variance) for ``x`` at ``timesteps``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"H and W must be multiples of {factor}, got {tuple(x.shape[-2:])}")
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"expected timesteps of shape ({x.shape[0]},), got {tuple(t.shape)}")
        head = self.time_embed[0].weight
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(head.dtype))
        h = x.to(self.compute_dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(self.out[-1].weight.dtype)).float()


def _read_state_dict(path: Path, map_location: str | torch.device) -> Any:
    return read_checkpoint(path, "guided-diffusion checkpoint", map_location)


def _few(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _check_layout(state: Any, expected: Mapping[str, torch.Tensor], origin: str) -> None:
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{origin} is not a state dict: got {type(state).__name__}, expected a mapping of "
            f"parameter names to tensors"
        )
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            hint = ""
            if isinstance(value, Mapping):
                hint = f" (a wrapped checkpoint? pass its [{name!r}] entry instead)"
            raise ValueError(
                f"{origin} is not a plain state dict: entry {name!r} holds "
                f"{type(value).__name__}, not a tensor{hint}"
            )
        if not value.is_floating_point():
            raise ValueError(f"{origin}: entry {name!r} has non-float dtype {value.dtype}")
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_few(unexpected)}")
        firsts = {k.split(".", 1)[0] for k in state}
        if missing and len(firsts) == 1:
            prefix = firsts.pop() + "."
            stripped = {k[len(prefix) :] for k in state if k.startswith(prefix)}
            if stripped == set(expected):
                parts.append(f"every key carries the prefix {prefix!r}; strip it")
        raise ValueError(
            f"{origin} does not match the ADM UNet layout for this config: " + "; ".join(parts)
        )
    wrong = [
        f"{name!r}: checkpoint {tuple(state[name].shape)} vs model {tuple(ref.shape)}"
        for name, ref in expected.items()
        if tuple(state[name].shape) != tuple(ref.shape)
    ]
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise ValueError(
            f"{origin}: shape mismatch for {'; '.join(wrong[:3])}{more}; is the model config "
            f"the one the checkpoint was trained with?"
        )


def load_guided_diffusion_checkpoint(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    map_location: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **config: Any,
) -> ADMUNet:
    """Build an :class:`ADMUNet` and load a guided-diffusion checkpoint into it strictly.

    ``source`` is a path to a plain ``state_dict`` file (read with
    ``torch.load(..., weights_only=True)``, so no code in the file is executed) or an
    already-loaded state dict. ``config`` overrides the 256x256 unconditional defaults;
    ``dtype`` sets the compute dtype (see :meth:`ADMUNet.set_compute_dtype`). Names and shapes
    are checked before the model's memory is allocated, and every problem is reported as a
    ``ValueError`` naming the offending keys (``FileNotFoundError`` for a missing file).
    A given state dict is copied, never aliased. The model is returned in float32 (unless
    ``dtype`` says otherwise) on ``map_location``, in eval mode.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        state = _read_state_dict(path, map_location)
        origin, owned = f"checkpoint {path}", True
    elif isinstance(source, Mapping):
        state, origin, owned = source, "the given state dict", False
    else:
        raise TypeError(f"source must be a path or a state dict, got {type(source).__name__}")

    with torch.device("meta"):
        model = ADMUNet(**config)
    _check_layout(state, model.state_dict(), origin)

    device = torch.device(map_location)
    if owned:
        tensors = {k: v.to(device=device, dtype=torch.float32) for k, v in state.items()}
        model.load_state_dict(tensors, strict=True, assign=True)
    else:
        model = model.to_empty(device=device)
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
    check_finite_weights(model, "guided-diffusion checkpoint", origin)
    if dtype is not None:
        model.set_compute_dtype(dtype)
    return model.eval()
