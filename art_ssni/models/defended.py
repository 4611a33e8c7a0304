"""The object every attack and integration works on: purify, normalise, classify."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._rng import SampleStreams, SeedLike, check_sample_ids, draw_call_seed, tiled_keys
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
    :meth:`samples`, :attr:`gradient` and :meth:`gradient_mode`, :attr:`policy`,
    :meth:`levels`, :meth:`scores`, :meth:`record_levels` and :meth:`describe`.

    Every sample draws from its own random stream, keyed by its id when the caller names the
    samples (``sample_ids=`` on a call, or :meth:`samples` around an attack) and by its position
    in the call otherwise: a sample's result never depends on its batch-mates or the batch size,
    and without ids only on its position.
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
            mean_t = _channel_values(mean, "mean")
            std_t = _channel_values(std, "std")
            if mean_t.numel() != std_t.numel():
                raise ValueError(
                    f"mean and std need one value per channel each, got {mean_t.numel()} and "
                    f"{std_t.numel()}"
                )
            if bool((std_t <= 0).any()):
                raise ValueError(f"std must be positive, got {std_t.tolist()}")
            self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
            self.register_buffer("std", std_t.view(1, -1, 1, 1))
        else:
            self.mean = None
            self.std = None
        self.purify_size = tuple(purify_size) if purify_size is not None else None
        self._recording: list[torch.Tensor] | None = None
        self._samples: torch.Tensor | None = None
        self._rows_sent = 0
        self._block_seed: int | None = None
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
        """Draws the published method votes over (GNS: 10, DAC: 20), 1 otherwise."""
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

    @contextmanager
    def samples(self, ids: torch.Tensor) -> Iterator[None]:
        """Name the N samples of a batch (int64 ids, e.g. their indices in the evaluated data
        set) for the calls inside the block: the rows those calls send, counted in order across
        calls, are the batch tiled (``x.repeat(draws, 1, 1, 1)``, split in chunks of any size),
        so row p is sample ids[p % N], copy p // N (:func:`~art_ssni._rng.tiled_keys`), and
        each row draws from the stream of that key under one seed the block draws from the
        defence's generator on entry. Sample i's k-th row is therefore the same draw whatever
        the batch size, the other samples and the chunking of the calls. An attack that sends
        a subset names it in a block of its own (``samples(sample_ids[subset])``, which draws
        its own seed). :meth:`levels` and :meth:`scores` map their rows as one tiled pass,
        without counting."""
        if torch.as_tensor(ids).dim() != 1:
            raise ValueError("samples() takes plain (N,) ids; the copies are counted here")
        previous = self._samples, self._rows_sent, self._block_seed
        self._samples, self._rows_sent = check_sample_ids(ids, len(ids))[:, 0], 0
        if self.purifier is not None:
            self._block_seed = draw_call_seed(getattr(self.purifier, "generator", None))
        try:
            yield
        finally:
            self._samples, self._rows_sent, self._block_seed = previous

    @property
    def sample_ids(self) -> torch.Tensor | None:
        """The ids named by the innermost :meth:`samples` block (None outside one): an attack
        that sends a subset of the batch names it with ``samples(sample_ids[subset])``."""
        return self._samples

    def _keys(self, batch: int, sample_ids: object | None, *, count: bool) -> torch.Tensor | None:
        """The stream keys of a call's rows: ``sample_ids`` when given, else the rows' places
        in the tiled batch of :meth:`samples` (advancing the row count when ``count``), else
        None (positions)."""
        if sample_ids is not None:
            return check_sample_ids(sample_ids, batch)
        if self._samples is None:
            return None
        start = self._rows_sent if count else 0
        if count:
            self._rows_sent += batch
        return tiled_keys(self._samples, start, batch)

    @property
    def policy(self) -> Any:
        """The purifier's noise policy (FixedNoise, SSNI-L, ...); None when it has none."""
        return getattr(self.purifier, "noise", None)

    def levels(
        self, x: torch.Tensor, generator: SeedLike = None, *, sample_ids: object | None = None
    ) -> torch.Tensor | None:
        """The per-sample levels (LongTensor of B) the policy picks for x in a fresh draw;
        None without a policy. ``generator=None`` draws from the defence's own stream."""
        if self.policy is None:
            return None
        keys = self._keys(x.shape[0], sample_ids, count=False)
        return self.purifier.levels(self._purifier_input(x), generator, sample_ids=keys)

    def scores(
        self, x: torch.Tensor, generator: SeedLike = None, *, sample_ids: object | None = None
    ) -> torch.Tensor | None:
        """The per-sample EPS norms an SSNI policy maps to levels (differentiable when grad
        is enabled); None for a policy without scores. ``generator=None``: torch's global
        RNG, as the policy itself."""
        policy = self.policy
        if not hasattr(policy, "scores"):
            return None
        keys = self._keys(x.shape[0], sample_ids, count=False)
        streams = SampleStreams.for_call(generator, x.shape[0], keys)
        return policy.scores(self._purifier_input(x), streams)

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

    def purify(self, x: torch.Tensor, *, sample_ids: object | None = None) -> torch.Tensor:
        """The purified images (the identity without a purifier); ``sample_ids`` key the
        samples' random streams (see :meth:`samples`)."""
        if self.purifier is None:
            return x
        z = self._to_purify_size(x)
        keys = self._keys(x.shape[0], sample_ids, count=True)
        if keys is None:
            named = {}
        elif sample_ids is None:
            device = getattr(getattr(self.purifier, "generator", None), "device", "cpu")
            named = {"generator": SampleStreams(self._block_seed, keys, device=device)}
        else:
            named = {"sample_ids": keys}
        if self._recording is None:
            out = self.purifier(z, **named)
        else:
            out, levels = self.purifier.forward_with_levels(z, **named)
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

    def forward(self, x: torch.Tensor, *, sample_ids: object | None = None) -> torch.Tensor:
        """Logits for x in [0, 1]; floating inputs of any dtype are cast to the classifier's
        (differentiably, so gradients come back in the caller's dtype). ``sample_ids`` ((B,)
        ids or (B, 2) (id, copy) pairs) key the samples' random streams. Non-finite logits
        raise, naming the classifier."""
        check_images(x)
        z = self.purify(as_floating(x, self.dtype), sample_ids=sample_ids)
        if self.mean is not None:
            z = (z - self.mean) / self.std
        return self._check_logits(self.classifier(z))

    def _check_logits(self, logits: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(logits.detach())
        if bool(bad.any()):
            rows = int(bad.flatten(1).any(1).sum()) if logits.dim() > 1 else int(bad.sum())
            raise ValueError(
                f"the classifier {type(self.classifier).__name__} produced non-finite logits "
                f"(NaN or Inf) for {rows} of {logits.shape[0]} inputs; check its weights and "
                "the normalisation (mean/std) it is given"
            )
        return logits


def _channel_values(values: Sequence[float], name: str) -> torch.Tensor:
    """Per-channel normalisation values as a finite 1-D float32 tensor (bools refused: True
    would become 1.0)."""
    listed = values.tolist() if isinstance(values, torch.Tensor) else values
    items = listed if isinstance(listed, (list, tuple)) else [listed]
    if any(isinstance(v, bool) for v in items):
        raise ValueError(f"{name} must be numbers, one per channel, got {values!r}")
    try:
        tensor = torch.as_tensor(values, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be numbers, one per channel, got {values!r}") from err
    if tensor.numel() == 0 or not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite numbers, one per channel, got {values!r}")
    return tensor
