"""Input checks shared by the public entry points: a clear error, never a silent wrong answer."""

from __future__ import annotations

import math
import numbers

import torch


def check_images(
    x: object,
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    name: str = "x",
) -> torch.Tensor:
    """Check that ``x`` is a non-empty finite float NCHW batch with values in [0, 1].

    Raises ``TypeError`` for a non-tensor and ``ValueError`` naming the problem otherwise.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D batch (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}"
            " (scale integer images to [0, 1] first)"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channels but the model expects {channels} "
            f"(shape {tuple(x.shape)}; inputs are NCHW)"
        )
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(
            f"{name} has spatial size {tuple(x.shape[-2:])} but the model expects {tuple(size)}"
        )
    x_data = x.detach()
    finite = torch.isfinite(x_data)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(x_data).sum())
        n_inf = int(torch.isinf(x_data).sum())
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} Inf values")
    lo, hi = float(x_data.min()), float(x_data.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must have values in [0, 1], got min {lo:.4g} and max {hi:.4g}"
            " (images in [0, 255] or [-1, 1] must be rescaled)"
        )
    return x


def check_number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
) -> float | int:
    """Check a numeric parameter: a real number (an int where ``integer``), finite, in range.

    ``low``/``high`` are inclusive bounds (``low_open`` makes the lower one strict). Returns the
    value as ``int`` or ``float``; raises ``ValueError`` naming the parameter otherwise, so a NaN,
    an Inf or a truncated 40.7 never turns silently into another setting.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if integer:
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        number = int(number)
    bound = "(" if low_open else "["
    where = f"{bound}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    if low is not None and (number <= low if low_open else number < low):
        raise ValueError(f"{name} must lie in {where}, got {value!r}")
    if high is not None and number > high:
        raise ValueError(f"{name} must lie in {where}, got {value!r}")
    return number


def as_floating(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a floating tensor to ``dtype`` (differentiably: the gradient comes back in the
    caller's dtype); refuse non-floating tensors with the README's ``ValueError``."""
    if not x.is_floating_point():
        raise ValueError(
            f"images must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}"
            " (scale integer images to [0, 1] first)"
        )
    return x if x.dtype == dtype else x.to(dtype)
