"""The object every attack and integration works on: purify, normalise, classify."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._rng import SeedLike
from ..purification import GRADIENT_MODES
from ..validation import as_floating, check_images


class DefendedClassifier(nn.Module):
    """x in [0, 1] NCHW -> logits of ``classifier(normalise(purifier(x)))``.

    Parameters are frozen and every submodule stays in eval mode whatever ``.train()`` says,
    so torchattacks' and ART's mode switches change nothing: the defence's randomness comes
    from the purifier's generator alone. ``purify_size`` resizes to the diffusion model's
    resolution and back (ImageNet: purify at 256x256 around a 224x224 classifier input).
    ``purifier=None`` is the undefended classifier.

    Evaluation code talks to the defence only through this class: :meth:`reseed`,
    :attr:`gradient` and :meth:`gradient_mode`, :attr:`policy`, :meth:`levels`,
    :meth:`scores`, :meth:`record_levels` and :meth:`describe`.
    """

    def __init__(
        self,
        purifier: nn.Module | None,
        classifier: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        purify_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.purifier = purifier
        self.classifier = classifier
        if mean is not None:
            mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
            if bool((std_t <= 0).any()):
                raise ValueError(f"std must be positive, got {list(std)}")
            self.register_buffer("mean", mean_t)
            self.register_buffer("std", std_t)
        else:
            self.mean = None
            self.std = None
        self.purify_size = tuple(purify_size) if purify_size is not None else None
        self._recording: list[torch.Tensor] | None = None
        for param in self.parameters():
            param.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> DefendedClassifier:
        self.training = mode
        for module in self.children():
            module.train(False)
        return self

    @property
    def votes(self) -> int:
        """Draws the published method votes over (GNS: 10), 1 otherwise."""
        return int(getattr(self.purifier, "votes", 1))

    @property
    def gradient(self) -> str | None:
        """The purifier's gradient mode (full, surrogate or bpda); None undefended."""
        return getattr(self.purifier, "gradient", None)

    @contextmanager
    def gradient_mode(self, mode: str) -> Iterator[None]:
        """Use gradient ``mode`` inside the block and restore the previous mode afterwards,
        also when the block raises (nothing changes without a purifier)."""
        if mode not in GRADIENT_MODES:
            raise ValueError(f"gradient mode must be one of {GRADIENT_MODES}, got {mode!r}")
        if self.purifier is None:
            yield
            return
        previous = self.purifier.gradient
        self.purifier.gradient = mode
        try:
            yield
        finally:
            self.purifier.gradient = previous

    def reseed(self, seed: int) -> None:
        """Restart the defence's random stream from ``seed``, so that the passes that follow
        are reproducible (nothing to do without a purifier)."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if self.purifier is not None:
            self.purifier.generator = torch.Generator().manual_seed(seed)

    @property
    def policy(self) -> Any:
        """The purifier's noise policy (FixedNoise, SSNI-L, ...); None when it has none."""
        return getattr(self.purifier, "noise", None)

    def levels(self, x: torch.Tensor, generator: SeedLike = None) -> torch.Tensor | None:
        """The per-sample levels (LongTensor of B) the policy picks for x in a fresh draw;
        None without a policy. ``generator=None`` draws from the defence's own stream."""
        if self.policy is None:
            return None
        return self.purifier.levels(self._purifier_input(x), generator)

    def scores(self, x: torch.Tensor, generator: SeedLike = None) -> torch.Tensor | None:
        """The per-sample EPS norms an SSNI policy maps to levels (differentiable when grad
        is enabled); None for a policy without scores. ``generator=None``: torch's global
        RNG, as the policy itself."""
        policy = self.policy
        if not hasattr(policy, "scores"):
            return None
        return policy.scores(self._purifier_input(x), generator)

    @contextmanager
    def record_levels(self) -> Iterator[list[torch.Tensor]]:
        """Collect the levels of every purification pass made inside the block.

        Yields a list that receives one LongTensor of per-sample levels per forward pass, in
        the order of the passes: exactly the levels those passes used. The list stays empty
        when the defence picks no levels (no purifier, or one without a noise policy).
        """
        passes: list[torch.Tensor] = []
        if self.policy is None:
            yield passes
            return
        previous = self._recording
        self._recording = passes
        try:
            yield passes
        finally:
            self._recording = previous

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description of the defence, for result files."""
        policy = self.policy
        return {
            "method": type(self.purifier).__name__ if self.purifier is not None else None,
            "classifier": type(self.classifier).__name__,
            "t_star": getattr(self.purifier, "t_star", None),
            "gradient": self.gradient,
            "sampler": getattr(self.purifier, "sampler", None),
            "noise": repr(policy) if policy is not None else None,
            "votes": self.votes,
            "purify_size": list(self.purify_size) if self.purify_size is not None else None,
        }

    def _to_purify_size(self, x: torch.Tensor) -> torch.Tensor:
        if self.purify_size is None or tuple(x.shape[-2:]) == self.purify_size:
            return x
        big = F.interpolate(x, size=self.purify_size, mode="bilinear", align_corners=False)
        return big.clamp(0, 1)

    def _purifier_input(self, x: torch.Tensor) -> torch.Tensor:
        """x as the purifier sees it in :meth:`forward`: checked, cast, resized."""
        check_images(x)
        return self._to_purify_size(as_floating(x, self.dtype))

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """The purified images (the identity without a purifier)."""
        if self.purifier is None:
            return x
        z = self._to_purify_size(x)
        if self._recording is None:
            out = self.purifier(z)
        else:
            out, levels = self.purifier.forward_with_levels(z)
            self._recording.append(levels.detach())
        if z is x:
            return out
        size = tuple(x.shape[-2:])
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False).clamp(0, 1)

    @property
    def dtype(self) -> torch.dtype:
        """The classifier's floating dtype (float32 for a parameter-free classifier)."""
        for param in self.classifier.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for x in [0, 1]; floating inputs of any dtype are cast to the classifier's
        (differentiably, so gradients come back in the caller's dtype)."""
        check_images(x)
        z = self.purify(as_floating(x, self.dtype))
        if self.mean is not None:
            z = (z - self.mean) / self.std
        return self.classifier(z)
