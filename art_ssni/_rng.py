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


def randn(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Standard normal draws; a generator on another device draws there and moves the result."""
    if generator is None or generator.device == torch.device(device):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    draw = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
    return draw.to(device)
