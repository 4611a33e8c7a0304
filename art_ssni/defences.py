"""ART ``PreprocessorPyTorch`` defences: DiffPure, GDMP, GNS, DAC and MANI-Pure with any noise
policy.

ART 1.20's ``PyTorchClassifier`` runs ``forward`` with autograd for loss and class
gradients and under ``no_grad`` for predictions, on the whole input array at once; the
gradient mode therefore lives inside ``forward`` (the purifier's autograd graph).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from art.defences.preprocessor.preprocessor import PreprocessorPyTorch

from .diffusion.model import DiffusionModel
from .purification.engine import Purifier
from .purification.heterogeneous import DAC, MANIPure
from .purification.methods import GDMP, GNS, DiffPure


class _PurificationPreprocessor(PreprocessorPyTorch):
    purifier_class: type[Purifier]
    params = ["purifier", "eot_samples", "batch_size"]

    def __init__(
        self,
        diffusion: DiffusionModel,
        *,
        eot_samples: int = 1,
        batch_size: int = 128,
        device_type: str = "gpu",
        **purifier_kwargs: Any,
    ) -> None:
        super().__init__(
            device_type=device_type, is_fitted=True, apply_fit=False, apply_predict=True
        )
        self.purifier = self.purifier_class(diffusion, **purifier_kwargs).to(self.device)
        self.eot_samples = eot_samples
        self.batch_size = batch_size
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

    def forward(self, x: torch.Tensor, y: Any | None = None) -> tuple[torch.Tensor, Any | None]:
        """Purify x in [0, 1]; with labels under autograd, expand x and y ``eot_samples`` times.

        The expansion makes ART's loss the mean over EOT draws, so its gradient with
        respect to the original x is the EOT average (Athalye et al. 2018).
        """
        self.purifier.check_input(x)
        if self.eot_samples > 1 and y is not None and torch.is_grad_enabled() and x.requires_grad:
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
        return torch.cat(out).to(device=device, dtype=torch.float32).clamp(0, 1), y


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
