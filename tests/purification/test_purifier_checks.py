"""Purifiers refuse what would give silently wrong answers: a noise policy's levels must be
whole numbers (floats included) in the schedule, a bad one naming the policy, and within the
levels the model was trained for; a non-finite output raises."""

import pytest
import torch
from torch import nn

from art_ssni import DiffPure, DiffusionModel


class Levels:
    def __init__(self, values):
        self.values = values

    def __call__(self, x, generator=None):
        return torch.tensor(self.values, dtype=torch.float64)

    def __repr__(self):
        return "Levels(bad)"


@pytest.mark.parametrize("bad", [float("nan"), -1.0, 5000.0, 2.5])
def test_bad_policy_levels_raise_naming_the_policy(diffusion, images, bad):
    values = [4.0] * images.shape[0]
    values[2] = bad
    purifier = DiffPure(diffusion, t_star=4, steps=2, noise=Levels(values))
    with pytest.raises(ValueError, match=r"Levels\(bad\)"):
        purifier(images)


def test_valid_float_levels_are_accepted(diffusion, images):
    values = [0.0, 4.0, 2.0, 1000.0, 3.0, 4.0]
    purifier = DiffPure(diffusion, t_star=4, steps=2, noise=Levels(values))
    assert purifier.levels(images).tolist() == [0, 4, 2, 1000, 3, 4]


class NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float("nan")))

    def forward(self, x, t):
        return x * self.w


def test_purifier_with_non_finite_output_raises(images):
    purifier = DiffPure(DiffusionModel(NaNNet()), t_star=4, steps=2)
    with pytest.raises(ValueError, match="non-finite"):
        purifier(images)
    with pytest.raises(ValueError, match="non-finite"):
        purifier(images.clone().requires_grad_(True))


def test_purifiers_refuse_levels_the_model_was_not_trained_for(embedded_cifar10_diffusion) -> None:
    assert embedded_cifar10_diffusion.max_level == 300
    DiffPure(embedded_cifar10_diffusion, t_star=300, steps=1)
    with pytest.raises(ValueError, match="t_star"):
        DiffPure(embedded_cifar10_diffusion, t_star=301, steps=1)
    purifier = DiffPure(
        embedded_cifar10_diffusion,
        t_star=100,
        steps=1,
        noise=lambda x, generator=None: torch.full((len(x),), 400),
    )
    with pytest.raises(ValueError, match="trained for"):
        purifier(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, float("nan"), 1001])
def test_diffpure_refuses_a_surrogate_level_outside_the_models_levels(diffusion, bad):
    """0 used to become t* silently; a surrogate level is a whole number in 1..the top level
    (it may exceed t*: ImageNet's published surrogate runs at 200 around t* = 150)."""
    with pytest.raises(ValueError, match="surrogate_t_star"):
        DiffPure(diffusion, t_star=4, steps=2, surrogate_t_star=bad)
    assert DiffPure(diffusion, t_star=4, surrogate_t_star=6).surrogate_stages == ((6, 20),)
    assert DiffPure(diffusion, t_star=4).surrogate_stages == ((4, 20),)
