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

from collections.abc import Sequence

import torch
from torch import nn
from torchattacks import MultiAttack
from torchattacks.attack import Attack

from art_ssni._rng import SeedLike
from art_ssni.evaluation.accuracy import correct_draws, majority_vote, predict_draws
from art_ssni.evaluation.attacks import NORMS, bpda_eot, pgd_eot, selector_aware_pgd

JUDGES = ("vote", "worst")

__all__ = ["BPDAEOT", "EOTAttack", "JUDGES", "PGDEOT", "SelectorAwarePGD"]


def _check_normalisation(attack: Attack) -> None:
    if attack.normalization_used is not None:
        raise ValueError(
            f"{attack.attack} attacks [0, 1] images; give mean/std to DefendedClassifier "
            "instead of torchattacks' set_normalization_used"
        )


class PGDEOT(Attack):
    """PGD with EOT through the purifier's gradient mode (:func:`~art_ssni.evaluation.pgd_eot`).

    ``alpha`` is the step size, ``steps`` the iterations and ``eot_iter`` the draws averaged per
    gradient (paper defaults: 0.007, 200, 20). ``seed`` fixes the random start.
    """

    def __init__(
        self,
        model: nn.Module,
        norm: str = "Linf",
        eps: float = 8 / 255,
        alpha: float = 0.007,
        steps: int = 200,
        eot_iter: int = 20,
        random_start: bool = False,
        seed: SeedLike = None,
    ) -> None:
        super().__init__(type(self).__name__, model)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not eps > 0 or not alpha > 0:
            raise ValueError(f"eps and alpha must be positive, got eps={eps}, alpha={alpha}")
        if steps < 0 or eot_iter < 1:
            raise ValueError(f"need steps >= 0 and eot_iter >= 1, got {steps} and {eot_iter}")
        self.norm = norm
        self.eps = eps
        self.alpha = alpha
        self.steps = steps
        self.eot_iter = eot_iter
        self.random_start = random_start
        self.seed = seed
        self.supported_mode = ["default"]

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

    def _run(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return pgd_eot(self.model, images, labels, **self._kwargs())

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_normalisation(self)
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        return self._run(images, labels)


class BPDAEOT(PGDEOT):
    """PGD+EOT with the purifier's backward replaced by the identity (:func:`bpda_eot`)."""

    def _run(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return bpda_eot(self.model, images, labels, **self._kwargs())


class SelectorAwarePGD(PGDEOT):
    """PGD+EOT that also pushes the SSNI selector's EPS norm down (:func:`selector_aware_pgd`)."""

    def __init__(
        self,
        model: nn.Module,
        norm: str = "Linf",
        eps: float = 8 / 255,
        alpha: float = 0.007,
        steps: int = 200,
        eot_iter: int = 20,
        random_start: bool = False,
        seed: SeedLike = None,
        weight: float = 1.0,
    ) -> None:
        super().__init__(model, norm, eps, alpha, steps, eot_iter, random_start, seed)
        if not weight > 0:
            raise ValueError(f"selector weight must be positive, got {weight}")
        self.weight = weight

    def _run(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return selector_aware_pgd(self.model, images, labels, weight=self.weight, **self._kwargs())


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
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__("EOTAttack", attacks[0].model)
        self.attacks = attacks
        self.n_draws = n_draws
        self.judge = judge
        self.batch_size = batch_size
        self.supported_mode = ["default"]
        self.robust: torch.Tensor | None = None
        self.remaining: list[int] = []

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
