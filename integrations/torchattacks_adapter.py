"""torchattacks faces of the evaluation engine, and a multi-draw judge for randomised defences.

A :class:`~art_ssni.models.DefendedClassifier` is already a valid torchattacks model: it takes
[0, 1] NCHW images, returns logits, has (frozen) parameters for torchattacks' device lookup,
and ignores ``.eval()``/``.train()``, so ``PGD``, ``EOTPGD``, ``APGD(eot_iter=...)``, ``APGDT``
and ``MultiAttack`` run on it unchanged and differentiate through the purifier's gradient
mode. This module adds:

- :class:`PGDEOT`, :class:`BPDAEOT`, :class:`SelectorAwarePGD`: the engine's adaptive attacks
  (:mod:`art_ssni.evaluation.attacks`) as ``torchattacks.Attack`` subclasses, so they compose
  with ``MultiAttack``; each delegates to the engine function.
- :class:`EOTAttack`: runs any attack (or a ``MultiAttack``'s chain) but decides which samples
  are fooled, and so which still need attacking, over several draws of the defence instead of
  torchattacks' single forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchattacks import MultiAttack
from torchattacks.attack import Attack

from art_ssni._rng import SeedLike
from art_ssni.evaluation.accuracy import correct_draws, majority_vote, predict_draws
from art_ssni.evaluation.attacks import (
    NORMS,
    bpda_eot,
    gradient_mode,
    pgd_eot,
    selector_aware_pgd,
)
from art_ssni.evaluation.registry import get_attack
from art_ssni.io import atomic_torch_save
from art_ssni.models.defended import DefendedClassifier
from art_ssni.validation import check_images, check_labels, check_number

JUDGES = ("vote", "worst")

__all__ = ["BPDAEOT", "EOTAttack", "JUDGES", "PGDEOT", "RegisteredAttack", "SelectorAwarePGD"]


def _checked(images: Any, labels: Any) -> None:
    """torchattacks' inputs: a non-empty finite [0, 1] image batch and one integer label per
    image, as tensors (a TypeError or ValueError names the problem)."""
    check_images(images, name="images")
    check_labels(labels, int(images.shape[0]), name="labels")


def _check_normalisation(attack: Attack) -> None:
    if attack.normalization_used is not None:
        raise ValueError(
            f"{attack.attack} attacks [0, 1] images; give mean/std to DefendedClassifier "
            "instead of torchattacks' set_normalization_used"
        )


def _refuse_normalisation(attack: Attack) -> None:
    raise ValueError(
        f"{type(attack).__name__} attacks images in [0, 1] and the DefendedClassifier "
        "normalises them itself: give mean/std to DefendedClassifier(purifier, classifier, "
        "mean, std) instead of calling set_normalization_used"
    )


class _TargetedObjective(nn.Module):
    """Turns "reach class t" into the untargeted objective the engine's attacks ascend.

    It returns two logits (0, -CE(f(x), t)) to be scored against label 0, whose cross-entropy
    softplus(-CE(f(x), t)) grows exactly when CE(f(x), t) falls, with a gradient that is a
    positive per-sample multiple of -grad CE(f(x), t): sign steps (Linf) and normalised
    steps (L2) are those of targeted PGD. It offers the defence interface the attacks use
    (``gradient_mode``, ``policy``, ``scores``) by passing it on to the wrapped model, so
    gradient modes and the selector-aware term reach the defence.
    """

    def __init__(self, model: nn.Module, targets: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.targets = targets

    def gradient_mode(self, mode: str) -> AbstractContextManager[None]:
        return gradient_mode(self.model, mode)

    @property
    def policy(self) -> Any:
        return self.model.policy if isinstance(self.model, DefendedClassifier) else None

    def scores(self, x: torch.Tensor, generator: SeedLike = None) -> torch.Tensor | None:
        if not isinstance(self.model, DefendedClassifier):
            return None
        return self.model.scores(x, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.model(x), self.targets, reduction="none")
        return torch.stack([torch.zeros_like(loss), -loss], dim=1)


class PGDEOT(Attack):
    """PGD with EOT through the purifier's gradient mode (:func:`~art_ssni.evaluation.pgd_eot`).

    Arguments follow ``torchattacks.EOTPGD``: ``(model, eps=8/255, alpha=2/255, steps=10,
    eot_iter=2, random_start=True)``, then keyword-only ``norm`` and ``seed`` (the random
    start's seed). The SSNI paper's setting is ``alpha=0.007, steps=200, eot_iter=20``.
    Targeted modes (``set_mode_targeted_random`` and the rest) descend the cross-entropy of
    the target labels.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        eot_iter: int = 2,
        random_start: bool = True,
        *,
        norm: str = "Linf",
        seed: SeedLike = None,
    ) -> None:
        super().__init__(type(self).__name__, model)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        check_number(eps, "eps", low=0.0, low_open=True)
        check_number(alpha, "alpha", low=0.0, low_open=True)
        check_number(steps, "steps", low=0, integer=True)
        check_number(eot_iter, "eot_iter", low=1, integer=True)
        self.norm = norm
        self.eps = eps
        self.alpha = alpha
        self.steps = steps
        self.eot_iter = eot_iter
        self.random_start = random_start
        self.seed = seed
        self.supported_mode = ["default", "targeted"]

    def set_normalization_used(self, mean, std) -> None:  # noqa: ANN001 (torchattacks' API)
        _refuse_normalisation(self)

    def _kwargs(self) -> dict[str, object]:
        return {
            "norm": self.norm,
            "eps": self.eps,
            "step": self.alpha,
            "iterations": self.steps,
            "eot": self.eot_iter,
            "random_start": self.random_start,
            "generator": self.seed,
        }

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return pgd_eot(model, images, labels, **self._kwargs())

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_normalisation(self)
        _checked(images, labels)
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        if self.targeted:
            targets = self.get_target_label(images, labels)
            objective = _TargetedObjective(self.model, targets)
            return self._run(objective, images, torch.zeros_like(labels))
        return self._run(self.model, images, labels)


class BPDAEOT(PGDEOT):
    """PGD+EOT with the purifier's backward replaced by the identity (:func:`bpda_eot`)."""

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return bpda_eot(model, images, labels, **self._kwargs())


class SelectorAwarePGD(PGDEOT):
    """PGD+EOT that also pushes the SSNI selector's EPS norm down (:func:`selector_aware_pgd`)."""

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        eot_iter: int = 2,
        random_start: bool = True,
        *,
        norm: str = "Linf",
        seed: SeedLike = None,
        weight: float = 1.0,
    ) -> None:
        super().__init__(model, eps, alpha, steps, eot_iter, random_start, norm=norm, seed=seed)
        check_number(weight, "weight (the selector weight)", low=0.0, low_open=True)
        self.weight = weight

    def _run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return selector_aware_pgd(model, images, labels, weight=self.weight, **self._kwargs())


class RegisteredAttack(Attack):
    """Any attack of ``art_ssni.evaluation.registry.ATTACKS`` as a torchattacks attack:
    ``RegisteredAttack(model, "apgd-eot", eps=8/255, iterations=10, eot=2, seed=0)``. The
    budget keywords are those the attack's spec takes (``weight`` for the selector-aware
    attack's ``selector_weight``); another keyword raises a ValueError naming it."""

    def __init__(
        self, model: nn.Module, name: str, *, seed: SeedLike = None, **budget: object
    ) -> None:
        super().__init__(f"RegisteredAttack({name})", model)
        self.spec = get_attack(name)
        allowed = {"weight" if k == "selector_weight" else k for k in self.spec.takes}
        allowed |= {"judge_draws", "criterion"} if self.spec.in_loop else set()
        unknown = sorted(set(budget) - allowed)
        if unknown:
            raise ValueError(f"{name} takes {sorted(allowed)}, not {unknown}")
        self.budget, self.seed = budget, seed
        self.supported_mode = ["default", "targeted"]

    def set_normalization_used(self, mean, std) -> None:  # noqa: ANN001 (torchattacks' API)
        _refuse_normalisation(self)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_normalisation(self)
        _checked(images, labels)
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        model: nn.Module = self.model
        if self.targeted:
            model = _TargetedObjective(self.model, self.get_target_label(images, labels))
            labels = torch.zeros_like(labels)
        return self.spec.run(model, images, labels, generator=self.seed, **self.budget)


class EOTAttack(Attack):
    """Runs ``attack`` but judges success over ``n_draws`` passes of the randomised defence.

    ``attack`` is one torchattacks attack, a ``MultiAttack`` or a list of attacks on the same
    model. The clean inputs are judged first; then each attack in turn runs on the samples not
    yet fooled, its outputs are judged, and the fooled ones are kept. ``judge="vote"``: fooled
    when the majority label over the draws is wrong; ``"worst"``: fooled when any draw is wrong
    (worst of N). Samples never fooled get the last attack's output (its strongest attempt),
    samples fooled on clean input keep it. After a call, ``robust`` holds the per-sample
    verdict (True: not fooled) and ``remaining`` the count not fooled after the clean check
    and after each attack.
    """

    def __init__(
        self,
        attack: Attack | Sequence[Attack],
        n_draws: int = 10,
        judge: str = "vote",
        *,
        batch_size: int = 256,
    ) -> None:
        if isinstance(attack, MultiAttack):
            attacks = list(attack.attacks)
        elif isinstance(attack, Attack):
            attacks = [attack]
        else:
            attacks = list(attack)
        if not attacks or not all(isinstance(a, Attack) for a in attacks):
            raise ValueError(
                "attack must be a torchattacks Attack, a MultiAttack or a list of them"
            )
        if len({id(a.model) for a in attacks}) != 1:
            raise ValueError("all attacks must target the same model")
        if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
            raise ValueError(f"n_draws must be an integer >= 1, got {n_draws!r}")
        if judge not in JUDGES:
            raise ValueError(f"judge must be one of {JUDGES}, got {judge!r}")
        check_number(batch_size, "batch_size", low=1, integer=True)
        super().__init__("EOTAttack", attacks[0].model)
        self.attacks = attacks
        self.n_draws = n_draws
        self.judge = judge
        self.batch_size = batch_size
        self.supported_mode = ["default"]
        self.robust: torch.Tensor | None = None
        self.remaining: list[int] = []

    def set_normalization_used(self, mean, std) -> None:  # noqa: ANN001 (torchattacks' API)
        _refuse_normalisation(self)

    def save(
        self,
        data_loader,  # noqa: ANN001 (torchattacks' API)
        save_path: str | None = None,
        verbose: bool = True,
        return_verbose: bool = False,
        save_predictions: bool = False,
        save_clean_inputs: bool = False,
        save_type: str = "float",
    ) -> tuple[float, float, float] | None:
        """torchattacks' ``save`` with this attack's multi-draw verdict: the robust accuracy is
        the share of samples not fooled over ``n_draws`` passes (``self.robust``), never one
        forward pass. Writes ``adv_inputs``, ``labels`` and ``robust`` (and, if asked, the
        clean inputs and the majority-vote predictions) to ``save_path``."""
        if save_type != "float":
            raise ValueError("EOTAttack.save supports save_type='float' only")
        start = time.perf_counter()
        adv, labels, robust, clean, predictions = [], [], [], [], []
        for inputs, batch_labels in data_loader:
            x_adv = self(inputs, batch_labels).detach().cpu()
            adv.append(x_adv)
            labels.append(batch_labels.cpu())
            robust.append(self.robust.cpu())
            clean.append(inputs.cpu())
            if save_predictions:
                draws = predict_draws(self.model, x_adv, self.n_draws, batch_size=self.batch_size)
                predictions.append(majority_vote(draws))
        verdict = torch.cat(robust)
        fooled = ~verdict
        delta = (torch.cat(adv) - torch.cat(clean)).flatten(1)
        rob_acc = 100.0 * float(verdict.float().mean())
        l2 = float(delta[fooled].norm(dim=1).mean()) if fooled.any() else 0.0
        elapsed = time.perf_counter() - start
        if save_path is not None:
            record = {"adv_inputs": torch.cat(adv), "labels": torch.cat(labels), "robust": verdict}
            if save_clean_inputs:
                record["clean_inputs"] = torch.cat(clean)
            if save_predictions:
                record["preds"] = torch.cat(predictions)
            atomic_torch_save(record, save_path)
        if verbose:
            print(f"Robust accuracy over {self.n_draws} draws ({self.judge}): {rob_acc:.2f} %")
        return (rob_acc, l2, elapsed) if return_verbose else None

    def fooled(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Boolean per sample: whether the defence is fooled, judged over ``n_draws`` passes."""
        predictions = predict_draws(self.model, images, self.n_draws, batch_size=self.batch_size)
        labels = labels.cpu()
        if self.judge == "vote":
            wrong = majority_vote(predictions) != labels
        else:
            wrong = ~correct_draws(predictions, labels).all(0)
        return wrong.to(images.device)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_normalisation(self)
        _checked(images, labels)
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        final = images.clone()
        robust = ~self.fooled(images, labels)
        self.remaining = [int(robust.sum())]
        for attack in self.attacks:
            todo = robust.nonzero().flatten()
            if todo.numel() == 0:
                break
            adv = attack(images[todo], labels[todo]).detach().to(self.device)
            final[todo] = adv
            robust[todo[self.fooled(adv, labels[todo])]] = False
            self.remaining.append(int(robust.sum()))
        self.robust = robust
        return final
