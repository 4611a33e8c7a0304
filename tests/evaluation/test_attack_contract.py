"""The contract every registered attack keeps (``art_ssni.evaluation.registry.ATTACKS``).

Each entry is run with the budget keywords its spec says it takes, on a real randomised
defence that offers what it needs (SSNI-N around tiny networks: DiffPure, or DAC for the
mask-steering attack, MANI-Pure for the spectral one) and on a deterministic one.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from art_ssni import DAC, AttentionMask, DiffPure, EPSNorm, MANIPure, SpectralNoise, SSNISigmoid
from art_ssni.config import AttackConfig
from art_ssni.evaluation.registry import ATTACKS
from art_ssni.models.defended import DefendedClassifier
from art_ssni.noise import ReferenceStats

from tiny import Probe, TinyClassifier

BUDGET = AttackConfig(eps=0.03, step=0.01, iterations=3, eot=1, max_rows=64)


def _defended(diffusion, stats, name: str = "pgd-eot") -> DefendedClassifier:
    """SSNI-N around DiffPure, or around the method whose machinery the attack ``name``
    steers (DAC's mask, MANI-Pure's spectral weights)."""
    policy = SSNISigmoid(EPSNorm(diffusion, num_levels=5), stats, 10, tau=max(stats.std, 1e-3))
    needs = ATTACKS[name].needs
    if needs == "saliency":
        mask = AttentionMask(Probe(), ("first", "second"), threshold=0.5)
        purifier = DAC(diffusion, mask=mask, noise=policy, t_large=10, t_small=5, stride=5,
                       surrogate_stride=5)  # fmt: skip
    elif needs == "spectral":
        purifier = MANIPure(diffusion, noise=policy, t_star=10, steps=2, surrogate_steps=1,
                            bands=2, radius=1.0)  # fmt: skip
    else:
        purifier = DiffPure(diffusion, noise=policy, t_star=10, steps=2, surrogate_steps=1)
    return DefendedClassifier(purifier, TinyClassifier())


def _run(name: str, model: nn.Module, x, y, budget: AttackConfig = BUDGET, **extra):
    return ATTACKS[name].run(model, x, y, generator=0, **budget.budget(name), **extra)


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_stays_in_the_ball_and_the_box(name, norm, diffusion, stats, images):
    budget = AttackConfig(norm=norm, eps=0.03 if norm == "Linf" else 0.5, step=0.01,
                          iterations=2, eot=1, max_rows=64)  # fmt: skip
    model = _defended(diffusion, stats, name)
    y = torch.arange(images.shape[0]) % 10
    x_adv = _run(name, model, images, y, budget)
    delta = (x_adv - images).flatten(1)
    size = delta.abs().max(1).values if norm == "Linf" else delta.norm(dim=1)
    assert x_adv.shape == images.shape
    assert bool((size <= budget.eps + 1e-5).all())
    if ATTACKS[name].in_loop:  # AutoAttack returns points it finds misclassified unchanged
        assert float(size.max()) > 0
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_same_seed_same_examples(name, diffusion, stats, images):
    y = torch.arange(images.shape[0]) % 10
    runs = []
    for _ in range(2):
        model = _defended(diffusion, stats, name)
        model.reseed(3)
        runs.append(_run(name, model, images, y))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


class Scores:
    """A differentiable stand-in for SSNI's EPS norm and its reference statistics, for the
    selector-aware and selector-constrained attacks."""

    t_star = 10
    stats = ReferenceStats(torch.linspace(6.0, 10.0, 16), "m", "s", 1, (3, 8, 8))

    def scores(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return x.flatten(1).norm(dim=1)

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return torch.full((x.shape[0],), self.t_star, dtype=torch.long)


class SmoothPurifier(nn.Module):
    """A deterministic, non-linear stand-in for a purifier with a scored policy, an attention
    mask (on its own convolution) and spectral noise weights, so every attack runs on it."""

    def __init__(self) -> None:
        super().__init__()
        self.gradient = "full"
        self.noise = Scores()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.mask = AttentionMask(self, ("conv",))
        self.spectral = SpectralNoise(bands=2)

    def forward(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return torch.sigmoid(self.conv(x) + x)


@pytest.mark.parametrize("name", sorted(n for n, s in ATTACKS.items() if s.in_loop))
def test_in_loop_never_weaker_than_one_shot(name):
    # On a deterministic defence the trajectory does not depend on judging and the one-shot
    # answer is one of the judged iterates, so in-loop judging fools every sample it fools.
    torch.manual_seed(0)
    classifier = TinyClassifier()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    y = classifier(x).argmax(1)
    model = DefendedClassifier(SmoothPurifier(), classifier)
    x_one = _run(name, model, x, y)
    x_loop = _run(name, model, x, y, judge_draws=1, criterion="worst")
    with torch.no_grad():
        fooled_one = model(x_one).argmax(1) != y
        fooled_loop = model(x_loop).argmax(1) != y
    assert bool((fooled_loop | ~fooled_one).all())
    assert 0 < int(fooled_one.sum()) < 16 or int(fooled_loop.sum()) > int(fooled_one.sum())


def test_every_attack_declares_keywords_its_function_takes():
    import inspect

    for name, spec in ATTACKS.items():
        params = inspect.signature(spec.run).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        keywords = {"selector_weight": "weight"}
        for key in spec.takes:
            assert takes_all or keywords.get(key, key) in params, (name, key)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_images_outside_the_unit_box_are_refused_not_projected(name, diffusion, stats, images):
    # a random start used to project 0-255 images into [0, 1] and return them silently
    model = _defended(diffusion, stats, name)
    y = torch.arange(images.shape[0]) % 10
    for bad in (images * 255, images.masked_fill(images > 0.9, float("nan"))):
        with pytest.raises(ValueError, match="values in \\[0, 1\\]|not finite|NaN"):
            ATTACKS[name].run(model, bad, y, generator=0, **BUDGET.budget(name), **_start(name))


def _start(name: str) -> dict:
    return {"random_start": True} if name in ("pgd-eot", "bpda-eot", "selector-aware") else {}
