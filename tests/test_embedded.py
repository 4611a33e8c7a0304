"""Properties of SSNI on the shipped digits models (real trained networks, not toys)."""

import pytest
import torch

from art_ssni import DiffusionModel, EPSNorm, ReferenceStats, SSNILinear, SSNISigmoid
from art_ssni.data import load_digits
from art_ssni.models.zoo import load_embedded_eps_net, zoo_root


@pytest.fixture(scope="module")
def setup():
    diffusion = DiffusionModel(load_embedded_eps_net(), image_shape=(1, 8, 8), name="digits")
    stats = ReferenceStats.load(zoo_root() / "digits_stats.safetensors")
    return EPSNorm(diffusion, num_levels=20), stats


def test_shipped_statistics_belong_to_the_shipped_model(setup):
    eps_norm, stats = setup
    stats.check(eps_norm, (1, 8, 8))
    assert stats.norms.numel() == 1297 and stats.min < stats.mean < stats.max


def test_clean_digits_get_lower_levels_than_perturbed_ones(setup):
    eps_norm, stats = setup
    x, _ = load_digits("test")
    x = x[:64]
    g = torch.Generator().manual_seed(0)
    perturbed = (x + 0.1 * torch.randn(x.shape, generator=g).sign()).clamp(0, 1)
    policies = [
        SSNILinear(eps_norm, stats, t_star=40),
        SSNISigmoid(eps_norm, stats, t_star=40, tau=stats.std),
    ]
    for policy in policies:
        with torch.no_grad():
            clean_levels = policy(x, generator=1)
            perturbed_levels = policy(perturbed, generator=1)
        assert clean_levels.float().mean() + 10 < perturbed_levels.float().mean()
        assert (perturbed_levels > clean_levels).float().mean() > 0.9
