"""An ``autoattack`` module with the upstream constructor, over ``pyautoattack``.

robustbench 1.1.1 imports ``autoattack`` (fra31/auto-attack, not on the package index) and calls
``AutoAttack(model, norm=, eps=, version=, device=, log_path=)`` and
``run_standard_evaluation(x, y, bs=, state_path=)``, which returns the adversarial images only.
``pyautoattack`` packages the same attacks with keyword-only arguments (``batch_size=``, no
``log_path``) and returns ``(x_adv, y_adv)``. :class:`AutoAttack` translates; :func:`install`
registers this module as ``autoattack`` (and ``autoattack.state``) unless a real one is
importable, so ``robustbench.eval.benchmark`` runs. It runs AutoAttack *standard*, which judges
a randomised defence from one pass: use ``integrations.benchmark_purified`` for those.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path
from typing import Any

import torch

_LOGGER = "auto-attack"


class AutoAttack:
    """Upstream ``autoattack.AutoAttack``'s signature over ``pyautoattack.AutoAttack``."""

    def __init__(
        self,
        model: torch.nn.Module,
        norm: str = "Linf",
        eps: float = 0.3,
        seed: int | None = None,
        verbose: bool = True,
        attacks_to_run: list[str] | tuple[str, ...] = (),
        version: str = "standard",
        is_tf_model: bool = False,
        device: str | torch.device = "cuda",
        log_path: str | None = None,
    ) -> None:
        if is_tf_model:
            raise ValueError("is_tf_model=True is not supported: pyautoattack runs torch models")
        from pyautoattack import AutoAttack as _Reference

        self._reference = _Reference(
            model,
            attacks=list(attacks_to_run) if version == "custom" else None,
            device=device,
            eps=eps,
            norm=norm,
            seed=seed,
            version=version,
        )
        self._reference.verbose = verbose
        self.log_path = log_path
        if log_path is not None:
            handler = logging.FileHandler(log_path)
            logger = logging.getLogger(_LOGGER)
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_reference"], name)

    def run_standard_evaluation(
        self,
        x_orig: torch.Tensor,
        y_orig: torch.Tensor,
        bs: int = 250,
        return_labels: bool = False,
        state_path: Path | None = None,
    ) -> Any:
        """Adversarial images (and, with ``return_labels``, their predicted labels)."""
        x_adv, y_adv = self._reference.run_standard_evaluation(
            x_orig, y_orig, batch_size=bs, state_path=state_path
        )
        return (x_adv, y_adv) if return_labels else x_adv

    def run_standard_evaluation_individual(
        self, x_orig: torch.Tensor, y_orig: torch.Tensor, bs: int = 250, return_labels: bool = False
    ) -> dict[str, Any]:
        adv = self._reference.run_standard_evaluation_individual(x_orig, y_orig, batch_size=bs)
        return adv if return_labels else {name: pair[0] for name, pair in adv.items()}


def install() -> types.ModuleType:
    """Make ``import autoattack`` work: the real package if installed, else this shim."""
    if "autoattack" in sys.modules:
        return sys.modules["autoattack"]
    try:
        return importlib.import_module("autoattack")
    except ModuleNotFoundError as err:
        if err.name != "autoattack":
            raise
    module = types.ModuleType("autoattack", __doc__)
    module.AutoAttack = AutoAttack  # type: ignore[attr-defined]
    module.__path__ = []  # type: ignore[attr-defined]
    state = importlib.import_module("pyautoattack.state")
    module.state = state  # type: ignore[attr-defined]
    sys.modules["autoattack"] = module
    sys.modules["autoattack.state"] = state
    return module
