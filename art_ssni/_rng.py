"""Explicit randomness: every stochastic call takes a seed or a ``torch.Generator``."""

from __future__ import annotations

import torch

SeedLike = int | torch.Generator | None


def as_generator(seed: SeedLike, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator from a seed (or the generator itself); ``None`` means torch's global RNG."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(
            f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}"
        )
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _draw(fn, shape, generator, device, dtype) -> torch.Tensor:
    if generator is None or generator.device == torch.device(device):
        return fn(shape, generator=generator, device=device, dtype=dtype)
    return fn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def randn(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal draws; a generator on another device draws there and moves the result."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform draws in [0, 1), with the same device handling as :func:`randn`."""
    return _draw(torch.rand, shape, generator, device, dtype)
