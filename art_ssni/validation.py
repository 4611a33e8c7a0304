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
            f" ({scale_hint(lo, hi)})"
        )
    return x


def scale_hint(low: float, high: float) -> str:
    """What most likely put images outside [0, 1], judged from their range, naming the
    settings of the attack libraries that produce such values."""
    if 0.0 <= low and 1.5 < high <= 255.0:
        return (
            "these look like [0, 255] pixels: divide by 255; with foolbox use bounds=(0, 1), "
            "with ART clip_values=(0, 1) on the classifier, or give the art_ssni ART defence "
            "clip_values=(0, 255)"
        )
    if -0.5 < low and high < 1.5:
        return (
            "an attack step probably left [0, 1]: bound the attack to the (0, 1) box (ART: "
            "clip_values=(0, 1) on the classifier; foolbox: bounds=(0, 1))"
        )
    if -1.0 <= low and high <= 1.0:
        return "these look like [-1, 1] images: map them with (x + 1) / 2"
    if low < 0.0:
        return (
            "these look normalised with a mean and std: torchattacks' set_normalization_used "
            "and foolbox's preprocessing=dict(mean=..., std=...) normalise before the model; "
            "give mean and std to DefendedClassifier(purifier, classifier, mean, std) instead "
            "and attack [0, 1] images"
        )
    return "values above 255 are no image scale: rescale the images to [0, 1]"


def check_labels(y: object, n: int, *, classes: int | None = None, name: str = "y") -> torch.Tensor:
    """Check that ``y`` holds ``n`` integer labels in [0, classes) (any range when ``classes``
    is None); a ``TypeError`` for a non-tensor, a ``ValueError`` naming the problem otherwise."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer labels, got {type(y).__name__}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if tuple(y.shape) != (n,):
        raise ValueError(f"{name} must hold one label per image ({n}), got shape {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise ValueError(f"{name} holds a negative label ({int(y.min())}); labels are 0, 1, ...")
    if n and classes is not None and int(y.max()) >= classes:
        raise ValueError(
            f"{name} holds the label {int(y.max())} but the classifier has {classes} outputs "
            f"(classes 0..{classes - 1}): wrong labels or the wrong classifier"
        )
    return y


def classifier_outputs(classifier: torch.nn.Module, x: torch.Tensor) -> int:
    """The number of classes ``classifier`` scores, from one forward pass on ``x[:1]``; a
    ``ValueError`` when it does not return a (batch, classes) tensor of finite logits."""
    param = next((p for p in classifier.parameters() if p.is_floating_point()), None)
    sample = x[:1].to(param.device if param is not None else "cpu")
    if param is not None and sample.is_floating_point():
        sample = sample.to(param.dtype)
    try:
        with torch.no_grad():
            out = classifier(sample)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"the classifier fails on one image of shape {tuple(sample.shape[1:])} ({first}): "
            "it expects other images (size, channels) or is not an image classifier"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the classifier must return a tensor of logits, got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        raise ValueError(
            f"the classifier must return logits of shape (batch, classes) with at least 2 "
            f"classes, got shape {tuple(out.shape)} for a batch of 1"
        )
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the classifier returned non-finite logits (NaN or Inf) on a clean image")
    return int(out.shape[1])


def check_device(device: object) -> str:
    """Check that ``device`` names a device that computes here: "auto", "cpu", "cuda[:k]" with
    k below the device count, "mps" where available; a ``ValueError`` naming the problem
    otherwise (a meta device holds no data, "cpu:5" does not exist)."""
    if device == "auto":
        return "auto"
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"device {device!r} is not a device torch knows ({err})") from None
    if parsed.type == "cpu":
        if parsed.index not in (None, 0):
            raise ValueError(f"device {device!r}: there is one CPU device; use 'cpu'")
    elif parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: this torch build has no usable CUDA device")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"device {device}: there are {count} CUDA devices (cuda:0..cuda:{count - 1})"
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device}: MPS is not available here")
    else:
        raise ValueError(
            f"device {device!r} cannot run the models (a {parsed.type} device"
            f"{' holds no data' if parsed.type == 'meta' else ' is not supported'}); "
            "use cpu, cuda or cuda:k"
        )
    return str(device)


SEED_LIMIT = 2**63
"""Seeds are integers in [0, SEED_LIMIT): what every torch.Generator accepts."""


def check_seed(seed: object, name: str = "seed") -> int:
    """Check a seed: an int (not a bool) in [0, 2**63); a ``ValueError`` naming it otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {seed!r}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{name} must lie in [0, 2**63), got {seed!r}")
    return int(seed)


def check_unique(values: object, name: str) -> None:
    """Refuse a list that names an entry twice (it would give duplicate rows)."""
    if isinstance(values, str):
        items = [v.strip() for v in values.split(",") if v.strip()]
    else:
        items = list(values or ())
    twice = sorted({v for v in items if items.count(v) > 1})
    if twice:
        raise ValueError(f"{name} names {', '.join(map(str, twice))} more than once")


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
