"""Adaptive attacks on a defence's own machinery, on one steered PGD-EOT loop.

- :func:`selector_constrained_pgd`: SSNI (L and N alike). Ascends the classification loss and,
  at the start and after every step, walks the input's EPS norm back into the clean reference
  band [reference minimum, reference ``quantile``] along the EPS-norm gradient (alternating
  projection), so the selector sees a clean-looking input and picks a clean-looking level.
- :func:`dac_mask_pgd`: DAC. Also descends sum(saliency(x + delta) |delta|), DAC's continuous
  attention map before its threshold (:meth:`~art_ssni.noise.AttentionMask.saliency`) weighted
  by the perturbation, so the strongly noised (attended) region moves off the perturbation.
- :func:`spectral_pgd`: MANI-Pure. Differentiates through the spectral weights
  (:attr:`~art_ssni.noise.SpectralNoise.differentiable`) and restricts the perturbation to the
  frequency bands the method noises least for each image (the smallest weights).
- :func:`low_frequency_pgd`: any defence. Optimises a coarse perturbation (H/factor x
  W/factor) upsampled bilinearly, inside the Linf (or L2) ball: DiffBreak (NeurIPS 2025)
  found that low-frequency perturbations survive purification.

The loop is PGD-EOT's (:func:`~art_ssni.evaluation.attacks.pgd_eot`: sign steps for Linf,
normalised steps for L2, restarts, in-loop judging) on a variable v with perturbation
delta = basis(v) (a linear map: the identity, a band filter, an upsampling), with an optional
penalty term combined as in the selector-aware attack (g / ||g|| - w g_pen / ||g_pen||) and an
optional correction after each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._rng import RandomSource, as_source, int_seed
from .attacks import _check, ascent_direction, per_sample_l2, project, random_in_ball
from .eot import DEFAULT_MAX_ROWS, BestIterate, best_of_restarts, check_judging, eot_gradient, track

Basis = Callable[[torch.Tensor], torch.Tensor]
Penalty = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Correction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _purifier_part(model: nn.Module, name: str) -> object:
    return getattr(getattr(model, "purifier", None), name, None)


NEEDS: dict[str, tuple[Callable[[nn.Module], bool], str]] = {
    "scores": (
        lambda m: hasattr(getattr(m, "policy", None), "scores"),
        "a purifier with an SSNI noise policy (EPS-norm scores)",
    ),
    "reference": (
        lambda m: (
            hasattr(getattr(m, "policy", None), "scores")
            and hasattr(getattr(m, "policy", None), "stats")
        ),
        "a purifier with an SSNI noise policy and its reference statistics",
    ),
    "saliency": (
        lambda m: hasattr(_purifier_part(m, "mask"), "saliency"),
        "DAC with an attention mask that has a saliency map (AttentionMask)",
    ),
    "spectral": (
        lambda m: hasattr(_purifier_part(m, "spectral"), "weights"),
        "MANI-Pure with its spectral noise (SpectralNoise)",
    ),
}
"""What an attack may need of a defence: a test on the model and the words for an error."""


def require(model: nn.Module, need: str, attack: str) -> None:
    """Raise a ValueError naming what ``attack`` needs when ``model`` lacks it."""
    test, words = NEEDS[need]
    if not test(model):
        raise ValueError(f"the {attack} attack needs {words}")


def _fit(
    x: torch.Tensor, v: torch.Tensor, basis: Basis | None, norm: str, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, delta): the identity projects delta as PGD does; another basis clips v to the Linf
    box, scales v (and delta = basis(v)) into the ball, then keeps x + delta in [0, 1]."""
    if basis is None:
        delta = project(v, x, norm, eps)
        return delta, delta
    if norm == "Linf":
        v = v.clamp(-eps, eps)
    delta = basis(v)
    flat = delta.flatten(1)
    size = flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)
    scale = (eps / size.clamp(min=1e-12)).clamp(max=1.0)
    v = v * scale.view(-1, *([1] * (v.dim() - 1)))
    delta = delta * scale.view(-1, *([1] * (delta.dim() - 1)))
    return v, (x + delta).clamp(0, 1) - x


def _pullback(
    x: torch.Tensor,
    v: torch.Tensor,
    grad: torch.Tensor,
    basis: Basis | None,
    penalty: Penalty | None,
    weight: float,
) -> torch.Tensor:
    """The ascent direction in v: basis^T grad, combined with the penalty's gradient."""
    if basis is None and penalty is None:
        return grad
    with torch.enable_grad():
        vg = v.detach().requires_grad_(True)
        delta = vg if basis is None else basis(vg)
        if basis is not None:
            (grad,) = torch.autograd.grad((delta * grad).sum(), vg, retain_graph=True)
        if penalty is None:
            return grad
        value = penalty((x + delta).clamp(0, 1), delta)
        (g_pen,) = torch.autograd.grad(value.sum(), vg)
    return grad / per_sample_l2(grad) - weight * g_pen / per_sample_l2(g_pen)


def steered_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "Linf",
    eps: float = 8 / 255,
    step: float = 0.007,
    iterations: int = 200,
    eot: int = 20,
    random_start: bool = False,
    restarts: int = 1,
    judge_draws: int = 0,
    criterion: str = "worst",
    max_rows: int = DEFAULT_MAX_ROWS,
    generator: RandomSource = None,
    basis: Basis | None = None,
    shape: tuple[int, ...] | None = None,
    penalty: Penalty | None = None,
    weight: float = 0.0,
    correct: Correction | None = None,
    name: str = "steered PGD-EOT",
    progress: bool = False,
) -> torch.Tensor:
    """PGD-EOT on v (of ``shape``, x's without a ``basis``) with delta = basis(v), ascending
    the EOT cross-entropy, descending ``weight`` x ``penalty(x_adv, delta)`` (per sample), and
    applying ``correct(x, delta) -> delta`` after each step (identity basis only)."""
    _check(x, y, norm, eps, step, iterations)
    check_judging(judge_draws, criterion)
    if correct is not None and basis is not None:
        raise ValueError("a correction acts on delta itself: it needs the identity basis")
    if basis is not None and shape is None:
        raise ValueError("a basis needs the shape of the variable it maps to a perturbation")
    generator = as_source(generator, x.device)
    x = x.detach()
    shape = tuple(x.shape) if basis is None else tuple(shape)
    judging = {"max_rows": max_rows}

    def settle(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v, delta = _fit(x, v, basis, norm, eps)
        if correct is not None:
            delta = correct(x, delta)
            v = delta
        return v, delta

    def run(restart: int) -> tuple[torch.Tensor, BestIterate | None]:
        v = torch.zeros(shape, device=x.device, dtype=x.dtype)
        if random_start or restart > 0:
            v = random_in_ball(shape, norm, eps, x, generator)
        v, delta = settle(v)
        best = track(None, model, x + delta, y, judge_draws, criterion, **judging)
        desc = f"{name} {norm} restart {restart + 1}/{restarts}"
        for _ in tqdm(range(iterations), desc=desc, disable=not progress, leave=False):
            grad, _ = eot_gradient(model, x + delta, y, eot, max_rows=max_rows)
            grad = _pullback(x, v, grad, basis, penalty, weight)
            v, delta = settle(v + step * ascent_direction(grad, norm))
            best = track(best, model, x + delta, y, judge_draws, criterion, **judging)
        if best is None:
            return (x + delta).detach(), None
        return best.x, best

    return best_of_restarts(run, restarts, model, y, criterion, **judging)


def _positive(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def _count(value: int, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_budget(x: torch.Tensor, y: torch.Tensor, budget: dict) -> tuple[str, float, float]:
    """Check the images and the budget as :func:`steered_pgd` will (the attacks read them
    first); returns the norm, eps and step."""
    defaults = {"norm": "Linf", "eps": 8 / 255, "step": 0.007, "iterations": 200}
    norm, eps, step, iterations = (budget.get(k, v) for k, v in defaults.items())
    _check(x, y, norm, eps, step, iterations)
    return norm, eps, step


def reference_band(model: nn.Module, quantile: float) -> tuple[float, float]:
    """[lo, hi]: the smallest clean reference EPS norm and the reference ``quantile``."""
    norms = model.policy.stats.norms.double()
    return float(norms.min()), float(torch.quantile(norms, quantile))


def selector_constrained_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    quantile: float = 0.5,
    corrections: int = 3,
    generator: RandomSource = None,
    **kwargs,
) -> torch.Tensor:
    """PGD-EOT that keeps the input's EPS norm in the clean band [reference min, reference
    ``quantile``]: at the start and after every step, while a sample's norm (one Monte-Carlo
    estimate with a seed fixed for the whole attack, so every step sees the same objective)
    lies outside, it steps along the norm's gradient back (down from above, up from below),
    at most ``corrections`` times. Works on every policy that maps the EPS norm to levels
    (SSNI-L, SSNI-N); the levels it reaches are those the runner records."""
    norm, eps, step = _check_budget(x, y, kwargs)
    require(model, "reference", "selector-constrained")
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)):
        raise ValueError(f"quantile must be a number in (0, 1], got {quantile!r}")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile!r}")
    _count(corrections, "corrections", 0)
    generator = as_source(generator, x.device)
    seed = int_seed(generator)
    lo, hi = reference_band(model, quantile)

    def correct(x0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x0.shape[0], device=x0.device)
        for _ in range(corrections):
            with torch.enable_grad():
                xg = (x0[rows] + delta[rows]).detach().requires_grad_(True)
                score = model.scores(xg, seed)
                out = (score > hi) | (score < lo)
                if not bool(out.any()):
                    break
                (grad,) = torch.autograd.grad(score.sum(), xg)
            back = torch.where(score > hi, -1.0, 1.0).to(grad.dtype).view(-1, 1, 1, 1)
            moved = delta[rows] + step * back * ascent_direction(grad, norm)
            keep = out.view(-1, 1, 1, 1)
            fixed = torch.where(keep, project(moved, x0[rows], norm, eps), delta[rows])
            delta = delta.index_copy(0, rows, fixed.detach())
            rows = rows[out]
        return delta

    return steered_pgd(model, x, y, generator=generator, correct=correct,
                       name="selector-constrained PGD-EOT", **kwargs)  # fmt: skip


def dac_mask_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, weight: float = 1.0, **kwargs
) -> torch.Tensor:
    """PGD-EOT that also descends mean(saliency(x + delta) |delta|): DAC's attention map
    before its threshold, weighted by the perturbation, with relative weight ``weight``."""
    _check_budget(x, y, kwargs)
    require(model, "saliency", "dac-mask")
    _positive(weight, "weight")
    mask = model.purifier.mask

    def penalty(x_adv: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return (mask.saliency(x_adv) * delta.abs()).flatten(1).mean(1)

    return steered_pgd(model, x, y, penalty=penalty, weight=weight,
                       name="mask-steering PGD-EOT", **kwargs)  # fmt: skip


@contextmanager
def spectral_gradient(model: nn.Module) -> Iterator[None]:
    """Let gradients flow through MANI-Pure's spectral weights inside the block (restored
    afterwards, also when the block raises)."""
    spectral = model.purifier.spectral
    previous = spectral.differentiable
    spectral.differentiable = True
    try:
        yield
    finally:
        spectral.differentiable = previous


def quiet_bands(model: nn.Module, x: torch.Tensor, keep: int) -> torch.Tensor:
    """(B, 1, H, W) 0/1 mask of the DFT frequencies in the ``keep`` bands that MANI-Pure noises
    least for each image (the smallest spectral weights, averaged over channels, of the image
    on the diffusion scale 2x - 1)."""
    from ..noise.spectral import radial_bands

    spectral = model.purifier.spectral
    with torch.no_grad():
        weights = spectral.weights(2 * x.detach() - 1).mean(1)
    band = radial_bands(*x.shape[-2:], spectral.bands, device=x.device)
    per_band = torch.stack([weights[:, band == b].mean(1) for b in range(spectral.bands)], 1)
    per_band = per_band.nan_to_num(nan=float("inf"))  # an empty band is never chosen
    quiet = per_band.argsort(dim=1)[:, :keep]
    chosen = (band.view(1, 1, *band.shape) == quiet.view(*quiet.shape, 1, 1)).any(1)
    return chosen.unsqueeze(1).to(x.dtype)


def spectral_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, keep: int | None = None, **kwargs
) -> torch.Tensor:
    """PGD-EOT through MANI-Pure's spectral weights, with the perturbation restricted to the
    ``keep`` bands it noises least for each image (default: half of its bands, rounded up):
    delta = IDFT(m DFT(v)), scaled into the ball."""
    _check_budget(x, y, kwargs)
    require(model, "spectral", "spectral")
    bands = model.purifier.spectral.bands
    keep = math.ceil(bands / 2) if keep is None else keep
    _count(keep, "keep (bands)", 1)
    if keep > bands:
        raise ValueError(f"keep must be at most the method's {bands} bands, got {keep}")
    chosen = quiet_bands(model, x, keep)

    def basis(v: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(chosen * torch.fft.fft2(v)).real

    with spectral_gradient(model):
        return steered_pgd(model, x, y, basis=basis, shape=tuple(x.shape),
                           name="spectral PGD-EOT", **kwargs)  # fmt: skip


def low_frequency_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, factor: int = 4, **kwargs
) -> torch.Tensor:
    """PGD-EOT on a coarse perturbation of ceil(H/factor) x ceil(W/factor) per channel,
    upsampled bilinearly (a convex combination, so the Linf box of the coarse variable is
    the Linf ball of the image), then kept in [0, 1]."""
    _check_budget(x, y, kwargs)
    _count(factor, "factor", 1)
    size = tuple(x.shape[-2:])
    coarse = (*x.shape[:2], *(math.ceil(s / factor) for s in size))

    def basis(v: torch.Tensor) -> torch.Tensor:
        return F.interpolate(v, size=size, mode="bilinear", align_corners=False)

    return steered_pgd(model, x, y, basis=basis, shape=coarse,
                       name="low-frequency PGD-EOT", **kwargs)  # fmt: skip
