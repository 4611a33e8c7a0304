"""The adaptive attacks (art_ssni.evaluation.adaptive) do what they claim: on scripted,
deterministic defences the selector-constrained attack keeps the EPS norm in the clean band
while the loss still rises, the mask-steering attack moves the perturbation off the attended
region, the spectral attack differentiates through the spectral weights and stays in the
quietest bands, the low-frequency attack stays in the low-pass subspace; and each refuses
a defence that lacks its target."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from art_ssni import (
    DAC,
    AttentionMask,
    DiffPure,
    EPSNorm,
    MANIPure,
    ReferenceStats,
    SpectralNoise,
    SSNILinear,
    SSNISigmoid,
)
from art_ssni.evaluation import pgd_eot
from art_ssni.evaluation.adaptive import (
    dac_mask_pgd,
    low_frequency_pgd,
    quiet_bands,
    reference_band,
    selector_constrained_pgd,
    spectral_pgd,
)
from art_ssni.models.defended import DefendedClassifier
from art_ssni.noise.spectral import radial_bands

from tiny import Probe, TinyClassifier, defended

X = torch.full((2, 1, 4, 4), 0.5) + 0.01 * torch.arange(2.0).view(2, 1, 1, 1)
Y = torch.zeros(2, dtype=torch.long)
LEFT = (..., slice(0, 2))
RIGHT = (..., slice(2, 4))


class Policy:
    """A selector stand-in: the score is 10 x the image mean; clean references 4.5 .. 6.5."""

    stats = ReferenceStats(torch.linspace(4.5, 6.5, 11), "m", "s", 1, (1, 4, 4))

    def scores(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return 10 * x.flatten(1).mean(1)


class ScriptedSelector(nn.Module):
    """Label 0 right; its cross-entropy grows with the mean of the left half only, while the
    selector's score reads the whole image."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = Policy()

    def scores(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return self.policy.scores(x, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[LEFT].flatten(1).mean(1)
        return torch.stack([5 - 20 * left, torch.zeros_like(left)], 1)


ATTACK = {"eps": 0.2, "step": 0.05, "iterations": 8, "eot": 1, "generator": 0}


def test_selector_constrained_keeps_the_norm_in_the_band_while_the_loss_rises():
    model = ScriptedSelector()
    lo, hi = reference_band(model, 0.5)
    assert (lo, hi) == pytest.approx((4.5, 5.5))
    plain = pgd_eot(model, X, Y, **ATTACK)
    constrained = selector_constrained_pgd(model, X, Y, **ATTACK)
    assert bool((model.scores(plain) > hi + 0.2).all())  # plain PGD leaves the band
    score = model.scores(constrained)
    assert bool((score <= hi + 1e-5).all()) and bool((score >= lo).all())
    delta = constrained - X
    # the loss still rose: the left half went up, paid for by the right half going down
    assert bool((delta[LEFT].flatten(1).mean(1) > 0.1).all())
    assert bool((delta[RIGHT].flatten(1).mean(1) < -0.05).all())
    assert float(delta.abs().max()) <= 0.2 + 1e-6
    with pytest.raises(ValueError, match="quantile"):
        selector_constrained_pgd(model, X, Y, quantile=0.0, **ATTACK)
    with pytest.raises(ValueError, match="corrections"):
        selector_constrained_pgd(model, X, Y, corrections=-1, **ATTACK)


@pytest.mark.parametrize("policy", ["ssni-l", "ssni-n"])
def test_selector_constrained_runs_on_both_ssni_policies(diffusion, stats, images, policy):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    noise = (
        SSNILinear(eps_norm, stats, 10)
        if policy == "ssni-l"
        else SSNISigmoid(eps_norm, stats, 10, tau=max(stats.std, 1e-3))
    )
    model = DefendedClassifier(DiffPure(diffusion, noise=noise, t_star=10, steps=2),
                               TinyClassifier())  # fmt: skip
    y = torch.arange(6)
    budget = {"eps": 0.05, "step": 0.01, "iterations": 3, "eot": 1}
    x_adv = selector_constrained_pgd(model, images, y, generator=0, corrections=8, **budget)
    lo, hi = reference_band(model, 0.5)
    with torch.no_grad():
        norms = torch.stack([model.scores(x_adv, s) for s in range(8)]).mean(0)
        clean = torch.stack([model.scores(images, s) for s in range(8)]).mean(0)
    assert float((x_adv - images).abs().max()) <= 0.05 + 1e-6
    # the images above the band at the start are pulled down towards it
    above = clean > hi
    assert bool(above.any()) and bool((norms[above] < clean[above]).all())


class HalfMask:
    """DAC's mask stand-in: the left half is attended (saliency 1), the right half not."""

    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        sal = torch.zeros(x.shape[0], 1, *x.shape[-2:])
        sal[LEFT] = 1.0
        return sal


class ScriptedDAC(nn.Module):
    """Label 0 right; the cross-entropy grows with the mean of the whole image."""

    def __init__(self) -> None:
        super().__init__()
        self.purifier = nn.Module()
        self.purifier.mask = HalfMask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)
        return torch.stack([5 - 20 * m, torch.zeros_like(m)], 1)


def test_dac_mask_moves_the_perturbation_off_the_attended_region():
    model = ScriptedDAC()
    plain = pgd_eot(model, X, Y, **ATTACK) - X
    steered = dac_mask_pgd(model, X, Y, **ATTACK) - X
    assert torch.allclose(plain, torch.full_like(plain, 0.2))  # both halves at +eps
    assert float(steered[RIGHT].min()) == pytest.approx(0.2)
    assert float(steered[LEFT].abs().max()) <= 0.05 + 1e-6  # back and forth around 0
    with pytest.raises(ValueError, match="weight"):
        dac_mask_pgd(model, X, Y, weight=0, **ATTACK)


def test_saliency_is_differentiable_and_matches_finite_differences():
    probe = Probe().double()
    mask = AttentionMask(probe, ("first", "second"))
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    weights = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((mask.saliency(xg) * weights).sum(), xg)
    h = 1e-6
    with torch.no_grad():
        up = (mask.saliency(x + h * direction) * weights).sum()
        down = (mask.saliency(x - h * direction) * weights).sum()
        assert not mask.saliency(x).requires_grad
    assert float((grad * direction).sum()) == pytest.approx(float((up - down) / (2 * h)), rel=1e-5)


def test_mask_steering_lowers_the_saliency_under_the_perturbation_of_a_real_dac(diffusion):
    mask = AttentionMask(Probe(), ("first", "second"), threshold=0.5)
    dac = DAC(diffusion, mask=mask, t_large=10, t_small=5, stride=5, surrogate_stride=5)
    model = DefendedClassifier(dac, TinyClassifier())
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(6)
    budget = {"eps": 0.05, "step": 0.01, "iterations": 6, "eot": 1, "generator": 0}

    def on_attended(x_adv: torch.Tensor) -> float:
        return float((mask.saliency(x_adv) * (x_adv - x).abs()).sum())

    model.reseed(0)
    plain = pgd_eot(model, x, y, **budget)
    model.reseed(0)
    steered = dac_mask_pgd(model, x, y, weight=2.0, **budget)
    assert on_attended(steered) < 0.8 * on_attended(plain)
    with pytest.raises(ValueError, match="DAC with an attention mask"):
        dac_mask_pgd(defended(diffusion), x, y, iterations=1)


def _mani_pure(diffusion, **kwargs) -> DefendedClassifier:
    purifier = MANIPure(diffusion, t_star=10, steps=2, surrogate_steps=1, bands=4, radius=1.0,
                        generator=0, **kwargs)  # fmt: skip
    return DefendedClassifier(purifier, TinyClassifier())


def test_spectral_weights_are_differentiable_only_when_asked():
    spectral = SpectralNoise(bands=3, gamma=1.8)
    x = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    xg = x.clone().requires_grad_(True)
    assert not spectral.weights(xg).requires_grad  # the defence's default: constants
    spectral.differentiable = True
    (grad,) = torch.autograd.grad(spectral.weights(xg).log().sum(), xg)
    h = 1e-6
    with torch.no_grad():
        up = spectral.weights(x + h * direction).log().sum()
        down = spectral.weights(x - h * direction).log().sum()
    assert float((grad * direction).sum()) == pytest.approx(float((up - down) / (2 * h)), rel=1e-5)
    assert float(grad.abs().sum()) > 0


def test_spectral_attack_steps_through_the_weights_in_the_quietest_bands(diffusion, monkeypatch):
    model = _mani_pure(diffusion)
    spectral = model.purifier.spectral
    x = 0.3 + 0.4 * torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(4)
    seen = []
    real = SpectralNoise.weights

    def spy(self, v):
        out = real(self, v)
        seen.append(out.requires_grad)
        return out

    monkeypatch.setattr(SpectralNoise, "weights", spy)
    budget = {"eps": 0.03, "step": 0.01, "iterations": 2, "eot": 1, "generator": 0}
    x_adv = spectral_pgd(model, x, y, keep=2, **budget)
    assert any(seen) and not spectral.differentiable  # tracked during the run, restored after
    chosen = quiet_bands(model, x, 2)
    band = radial_bands(8, 8, 4)
    with torch.no_grad():
        weights = real(spectral, 2 * x - 1).mean(1)
    for i in range(4):
        per_band = torch.stack([weights[i][band == b].mean() for b in range(4)])
        expected = (band[..., None] == per_band.argsort()[:2]).any(-1)
        assert torch.equal(chosen[i, 0].bool(), expected)
    spectrum = torch.fft.fft2((x_adv - x).double()).abs()
    outside = spectrum * (1 - chosen.double())
    assert float(outside.max()) < 1e-6 * float(spectrum.max())
    assert float((x_adv - x).abs().max()) <= 0.03 + 1e-6 and float(spectrum.max()) > 0
    with pytest.raises(ValueError, match="keep must be at most"):
        spectral_pgd(model, x, y, keep=5, **budget)
    with pytest.raises(ValueError, match="MANI-Pure"):
        spectral_pgd(defended(diffusion), x, y, **budget)


def test_low_frequency_perturbation_is_an_upsampled_coarse_one_and_breaks_a_classifier():
    classifier = TinyClassifier()
    x = 0.3 + 0.4 * torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    y = classifier(x).argmax(1)
    undefended = DefendedClassifier(None, classifier)
    budget = {"eps": 0.1, "step": 0.02, "iterations": 10, "eot": 1, "generator": 0}
    x_adv = low_frequency_pgd(undefended, x, y, factor=4, **budget)
    delta = (x_adv - x).double()
    assert float(delta.abs().max()) <= 0.1 + 1e-6
    # the 8x8 perturbation lies in the span of bilinear upsamplings of 2x2 images
    basis = torch.eye(4, dtype=torch.double).view(4, 1, 2, 2)
    up = nn.functional.interpolate(basis, size=(8, 8), mode="bilinear", align_corners=False)
    span = up.view(4, 64).T
    coefficients = torch.linalg.lstsq(span, delta.reshape(-1, 64).T).solution
    residual = span @ coefficients - delta.reshape(-1, 64).T
    assert float(residual.abs().max()) < 1e-6
    with torch.no_grad():
        assert float((classifier(x_adv).argmax(1) == y).float().mean()) < 0.5
    with pytest.raises(ValueError, match="factor"):
        low_frequency_pgd(undefended, x, y, factor=0, **budget)


def test_the_steered_loop_names_a_missing_shape_or_a_correction_off_the_identity():
    from art_ssni.evaluation.adaptive import steered_pgd

    model = ScriptedDAC()
    with pytest.raises(ValueError, match="shape of the variable"):
        steered_pgd(model, X, Y, basis=lambda v: v, **ATTACK)
    with pytest.raises(ValueError, match="identity basis"):
        steered_pgd(model, X, Y, basis=lambda v: v, shape=X.shape,
                    correct=lambda x, d: d, **ATTACK)  # fmt: skip
