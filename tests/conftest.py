"""Tiny networks and fixtures shared by the tests (CPU, seconds)."""

from __future__ import annotations

import os

import pytest
import torch

from art_ssni import DiffusionModel, EPSNorm, ReferenceStats

from tiny import RowCounter, TinyClassifier, TinyEpsNet

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


@pytest.fixture(scope="module")
def cifar_diffusion() -> DiffusionModel:
    """A tiny network on CIFAR-10's 3x32x32 images."""
    return DiffusionModel(TinyEpsNet(), image_shape=(3, 32, 32), name="tiny-cifar")


@pytest.fixture(scope="module")
def embedded_cifar10_diffusion() -> DiffusionModel:
    """The shipped CIFAR-10 UNet (trained up to level 300)."""
    from art_ssni.models.zoo import load_embedded_cifar10_eps_net

    return DiffusionModel(load_embedded_cifar10_eps_net(), image_shape=(3, 32, 32))


@pytest.fixture(scope="module")
def digits_eps_norm_stats() -> tuple[EPSNorm, ReferenceStats]:
    """The shipped digits UNet's EPS norm (20 levels) and its shipped reference statistics."""
    from art_ssni.models.zoo import load_embedded_eps_net, zoo_root

    diffusion = DiffusionModel(load_embedded_eps_net(), image_shape=(1, 8, 8), name="digits")
    stats = ReferenceStats.load(zoo_root() / "digits_stats.safetensors")
    return EPSNorm(diffusion, num_levels=20), stats


@pytest.fixture
def weak_defence(diffusion: DiffusionModel):
    """A weak defence and 8 images its classifier gets right by construction."""
    from art_ssni import DiffPure
    from art_ssni.models.defended import DefendedClassifier

    classifier = TinyClassifier()
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    y = classifier(x).argmax(1)
    weak = DefendedClassifier(DiffPure(diffusion, t_star=1, steps=1, generator=0), classifier)
    return weak, x, y


@pytest.fixture
def one_thread():
    """One intra-op thread for the duration of a test (runs dominated by per-call overhead)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
