"""Adaptive attacks on a :class:`~art_ssni.models.DefendedClassifier`.

- :func:`pgd_eot`: PGD with Expectation over Transformation (Athalye et al. 2018), Linf or L2
  (L2 takes normalised gradient steps and projects onto the ball), summed cross-entropy. Each
  forward pass re-runs the defence, so under SSNI the levels are re-chosen every time (the
  SSNI paper's Algorithm 2). Gradients flow through the defence's own gradient mode.
- :func:`bpda_eot`: the same loop with the purifier's backward replaced by the identity
  (the paper's Algorithm 3).
- :func:`selector_aware_pgd`: also pushes the EPS norm of the adversarial input down,
  differentiating through the noise network, so that SSNI injects less noise. The paper's
  attack never targets the selector; this one does.

All take ``restarts`` (random restarts, the best kept per sample) and ``judge_draws`` /
``criterion``: with N > 0 every iterate is judged over N fresh draws and the best one for
the attacker is returned (DiffHammer / DiffBreak in-loop judging, :mod:`.eot`); N = 0
returns the last iterate (one-shot).

The attacks reach the defence only through the interface of
:class:`~art_ssni.models.DefendedClassifier` (``gradient_mode``, ``policy``, ``scores``); a
plain classifier, or a wrapper that does not offer that interface, is attacked as undefended.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from tqdm.auto import tqdm

from .._rng import RandomSource, as_source, rand, randn
from ..validation import check_images
from .eot import DEFAULT_MAX_ROWS, BestIterate, best_of_restarts, check_judging, eot_gradient, track

NORMS = ("Linf", "L2")


def gradient_mode(model: nn.Module, mode: str) -> AbstractContextManager[None]:
    """Temporarily switch the defence of ``model`` to gradient ``mode`` (see
    :meth:`DefendedClassifier.gradient_mode`); nothing changes for an undefended model."""
    switch = getattr(model, "gradient_mode", None)
    return switch(mode) if switch is not None else nullcontext()


def per_sample_l2(v: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped to broadcast against the batch (never below 1e-12)."""
    return v.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (v.dim() - 1)))


def project(delta: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project a perturbation onto the eps-ball and keep x + delta in [0, 1]."""
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * torch.clamp(eps / per_sample_l2(delta), max=1.0)
    return (x + delta).clamp(0, 1) - x


def _check(x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, step: float, iters: int):
    check_images(x)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not eps > 0 or not step > 0:
        raise ValueError(f"eps and step must be positive, got eps={eps}, step={step}")
    if iters < 0:
        raise ValueError(f"iterations must be >= 0, got {iters}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must hold one label per image, got {tuple(y.shape)}")


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step direction of the norm: sign(g) for Linf, g / ||g|| for L2."""
    return grad.sign() if norm == "Linf" else grad / per_sample_l2(grad)


def random_in_ball(
    shape: tuple[int, ...], norm: str, eps: float, like: torch.Tensor, generator
) -> torch.Tensor:
    """A random point of the eps-ball of ``shape`` (on ``like``'s device and dtype): uniform in
    the Linf box, or a random L2 direction with a uniform radius."""
    draw = {"generator": generator, "device": like.device, "dtype": like.dtype}
    if norm == "Linf":
        return (2 * rand(shape, **draw) - 1) * eps
    direction = randn(shape, **draw)
    radius = rand((shape[0], *([1] * (len(shape) - 1))), **draw) * eps
    return direction / per_sample_l2(direction) * radius


def random_delta(x: torch.Tensor, norm: str, eps: float, generator: RandomSource) -> torch.Tensor:
    """A random perturbation inside the ball (:func:`random_in_ball`), kept in [0, 1]; from
    per-sample streams, sample b's start is drawn from stream b."""
    return project(random_in_ball(tuple(x.shape), norm, eps, x, generator), x, norm, eps)


def pgd_eot(
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
    selector_weight: float = 0.0,
    max_rows: int = DEFAULT_MAX_ROWS,
    generator: RandomSource = None,
    progress: bool = False,
) -> torch.Tensor:
    """Adversarial examples by PGD+EOT (paper defaults: 200 steps of 0.007, 20 draws).

    With ``selector_weight`` w > 0 each step ascends g_CE / ||g_CE|| - w g_EPS / ||g_EPS||
    per sample: the EOT gradient of the cross-entropy and the gradient of the defence's EPS
    norm (:meth:`DefendedClassifier.scores`), each normalised so that w is their relative
    weight whatever their scales (the EPS gradient is orders of magnitude larger than the
    gradient through the purifier). Restart 0 starts at x (or at random with
    ``random_start``), later restarts at random points of the ball.
    """
    _check(x, y, norm, eps, step, iterations)
    check_judging(judge_draws, criterion)
    generator = as_source(generator, x.device)
    x = x.detach()
    selector = _selector(model) if selector_weight else None
    judging = {"max_rows": max_rows}

    def run(restart: int) -> tuple[torch.Tensor, BestIterate | None]:
        delta = torch.zeros_like(x)
        if random_start or restart > 0:
            delta = random_delta(x, norm, eps, generator)
        best = track(None, model, x + delta, y, judge_draws, criterion, **judging)
        desc = f"PGD-EOT {norm} restart {restart + 1}/{restarts}"
        for _ in tqdm(range(iterations), desc=desc, disable=not progress, leave=False):
            grad, _ = eot_gradient(model, x + delta, y, eot, max_rows=max_rows)
            if selector is not None:
                xg = (x + delta).detach().requires_grad_(True)
                (g_eps,) = torch.autograd.grad(selector(xg, generator).sum(), xg)
                grad = grad / per_sample_l2(grad) - selector_weight * g_eps / per_sample_l2(g_eps)
            delta = project(delta + step * ascent_direction(grad, norm), x, norm, eps)
            best = track(best, model, x + delta, y, judge_draws, criterion, **judging)
        if best is None:
            return (x + delta).detach(), None
        return best.x, best

    return best_of_restarts(run, restarts, model, y, criterion, **judging)


def bpda_eot(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """PGD+EOT with the defence's backward pass replaced by the identity (BPDA)."""
    with gradient_mode(model, "bpda"):
        return pgd_eot(model, x, y, **kwargs)


def selector_aware_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, weight: float = 1.0, **kwargs
) -> torch.Tensor:
    """PGD+EOT that also lowers the SSNI selector's EPS norm (weight w, see :func:`pgd_eot`)."""
    if not weight > 0:
        raise ValueError(f"selector weight must be positive, got {weight}")
    _selector(model)
    return pgd_eot(model, x, y, selector_weight=weight, **kwargs)


def _selector(model: nn.Module) -> Callable[..., torch.Tensor]:
    """The defence's differentiable EPS norm ``scores(x, generator)``."""
    if not hasattr(getattr(model, "policy", None), "scores"):
        raise ValueError("the selector-aware attack needs a purifier with an SSNI noise policy")
    return model.scores
