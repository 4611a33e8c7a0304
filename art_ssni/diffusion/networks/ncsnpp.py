"""NCSN++ / DDPM++ noise-prediction network of score_sde (Song et al., ICLR 2021).

This is the "DDPM++ deep, continuous VP" CIFAR-10 model (``checkpoint_8.pth``) that DiffPure,
GDMP and SSNI purify with. Module and parameter names follow the original release so its
checkpoints load directly: a flat ``all_modules`` list holding the time-embedding MLP, the
input convolution, BigGAN-style residual blocks (down/up sampling inside the block),
channel-wise self-attention at 16x16, and the GroupNorm + convolution output head.

Reference: Y. Song, J. Sohl-Dickstein, D. P. Kingma, A. Kumar, S. Ermon, B. Poole,
"Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoints import check_finite_weights, read_checkpoint

__all__ = ["NCSNpp", "load_score_sde_checkpoint"]

_PREFIX = "module."


def _fan_avg_uniform_(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """Variance-scaling init (fan_avg, uniform) used throughout score_sde.

    The original treats axis 0 as fan-out and axis 1 as fan-in, trailing axes as the receptive
    field; a scale of 0 is replaced by 1e-10 so zero-initialised layers stay non-degenerate.
    """
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(weight.shape[2:])
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2.0
    bound = math.sqrt(3.0 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


class _Conv2d(nn.Conv2d):
    """Convolution with score_sde's fan-avg uniform init scaled by ``init_scale`` and zero bias."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, init_scale: float = 1.0) -> None:
        self.init_scale = init_scale
        super().__init__(in_ch, out_ch, kernel, padding=kernel // 2)

    def reset_parameters(self) -> None:
        _fan_avg_uniform_(self.weight, self.init_scale)
        nn.init.zeros_(self.bias)


class _Linear(nn.Linear):
    """Dense layer with score_sde's fan-avg uniform init and zero bias."""

    def reset_parameters(self) -> None:
        _fan_avg_uniform_(self.weight, 1.0)
        nn.init.zeros_(self.bias)


def _group_norm(channels: int, max_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(channels // 4, max_groups), channels, eps=1e-6)


def _sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DDPM sinusoidal embedding: [sin(t f_k), cos(t f_k)], f_k = max_period^(-k/(dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=t.device)
        * (-math.log(max_period) / (half - 1))
    )
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class _NIN(nn.Module):
    """Per-pixel linear map stored as ``W`` (in, out) and ``b``; applied as ``x @ W + b``."""

    def __init__(self, in_dim: int, out_dim: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.W = nn.Parameter(_fan_avg_uniform_(torch.empty(in_dim, out_dim), init_scale))
        self.b = nn.Parameter(torch.zeros(out_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b, tokens.reshape(-1, tokens.shape[-1]), self.W).reshape(
            *tokens.shape[:-1], self.W.shape[1]
        )


class _AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (DDPM++ ``AttnBlockpp``)."""

    def __init__(self, channels: int, max_groups: int, skip_rescale: bool, init_scale: float):
        super().__init__()
        self.GroupNorm_0 = _group_norm(channels, max_groups)
        self.NIN_0 = _NIN(channels, channels)
        self.NIN_1 = _NIN(channels, channels)
        self.NIN_2 = _NIN(channels, channels)
        self.NIN_3 = _NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        tokens = self.GroupNorm_0(x).reshape(b, c, hgt * wid).transpose(1, 2)
        q = self.NIN_0(tokens).unsqueeze(1)
        k = self.NIN_1(tokens).unsqueeze(1)
        v = self.NIN_2(tokens).unsqueeze(1)
        attended = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        h = self.NIN_3(attended).transpose(1, 2).reshape(b, c, hgt, wid)
        out = x + h
        return out / math.sqrt(2.0) if self.skip_rescale else out


class _ResBlock(nn.Module):
    """BigGAN-style residual block of DDPM++; optional 2x nearest up / average-pool down."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        temb_dim: int,
        *,
        max_groups: int,
        dropout: float,
        skip_rescale: bool,
        init_scale: float,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.GroupNorm_0 = _group_norm(in_ch, max_groups)
        self.Conv_0 = _Conv2d(in_ch, out_ch, 3)
        self.Dense_0 = _Linear(temb_dim, out_ch)
        self.GroupNorm_1 = _group_norm(out_ch, max_groups)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _Conv2d(out_ch, out_ch, 3, init_scale=init_scale)
        if in_ch != out_ch or up or down:
            self.Conv_2 = _Conv2d(in_ch, out_ch, 1)
        self.up = up
        self.down = down
        self.skip_rescale = skip_rescale

    def _resample(self, t: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(t, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(t, 2)
        return t

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self._resample(F.silu(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h) + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        if hasattr(self, "Conv_2"):
            x = self.Conv_2(x)
        out = x + h
        return out / math.sqrt(2.0) if self.skip_rescale else out


class NCSNpp(nn.Module):
    """score_sde DDPM++ network (BigGAN blocks, positional time embedding, no progressive path).

    Defaults are the CIFAR-10 "DDPM++ deep, continuous VP" configuration used by DiffPure
    (106,632,579 parameters); smaller settings build the same architecture for tests.
    ``forward(x, time_labels)`` takes centered images in [-1, 1] and ``999 * t`` for the
    continuous VP time ``t`` and returns the noise prediction (the score is ``-eps / sigma(t)``).
    The ``sigmas`` buffer (geometric NCSN noise levels) only exists so state_dicts match; the VP
    model never reads it.
    """

    def __init__(
        self,
        *,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 8,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        image_size: int = 32,
        in_channels: int = 3,
        num_groups: int = 32,
        skip_rescale: bool = True,
        init_scale: float = 0.0,
        centered: bool = True,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
    ) -> None:
        super().__init__()
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(ch_mult) - 1}")
        self.nf = nf
        self.in_channels = in_channels
        self.image_size = image_size
        self.centered = centered
        self.register_buffer(
            "sigmas",
            torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales)),
        )

        block_kw: dict[str, Any] = dict(
            max_groups=num_groups, dropout=dropout, skip_rescale=skip_rescale, init_scale=init_scale
        )
        temb_dim = 4 * nf
        modules: list[nn.Module] = [_Linear(nf, temb_dim), _Linear(temb_dim, temb_dim)]
        modules.append(_Conv2d(in_channels, nf, 3))

        def add(module: nn.Module) -> int:
            modules.append(module)
            return len(modules) - 1

        def attn(ch: int) -> nn.Module:
            return _AttnBlock(ch, num_groups, skip_rescale, init_scale)

        self._encoder: list[tuple[int, ...]] = []
        skip_channels = [nf]
        ch = nf
        for level, mult in enumerate(ch_mult):
            res = image_size >> level
            for _ in range(num_res_blocks):
                step = (add(_ResBlock(ch, nf * mult, temb_dim, **block_kw)),)
                ch = nf * mult
                if res in attn_resolutions:
                    step += (add(attn(ch)),)
                self._encoder.append(step)
                skip_channels.append(ch)
            if level != len(ch_mult) - 1:
                self._encoder.append((add(_ResBlock(ch, ch, temb_dim, down=True, **block_kw)),))
                skip_channels.append(ch)

        self._middle = (
            add(_ResBlock(ch, ch, temb_dim, **block_kw)),
            add(attn(ch)),
            add(_ResBlock(ch, ch, temb_dim, **block_kw)),
        )

        self._decoder: list[tuple[str, int]] = []
        for level in reversed(range(len(ch_mult))):
            out_ch = nf * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                block = _ResBlock(ch + skip_channels.pop(), out_ch, temb_dim, **block_kw)
                self._decoder.append(("skip", add(block)))
                ch = out_ch
            if (image_size >> level) in attn_resolutions:
                self._decoder.append(("attn", add(attn(ch))))
            if level != 0:
                block = _ResBlock(ch, ch, temb_dim, up=True, **block_kw)
                self._decoder.append(("up", add(block)))

        self._head = (
            add(_group_norm(ch, num_groups)),
            add(_Conv2d(ch, in_channels, 3, init_scale)),
        )
        self.all_modules = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, time_labels: torch.Tensor) -> torch.Tensor:
        """Predict the noise in ``x`` (B, C, H, W) at time labels ``999 * t`` of shape (B,)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, H, W), got {x.shape}")
        time_labels = torch.as_tensor(time_labels, device=x.device)
        if time_labels.ndim == 0:
            time_labels = time_labels.expand(x.shape[0])
        if time_labels.shape != (x.shape[0],):
            raise ValueError(
                f"expected time_labels of shape ({x.shape[0]},), got {time_labels.shape}"
            )
        m = self.all_modules

        temb = _sinusoidal_embedding(time_labels, self.nf).to(m[0].weight.dtype)
        temb = m[1](F.silu(m[0](temb)))
        if not self.centered:
            x = 2.0 * x - 1.0

        skips = [m[2](x)]
        for step in self._encoder:
            h = m[step[0]](skips[-1], temb)
            for idx in step[1:]:
                h = m[idx](h)
            skips.append(h)

        res_a, mid_attn, res_b = self._middle
        h = m[res_b](m[mid_attn](m[res_a](skips[-1], temb)), temb)

        for kind, idx in self._decoder:
            if kind == "skip":
                h = m[idx](torch.cat([h, skips.pop()], dim=1), temb)
            elif kind == "attn":
                h = m[idx](h)
            else:
                h = m[idx](h, temb)

        norm, conv = self._head
        return m[conv](F.silu(m[norm](h)))


def _read_checkpoint(source: Any, map_location: Any) -> Any:
    if not isinstance(source, (str, os.PathLike)):
        return source
    return read_checkpoint(source, "score_sde checkpoint", map_location)


def _load_ema(model: NCSNpp, ema: Any) -> None:
    if not isinstance(ema, Mapping) or "shadow_params" not in ema:
        raise ValueError("checkpoint['ema'] must be a dict with a 'shadow_params' list")
    shadow = ema["shadow_params"]
    if not isinstance(shadow, (list, tuple)):
        raise ValueError(
            f"checkpoint['ema']['shadow_params'] must be a list, got {type(shadow).__name__}"
        )
    named = list(model.named_parameters())
    if len(shadow) != len(named):
        raise ValueError(
            f"checkpoint['ema']['shadow_params'] has {len(shadow)} tensors, the model has "
            f"{len(named)} parameters"
        )
    for i, ((name, param), value) in enumerate(zip(named, shadow, strict=True)):
        if not isinstance(value, torch.Tensor) or value.shape != param.shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"checkpoint['ema']['shadow_params'][{i}] ({name}) should have shape "
                f"{tuple(param.shape)}, got {got}"
            )
    with torch.no_grad():
        for (_, param), value in zip(named, shadow, strict=True):
            param.copy_(value)


def _load_raw(model: NCSNpp, state: Any) -> None:
    if not isinstance(state, Mapping):
        raise ValueError("checkpoint['model'] must be a state_dict (a dict of tensors)")
    stripped = {(k[len(_PREFIX) :] if k.startswith(_PREFIX) else k): v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in stripped]
    unexpected = [k for k in stripped if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint['model'] does not match NCSNpp: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    for key, ref in expected.items():
        value = stripped[key]
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"checkpoint['model'][{_PREFIX}{key}] should have shape {tuple(ref.shape)}, "
                f"got {got}"
            )
    model.load_state_dict(stripped, strict=True)
    check_finite_weights(model, "score_sde checkpoint", "checkpoint['model']")


def load_score_sde_checkpoint(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    use_ema: bool = True,
    map_location: Any = "cpu",
    **config: Any,
) -> NCSNpp:
    """Build :class:`NCSNpp` and load a score_sde training checkpoint into it, in eval mode.

    ``source`` is a path to (or the already loaded dict of) a score_sde ``torch.save`` file
    with keys ``model`` (DataParallel state_dict, keys prefixed ``module.``), ``ema``
    (``shadow_params`` in parameter order), ``optimizer`` and ``step``. DiffPure and SSNI
    sample with the EMA weights, hence ``use_ema=True``; ``use_ema=False`` loads the raw
    weights strictly. Files are read with ``weights_only=True``; a string or device
    ``map_location`` also places the returned model there. ``config`` overrides the
    :class:`NCSNpp` defaults. Raises ``FileNotFoundError`` for a missing path and
    ``ValueError`` for unreadable files, wrong layouts, key or shape mismatches.
    """
    ckpt = _read_checkpoint(source, map_location)
    if not isinstance(ckpt, Mapping):
        raise ValueError(
            f"score_sde checkpoint must be a dict with keys model/ema/optimizer/step, "
            f"got {type(ckpt).__name__}"
        )
    key = "ema" if use_ema else "model"
    if key not in ckpt:
        raise ValueError(
            f"score_sde checkpoint has no '{key}' entry (keys: {sorted(map(str, ckpt))})"
        )
    model = NCSNpp(**config)
    if use_ema:
        _load_ema(model, ckpt["ema"])
    else:
        _load_raw(model, ckpt["model"])
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    return model.eval()
