"""Accuracy of a randomised defence over several draws, reported together.

- single: the first draw alone (what one stochastic forward pass reports);
- vote: majority vote of the predicted labels over the draws (ties go to the smallest label);
- mean: the mean over draws of the per-draw accuracy;
- worst: a sample counts only if every draw classifies it correctly (worst of N).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.defended import DefendedClassifier
from ..validation import check_number

AGGREGATIONS = ("single", "vote", "mean", "worst")


@torch.no_grad()
def predict_draws(
    model: nn.Module,
    x: torch.Tensor,
    draws: int,
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Predicted labels (draws, N): every draw is a fresh pass through the defence."""
    check_number(draws, "draws", low=1, integer=True)
    check_number(batch_size, "batch_size", low=1, integer=True)
    device = next(model.parameters()).device
    out = torch.empty(draws, x.shape[0], dtype=torch.long)
    for d in tqdm(range(draws), desc="draws", disable=not progress, leave=False):
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size].to(device)
            out[d, start : start + batch_size] = model(batch).argmax(1).cpu()
    return out


def predict_with_levels(
    model: nn.Module, x: torch.Tensor, draws: int, *, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`predict_draws` and the levels those very passes used, both (draws, N) on the
    CPU; the levels are None when the model picks none (no noise policy, or no defence)."""
    if not isinstance(model, DefendedClassifier) or model.policy is None:
        return predict_draws(model, x, draws, batch_size=batch_size), None
    with model.record_levels() as passes:
        predictions = predict_draws(model, x, draws, batch_size=batch_size)
    return predictions, torch.cat(passes).view(draws, x.shape[0]).cpu()


def correct_draws(predictions: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boolean (draws, N): whether each draw classifies each sample correctly."""
    if predictions.dim() != 2 or predictions.shape[1] != y.shape[0]:
        raise ValueError(
            f"predictions must be (draws, N) with N = {y.shape[0]}, got {tuple(predictions.shape)}"
        )
    return predictions == y.to(predictions.device)[None, :]


def majority_vote(predictions: torch.Tensor) -> torch.Tensor:
    """The most frequent label per sample over draws (ties: the smallest label)."""
    counts = torch.nn.functional.one_hot(predictions, int(predictions.max()) + 1).sum(0)
    return counts.argmax(1)


def aggregate(predictions: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """single / vote / mean / worst accuracy from predicted labels (draws, N)."""
    correct = correct_draws(predictions, y)
    return {
        "single": correct[0].float().mean().item(),
        "vote": (majority_vote(predictions) == y.to(predictions.device)).float().mean().item(),
        "mean": correct.float().mean().item(),
        "worst": correct.all(0).float().mean().item(),
    }


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927), 95 % by default.

    centre = (p + z^2/2n) / (1 + z^2/n), half-width = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n);
    unlike p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at p = 0 or 1.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def intervals(predictions: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    """95 % Wilson intervals of the single, vote and worst accuracies over the N images.

    The draws are not independent trials of one image, so ``mean`` gets the interval of
    its N-image average as well (a per-image rate, n = N).
    """
    correct = correct_draws(predictions, y)
    n = int(y.shape[0])
    hits = {
        "single": int(correct[0].sum()),
        "vote": int((majority_vote(predictions) == y.to(predictions.device)).sum()),
        "mean": round(float(correct.float().mean()) * n),
        "worst": int(correct.all(0).sum()),
    }
    return {name: list(wilson_interval(k, n)) for name, k in hits.items()}
