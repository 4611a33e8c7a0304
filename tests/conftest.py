"""Tiny networks and fixtures shared by the tests (CPU, seconds)."""

from __future__ import annotations

import os

import pytest
import torch

from art_ssni import DiffusionModel, EPSNorm, ReferenceStats

from tiny import RowCounter, TinyEpsNet

# The tests run tiny networks, where a second intra-op thread costs more than it gives and
# thrashes when CI shares the machine; subprocesses (the CLI tests) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def diffusion() -> DiffusionModel:
    return DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8), name="tiny")


@pytest.fixture
def counted() -> DiffusionModel:
    return DiffusionModel(RowCounter(TinyEpsNet()), image_shape=(3, 8, 8), name="tiny-counted")


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.rand(6, 3, 8, 8, generator=g)


@pytest.fixture
def stats(diffusion: DiffusionModel) -> ReferenceStats:
    eps_norm = EPSNorm(diffusion, num_levels=5)
    g = torch.Generator().manual_seed(7)
    clean = torch.rand(16, 3, 8, 8, generator=g) * 0.5 + 0.25
    return ReferenceStats.from_images(eps_norm, clean, batch_size=8, generator=0, progress=False)
