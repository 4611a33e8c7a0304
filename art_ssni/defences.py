"""ART ``PreprocessorPyTorch`` defences: DiffPure, GDMP, GNS, DAC and MANI-Pure with any noise
policy.

ART 1.20's ``PyTorchClassifier`` runs ``forward`` with autograd for loss and class
gradients and under ``no_grad`` for predictions, on the whole input array at once; the
gradient mode therefore lives inside ``forward`` (the purifier's autograd graph).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
from art.estimators.classification import PyTorchClassifier

from .diffusion.model import DiffusionModel
from .purification.engine import Purifier
from .purification.heterogeneous import DAC, MANIPure
from .purification.methods import GDMP, GNS, DiffPure
from .purification.registry import get_method
from .validation import scale_hint


class _PurificationPreprocessor(PreprocessorPyTorch):
    """ART preprocessing defence around a purifier; ART's own keywords mean what they mean in
    ART's defences (``apply_fit``, ``apply_predict``, ``clip_values``, ``channels_first``).

    ``clip_values=(min, max)`` is the data's range, as on ART's estimators: inputs are clipped
    into it and purified as (x - min) / (max - min), the result mapped back, so a classifier
    on [0, 255] images takes this defence with ``clip_values=(0, 255)``. Without it inputs
    must lie in [0, 1].
    """

    purifier_class: type[Purifier]
    params = ["purifier", "eot_samples", "batch_size", "clip_values", "channels_first"]

    def __init__(
        self,
        diffusion: DiffusionModel,
        *,
        eot_samples: int = 1,
        batch_size: int = 128,
        device_type: str = "gpu",
        clip_values: tuple[float, float] | None = None,
        channels_first: bool = True,
        apply_fit: bool = False,
        apply_predict: bool = True,
        **purifier_kwargs: Any,
    ) -> None:
        super().__init__(
            device_type=device_type,
            is_fitted=True,
            apply_fit=apply_fit,
            apply_predict=apply_predict,
        )
        self.diffusion = diffusion
        self.purifier_kwargs = dict(purifier_kwargs)
        self.purifier = self.purifier_class(diffusion, **purifier_kwargs).to(self.device)
        self.eot_samples = eot_samples
        self.batch_size = batch_size
        self.clip_values = clip_values
        self.channels_first = channels_first
        self._eot_by_caller = False
        self._check_params()

    def set_params(self, **kwargs: Any) -> None:
        """Set this defence's parameters or rebuild the purifier with new constructor
        arguments (``t_star``, ``gradient``, ``noise``, ...); an unknown name raises."""
        import inspect

        own = {k: v for k, v in kwargs.items() if k in self.params and k != "purifier"}
        rebuild = {k: v for k, v in kwargs.items() if k not in own and k != "purifier"}
        accepted = set(inspect.signature(self.purifier_class.__init__).parameters) - {"self"}
        unknown = sorted(set(rebuild) - accepted)
        if unknown:
            raise ValueError(
                f"{type(self).__name__}.set_params: unknown parameters {unknown}; this defence "
                f"takes {sorted(set(self.params) - {'purifier'})} and the purifier "
                f"{sorted(accepted - {'diffusion'})}"
            )
        if "purifier" in kwargs:
            self.purifier = kwargs["purifier"]
        if rebuild:
            merged = {**self.purifier_kwargs, **rebuild}
            purifier = self.purifier_class(self.diffusion, **merged).to(self.device)
            self.purifier, self.purifier_kwargs = purifier, merged
        for key, value in own.items():
            setattr(self, key, value)
        self._check_params()

    def _check_params(self) -> None:
        if isinstance(self.eot_samples, bool) or not isinstance(self.eot_samples, int):
            raise ValueError(f"eot_samples must be an int, got {self.eot_samples!r}")
        if self.eot_samples < 1:
            raise ValueError(f"eot_samples must be >= 1, got {self.eot_samples}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ValueError(f"batch_size must be an int, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.clip_values is not None:
            try:
                low, high = (float(v) for v in self.clip_values)
            except (TypeError, ValueError):
                raise ValueError(
                    f"clip_values must be (min, max), the data's range, got {self.clip_values!r}"
                ) from None
            if not (np.isfinite(low) and np.isfinite(high) and low < high):
                raise ValueError(
                    f"clip_values must be (min, max) with finite min < max, the data's range "
                    f"(as the ART classifier's clip_values), got {self.clip_values!r}"
                )
        if not isinstance(self.channels_first, bool):
            raise ValueError(f"channels_first must be a bool, got {self.channels_first!r}")

    def forward(self, x: torch.Tensor, y: Any | None = None) -> tuple[torch.Tensor, Any | None]:
        """Purify x; with labels under autograd, expand x and y ``eot_samples`` times.

        The expansion makes ART's loss the mean over EOT draws, so its gradient with
        respect to the original x is the EOT average (Athalye et al. 2018). Without labels
        (ART's ``class_gradient`` and activation gradients) no such average exists, so a
        gradient with ``eot_samples`` > 1 is refused rather than silently taken over one
        draw. ``clip_values`` clips x into the data's range and purifies it scaled to
        [0, 1]; ``channels_first=False`` takes and returns NHWC.
        """
        if not self.channels_first:
            if x.dim() != 4:
                raise ValueError(f"channels_first=False expects NHWC images, got {tuple(x.shape)}")
            x = x.permute(0, 3, 1, 2)
        low, high = (0.0, 1.0) if self.clip_values is None else map(float, self.clip_values)
        if self.clip_values is not None:
            x = (x.clamp(low, high) - low) / (high - low)
        self._check_range(x)
        wants_gradient = torch.is_grad_enabled() and x.requires_grad
        if self.eot_samples > 1 and wants_gradient and y is None and not self._eot_by_caller:
            raise ValueError(
                f"eot_samples={self.eot_samples} needs labels to average the gradient over EOT "
                "draws, and ART asks this gradient without them (class_gradient, activation "
                "gradients), which would use one draw: use VotingPyTorchClassifier, whose "
                "class_gradient averages over eot_samples draws, or eot_samples=1"
            )
        if self.eot_samples > 1 and y is not None and wants_gradient:
            x = x.repeat_interleave(self.eot_samples, dim=0)
            y = (
                y.repeat_interleave(self.eot_samples, dim=0)
                if isinstance(y, torch.Tensor)
                else np.repeat(y, self.eot_samples, axis=0)
            )
        device = x.device
        out = [
            self.purifier(chunk.to(self.device)) for chunk in torch.split(x, self.batch_size, dim=0)
        ]
        out = torch.cat(out).to(device=device, dtype=torch.float32).clamp(0, 1)
        if self.clip_values is not None:
            out = out * (high - low) + low
        return (out if self.channels_first else out.permute(0, 2, 3, 1)), y

    def _check_range(self, x: torch.Tensor) -> None:
        try:
            self.purifier.check_input(x)
        except ValueError as err:
            if "values in [0, 1]" not in str(err) or not x.is_floating_point():
                raise
            low, high = float(x.detach().min()), float(x.detach().max())
            if 0.0 <= low and 1.5 < high <= 255.0:
                hint = (
                    "these look like [0, 255] pixels: if the classifier has clip_values=(0, 255), "
                    "give this defence the same clip_values=(0, 255)"
                )
            elif -0.5 < low and high < 1.5:
                hint = (
                    "if an ART attack produced these inputs, the classifier probably has "
                    "clip_values=None, so the attack's steps leave [0, 1]: create it with "
                    "PyTorchClassifier(..., clip_values=(0, 1)), or give this defence "
                    "clip_values=(0, 1)"
                )
            else:
                hint = scale_hint(low, high)
            raise ValueError(
                f"x must have values in [0, 1] (or in the range clip_values gives "
                f"{type(self).__name__}), got min {low:.4g} and max {high:.4g}: {hint}"
            ) from err


@contextmanager
def _eot_by_caller(defences: Sequence[Any]) -> Iterator[None]:
    """Inside the block the purification defences take label-free gradients over one draw:
    the caller averages over draws itself."""
    ours = [d for d in defences if isinstance(d, _PurificationPreprocessor)]
    for defence in ours:
        defence._eot_by_caller = True
    try:
        yield
    finally:
        for defence in ours:
            defence._eot_by_caller = False


class PurificationPyTorch(_PurificationPreprocessor):
    """ART defence for any registered method (``art_ssni.purification.registry.METHODS``):
    ``PurificationPyTorch(diffusion, method="dac", classifier=..., mask_layers=...)``; the
    other keyword arguments pass to the method's constructor."""

    def __init__(self, diffusion: DiffusionModel, *, method: str, **kwargs: Any) -> None:
        self.method = method
        self.purifier_class = get_method(method).cls
        super().__init__(diffusion, **kwargs)


class DiffPurePyTorch(_PurificationPreprocessor):
    """ART defence: :class:`~art_ssni.purification.DiffPure` (keyword arguments pass through)."""

    purifier_class = DiffPure


class GDMPPyTorch(_PurificationPreprocessor):
    """ART defence: :class:`~art_ssni.purification.GDMP` (keyword arguments pass through)."""

    purifier_class = GDMP


class GNSPyTorch(_PurificationPreprocessor):
    """ART defence: :class:`~art_ssni.purification.GNS` (keyword arguments pass through)."""

    purifier_class = GNS


class DACPyTorch(_PurificationPreprocessor):
    """ART defence: :class:`~art_ssni.purification.DAC` (keyword arguments pass through;
    ``mask`` is required)."""

    purifier_class = DAC


class MANIPurePyTorch(_PurificationPreprocessor):
    """ART defence: :class:`~art_ssni.purification.MANIPure` (keyword arguments pass through)."""

    purifier_class = MANIPure


class VotingPyTorchClassifier(PyTorchClassifier):
    """An ART ``PyTorchClassifier`` whose ``predict`` is a majority vote over ``votes``
    purifications, as the published methods predict (GNS: 10 votes, DAC: 20), in the spirit
    of ART's randomized-smoothing estimators. ``votes=None`` takes the defence's own
    (:attr:`published_votes`).

    ``predict`` returns the fraction of the votes each class got (rows sum to 1; the argmax is
    the majority label, ties to the smaller label). ``class_gradient`` averages over the
    largest ``eot_samples`` of its purification defences, as their ``loss_gradient`` does.
    """

    def __init__(self, *args: Any, votes: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if votes is None:
            votes = self.published_votes
        if isinstance(votes, bool) or not isinstance(votes, int) or votes < 1:
            raise ValueError(f"votes must be a positive int, got {votes!r}")
        self.votes = votes

    @property
    def published_votes(self) -> int:
        """The votes the defence publishes: the largest ``votes`` of the model (a
        ``DefendedClassifier``) and of its purification defences' purifiers (GNS: 10, DAC: 20);
        1 when none publishes a vote (one prediction)."""
        defences = self.preprocessing_defences or []
        sources = [self.model, *(getattr(d, "purifier", None) for d in defences)]
        return max([int(getattr(s, "votes", 1)) for s in sources if s is not None] + [1])

    @property
    def eot_samples(self) -> int:
        defences = self.preprocessing_defences or []
        return max([int(getattr(d, "eot_samples", 1)) for d in defences] + [1])

    def predict(
        self, x: np.ndarray, batch_size: int = 128, training_mode: bool = False, **kwargs: Any
    ) -> np.ndarray:
        counts = None
        for _ in range(self.votes):
            logits = super().predict(x, batch_size=batch_size, training_mode=training_mode)
            one_hot = np.eye(logits.shape[1], dtype=np.float32)[logits.argmax(1)]
            counts = one_hot if counts is None else counts + one_hot
        return counts / self.votes

    def class_gradient(self, x: np.ndarray, label: Any = None, **kwargs: Any) -> np.ndarray:
        draws = self.eot_samples
        with _eot_by_caller(self.preprocessing_defences or []):
            total = super().class_gradient(x, label=label, **kwargs)
            for _ in range(draws - 1):
                total = total + super().class_gradient(x, label=label, **kwargs)
        return total / draws
