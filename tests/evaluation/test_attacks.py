"""The attacks (art_ssni.evaluation.attacks and eot): EOT gradients are the mean of single
draws, PGD-EOT and BPDA-EOT stay in the ball and the box and break weak defences, BPDA restores
the gradient mode, the selector-aware attack lowers the EPS norm, and bad arguments are named."""

import pytest
import torch

from art_ssni import DiffPure, EPSNorm, SSNISigmoid
from art_ssni.evaluation import (
    aggregate,
    bpda_eot,
    eot_gradient,
    pgd_eot,
    predict_draws,
    selector_aware_pgd,
)
from art_ssni.models.defended import DefendedClassifier

from tiny import TinyClassifier, defended


def test_eot_gradient_is_the_mean_of_single_draw_gradients(diffusion, images):
    model = defended(diffusion)
    y = torch.arange(6)
    model.reseed(3)
    grad, _ = eot_gradient(model, images, y, draws=4, max_rows=6)  # one draw per chunk
    model.reseed(3)
    singles = [eot_gradient(model, images, y, draws=1)[0] for _ in range(4)]
    assert torch.allclose(grad, torch.stack(singles).mean(0), atol=1e-7)
    assert not torch.allclose(singles[0], singles[1])


@pytest.mark.parametrize("norm, eps", [("Linf", 8 / 255), ("L2", 0.5)])
@pytest.mark.parametrize("random_start", [False, True])
def test_iterates_stay_in_the_ball_and_the_box(diffusion, images, norm, eps, random_start):
    model = defended(diffusion)
    x_adv = pgd_eot(
        model,
        images,
        torch.arange(6),
        norm=norm,
        eps=eps,
        step=0.1,
        iterations=3,
        eot=2,
        random_start=random_start,
        generator=0,
    )
    delta = (x_adv - images).flatten(1)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if norm == "Linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert (delta.norm(dim=1) <= eps + 1e-5).all()
        assert delta.norm(dim=1).max() > eps * 0.5
    assert delta.abs().max() > 0


def test_pgd_lowers_accuracy_of_the_undefended_and_a_weak_defence(diffusion):
    torch.manual_seed(0)
    classifier = TinyClassifier()
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    y = classifier(x).argmax(1)  # labels the classifier gets right by construction
    undefended = DefendedClassifier(None, classifier)
    x_adv = pgd_eot(undefended, x, y, eps=0.1, step=0.01, iterations=20, eot=1)
    assert aggregate(predict_draws(undefended, x, 1), y)["single"] == 1.0
    assert aggregate(predict_draws(undefended, x_adv, 1), y)["single"] <= 0.05
    weak = DefendedClassifier(DiffPure(diffusion, t_star=1, steps=1, generator=0), classifier)
    for attack in (pgd_eot, bpda_eot):
        x_adv = attack(weak, x, y, eps=0.1, step=0.01, iterations=20, eot=2)
        assert aggregate(predict_draws(weak, x_adv, 3), y)["worst"] <= 0.1


def test_bpda_restores_the_gradient_mode(diffusion, images):
    model = defended(diffusion, gradient="full")
    bpda_eot(model, images, torch.arange(6), iterations=1, eot=1)
    assert model.gradient == "full"


def test_selector_aware_attack_lowers_the_eps_norm(diffusion, stats, images):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNISigmoid(eps_norm, stats, t_star=10, tau=max(stats.std, 1e-3))
    purifier = DiffPure(diffusion, noise=policy, t_star=10, steps=2, surrogate_steps=1)
    model = DefendedClassifier(purifier, TinyClassifier())
    y = torch.arange(6)
    kwargs = {"eps": 16 / 255, "step": 2 / 255, "iterations": 8, "eot": 1, "generator": 0}
    plain = pgd_eot(model, images, y, **kwargs)
    aware = selector_aware_pgd(model, images, y, weight=50.0, **kwargs)
    with torch.no_grad():

        def norm_of(v):
            return torch.stack([eps_norm(v, generator=s) for s in range(4)]).mean(0)

        assert norm_of(aware).mean() < norm_of(images).mean()
        assert norm_of(aware).mean() < norm_of(plain).mean()
    with pytest.raises(ValueError, match="SSNI"):
        selector_aware_pgd(defended(diffusion), images, y, iterations=1)


def test_attack_argument_errors(diffusion, images):
    model = defended(diffusion)
    with pytest.raises(ValueError, match="norm"):
        pgd_eot(model, images, torch.arange(6), norm="L1")
    with pytest.raises(ValueError, match="eps"):
        pgd_eot(model, images, torch.arange(6), eps=0)
    with pytest.raises(ValueError, match="label"):
        pgd_eot(model, images, torch.arange(5))
    with pytest.raises(ValueError, match="draws"):
        predict_draws(model, images, 0)
