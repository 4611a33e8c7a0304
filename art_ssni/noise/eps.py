"""Expected perturbation score (EPS) and the reference statistics of clean data (SSNI, Sec. 3).

EPS(x) = (1/T') sum_{k=1..T'} score(x_k, k) with x_k = sqrt(abar_k) x + sqrt(1 - abar_k) z_k,
and the deviation measure is its per-sample L2 norm: clean inputs sit near the data manifold
where the averaged score is small, perturbed ones further away.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .._rng import RandomSource, SampleStreams, SeedLike, as_generator, as_streams, draw_call_seed
from ..diffusion.model import DiffusionModel
from ..io import refuse_html
from ..validation import as_floating, check_images, check_number

_FORMAT = "art-ssni-reference-stats/1"


class EPSNorm:
    """Per-sample L2 norm of the expected perturbation score over levels 1..``num_levels``.

    All B x T' noised copies go through the network in chunks of ``batch_size`` rows. Each
    sample's T' noises come from its own random stream (the call's
    :class:`~art_ssni._rng.SampleStreams`, or streams keyed by position made from a seed or
    generator), so a sample's value depends only on its own image and its own stream, never on
    its batch-mates or the batch size. Differentiable when grad is enabled.
    """

    def __init__(
        self, diffusion: DiffusionModel, num_levels: int = 20, *, batch_size: int = 1024
    ) -> None:
        check_number(num_levels, "num_levels", low=1, high=diffusion.max_level, integer=True)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.diffusion = diffusion
        self.num_levels = num_levels
        self.batch_size = batch_size

    def expected_score(self, x: torch.Tensor, generator: RandomSource = None) -> torch.Tensor:
        """The averaged score vector (B, C, H, W) of images x in [0, 1]."""
        shape = self.diffusion.image_shape
        check_images(
            x, channels=shape[0] if shape else None, size=tuple(shape[1:]) if shape else None
        )
        x = as_floating(x, self.diffusion.dtype)
        b, levels = x.shape[0], self.num_levels
        streams = as_streams(generator, b)
        noise = streams.randn((levels, *x.shape[1:]), device=x.device, dtype=x.dtype)
        x0 = (2 * x - 1).unsqueeze(1).expand_as(noise).reshape(b * levels, *x.shape[1:])
        noise = noise.reshape(b * levels, *x.shape[1:])
        t = torch.arange(1, levels + 1, device=x.device).repeat(b)
        owner = torch.arange(b, device=x.device).repeat_interleave(levels)
        total = torch.zeros_like(x)
        for start in range(0, b * levels, self.batch_size):
            part = slice(start, start + self.batch_size)
            x_t = self.diffusion.q_sample(x0[part], t[part], noise[part])
            total = total.index_add(0, owner[part], self.diffusion.score(x_t, t[part]))
        return total / levels

    def __call__(self, x: torch.Tensor, generator: RandomSource = None) -> torch.Tensor:
        """||EPS(x_i)||_2 for each sample (B,)."""
        return self.expected_score(x, generator).flatten(1).norm(dim=1)

    def describe(self) -> dict[str, object]:
        """What a statistics file must match to be used with this measure."""
        return {
            "model": self.diffusion.fingerprint(),
            "schedule": self.diffusion.schedule.describe(),
            "num_levels": self.num_levels,
        }


def _check_safetensors_file(path: str) -> None:
    """Name what a statistics file is when it is not safetensors (before safetensors' own error):
    empty, an HTML page, a pickle or torch.save file (never unpickled), or other bytes."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        raise ValueError(f"{path} is empty (0 bytes): not a statistics file")
    refuse_html(path, "statistics", "a safetensors statistics file")
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise ValueError(
            f"{path} is a torch.save or pickle file, not safetensors: statistics files are "
            "never unpickled; write them with ReferenceStats.save or art-ssni stats"
        )
    if len(head) < 9 or head[8:9] != b"{":
        raise ValueError(f"{path} is not a safetensors file (no safetensors header)")
    if int.from_bytes(head[:8], "little") + 8 > os.path.getsize(path):
        raise ValueError(f"{path} is a truncated or corrupt safetensors file")


@dataclass(frozen=True)
class ReferenceStats:
    """EPS norms of clean reference images and the setup they belong to.

    The paper computes them on N = 5,000 clean *training* images; SSNI-L uses min and max,
    SSNI-N the mean.
    """

    norms: torch.Tensor
    model: str
    schedule: str
    num_levels: int
    image_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.norms.dim() != 1 or self.norms.numel() < 2:
            raise ValueError("reference statistics need a 1-D tensor of at least 2 norms")
        if not bool(torch.isfinite(self.norms).all()):
            raise ValueError("reference norms contain NaN or Inf")
        if bool((self.norms < 0).any()):
            raise ValueError("reference norms are norms and cannot be negative")

    @property
    def mean(self) -> float:
        return float(self.norms.double().mean())

    @property
    def std(self) -> float:
        return float(self.norms.double().std())

    @property
    def min(self) -> float:
        return float(self.norms.min())

    @property
    def max(self) -> float:
        return float(self.norms.max())

    @classmethod
    def from_images(
        cls,
        eps_norm: EPSNorm,
        images: torch.Tensor,
        *,
        batch_size: int = 256,
        generator: SeedLike = 0,
        progress: bool = True,
    ) -> ReferenceStats:
        """Compute the EPS norms of clean images (N, C, H, W) in [0, 1], batch by batch.

        One call seed is drawn from ``generator`` and image k draws from the stream keyed by k,
        so the norms do not depend on ``batch_size``."""
        check_images(images, name="images")
        device = eps_norm.diffusion.device
        generator = as_generator(generator, device)
        call_seed = draw_call_seed(generator)
        stream_device = generator.device if generator is not None else "cpu"
        norms = []
        with torch.no_grad():
            starts = range(0, images.shape[0], batch_size)
            for start in tqdm(starts, desc="reference EPS norms", disable=not progress):
                batch = images[start : start + batch_size].to(device)
                keys = torch.arange(start, start + batch.shape[0])
                streams = SampleStreams(call_seed, keys, device=stream_device)
                norms.append(eps_norm(batch, streams).float().cpu())
        return cls(
            norms=torch.cat(norms),
            model=eps_norm.diffusion.fingerprint(),
            schedule=eps_norm.diffusion.schedule.describe(),
            num_levels=eps_norm.num_levels,
            image_shape=tuple(int(d) for d in images.shape[1:]),
        )

    def check(self, eps_norm: EPSNorm, image_shape: tuple[int, ...] | None = None) -> None:
        """Raise ``ValueError`` naming every field that differs from the given setup."""
        expected = eps_norm.describe()
        found = {"model": self.model, "schedule": self.schedule, "num_levels": self.num_levels}
        problems = [
            f"{key}: statistics were computed for {found[key]!r}, not {expected[key]!r}"
            for key in expected
            if found[key] != expected[key]
        ]
        if image_shape is not None and tuple(image_shape) != tuple(self.image_shape):
            problems.append(
                f"image_shape: statistics were computed on {self.image_shape}, "
                f"inputs have {tuple(image_shape)}"
            )
        if problems:
            raise ValueError(
                "reference statistics do not belong to this setup; " + "; ".join(problems)
            )

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file holding the norms and, as metadata, the setup."""
        metadata = {
            "format": _FORMAT,
            "model": self.model,
            "schedule": self.schedule,
            "num_levels": str(self.num_levels),
            "image_shape": json.dumps(list(self.image_shape)),
        }
        save_file({"norms": self.norms.float().contiguous()}, os.fspath(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceStats:
        """Read a file written by :meth:`save`; a file of another kind raises ``ValueError``."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no reference statistics file at {path}")
        _check_safetensors_file(path)
        try:
            with safe_open(path, framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(path)
        except Exception as err:
            raise ValueError(
                f"{path} is a truncated or corrupt safetensors statistics file ({err})"
            ) from err
        if metadata.get("format") != _FORMAT or "norms" not in tensors:
            raise ValueError(f"{path} is not an art-ssni reference statistics file")
        needed = ("model", "schedule", "num_levels", "image_shape")
        missing = [k for k in needed if k not in metadata]
        if missing:
            raise ValueError(f"{path} lacks the metadata {missing}: it is incomplete or edited")
        try:
            num_levels = int(metadata["num_levels"])
            image_shape = tuple(int(d) for d in json.loads(metadata["image_shape"]))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path} has unreadable metadata: {err}") from err
        if len(image_shape) != 3:
            raise ValueError(f"{path} records image_shape {image_shape}, expected (C, H, W)")
        return cls(
            norms=tensors["norms"],
            model=metadata["model"],
            schedule=metadata["schedule"],
            num_levels=num_levels,
            image_shape=image_shape,
        )

    def digest(self) -> str:
        """SHA-256 of the norms and the setup: a run records which statistics it used."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.model, self.schedule, self.num_levels]).encode())
        digest.update(json.dumps(list(self.image_shape)).encode())
        digest.update(self.norms.detach().cpu().float().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def summary(self) -> dict[str, float]:
        return {
            "n": self.norms.numel(),
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
        }
