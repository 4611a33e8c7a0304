"""Properties of SSNI on the shipped digits and CIFAR-10 models (real trained networks, not
toys): clean images get lower levels than perturbed ones, and levels stay within those the
model was trained for."""

import torch

from art_ssni import EPSNorm, ReferenceStats, SSNILinear, SSNISigmoid
from art_ssni.data import load_digits
from art_ssni.models.zoo import CIFAR10_FILES, load_embedded_cifar10_images, zoo_root


def test_clean_digits_get_lower_levels_than_perturbed_ones(digits_eps_norm_stats):
    eps_norm, stats = digits_eps_norm_stats
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


def test_ssni_levels_are_clamped_to_the_trained_levels(embedded_cifar10_diffusion) -> None:
    stats = ReferenceStats.load(zoo_root() / CIFAR10_FILES["stats"])
    policy = SSNISigmoid(EPSNorm(embedded_cifar10_diffusion, 20), stats, 100, 500, stats.std)
    levels = policy.levels_from_scores(torch.tensor([stats.min, stats.mean, 1e9]))
    assert int(levels.max()) == 300 and policy.t_max == 300


def test_ssni_gives_clean_images_lower_levels_than_noisy_ones(embedded_cifar10_diffusion) -> None:
    x, _ = load_embedded_cifar10_images()
    x = x[:16]
    noisy = (x + 8 / 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(
        0, 1
    )
    stats = ReferenceStats.load(zoo_root() / CIFAR10_FILES["stats"])
    policy = SSNISigmoid(EPSNorm(embedded_cifar10_diffusion, 20), stats, 100, 0, stats.std)
    assert policy(x, 0).float().mean() < policy(noisy, 0).float().mean()
