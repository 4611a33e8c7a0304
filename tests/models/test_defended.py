"""DefendedClassifier (art_ssni.models.defended), what every attack and the runner talk to:
frozen in eval mode, normalising and resizing, reseeding, gradient modes, the levels and EPS
scores of each pass, its description, and the image dtypes it takes or refuses."""

import pytest
import torch

from art_ssni import DiffPure, EPSNorm, SSNISigmoid
from art_ssni.evaluation.attacks import pgd_eot
from art_ssni.models.defended import DefendedClassifier

from tiny import TinyClassifier, defended


def test_defended_classifier_is_frozen_eval_and_on_the_right_device(diffusion):
    model = defended(diffusion)
    model.train()
    assert all(not p.requires_grad for p in model.parameters())
    assert not any(module.training for module in model.children())
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="mean and std"):
        DefendedClassifier(None, TinyClassifier(), mean=[0.5, 0.5, 0.5])


def test_defended_classifier_normalises_and_resizes(diffusion):
    classifier = TinyClassifier()
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    model = DefendedClassifier(None, classifier, mean, std)
    x = torch.rand(2, 3, 8, 8)
    expected = classifier(
        (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    )
    assert torch.allclose(model(x), expected)
    diffusion.image_shape = (3, 16, 16)
    big = DefendedClassifier(
        DiffPure(diffusion, t_star=4, steps=2, generator=0), classifier, purify_size=(16, 16)
    )
    assert big(x).shape == (2, 10)


class RandomLevels:
    """A noise policy whose levels come from the defence's stream, so they differ from pass
    to pass; it keeps every level it hands out."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        levels = torch.randint(0, self.top + 1, (x.shape[0],), generator=generator)
        self.calls.append(levels)
        return levels

    def __repr__(self) -> str:
        return f"RandomLevels({self.top})"


def test_record_levels_returns_the_levels_each_pass_used(diffusion, images):
    policy = RandomLevels(10)
    model = DefendedClassifier(
        DiffPure(diffusion, noise=policy, t_star=10, steps=2), TinyClassifier()
    )
    model.reseed(4)
    plain = [model(images[:4]), model(images[4:])]
    policy.calls.clear()
    model.reseed(4)
    with model.record_levels() as passes:
        recorded = [model(images[:4]), model(images[4:])]
    assert len(passes) == 2 and [p.tolist() for p in passes] == [c.tolist() for c in policy.calls]
    assert [p.shape for p in passes] == [(4,), (2,)] and len(set(torch.cat(passes).tolist())) > 1
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded))  # recording changes nothing
    model(images)
    assert len(passes) == 2  # nothing is recorded outside the block
    with DefendedClassifier(None, TinyClassifier()).record_levels() as none:
        DefendedClassifier(None, TinyClassifier())(images)
    assert none == []


def test_reseed_makes_the_defence_repeat_itself(diffusion, images):
    model = defended(diffusion)
    model.reseed(11)
    first = [model(images), model(images)]
    model.reseed(11)
    second = [model(images), model(images)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])
    model.reseed(12)
    assert not torch.equal(model(images), first[0])
    with pytest.raises(ValueError, match="seed"):
        model.reseed(1.5)
    undefended = DefendedClassifier(None, TinyClassifier())
    undefended.reseed(3)
    assert torch.equal(undefended(images), TinyClassifier()(images))


def test_gradient_mode_restores_the_previous_mode_even_when_the_body_raises(diffusion):
    model = defended(diffusion, gradient="surrogate")
    with model.gradient_mode("bpda"):
        assert model.gradient == "bpda"
    assert model.gradient == "surrogate"
    with pytest.raises(RuntimeError, match="inside"):
        with model.gradient_mode("full"):
            assert model.gradient == "full"
            raise RuntimeError("inside")
    assert model.gradient == "surrogate"
    with pytest.raises(ValueError, match="gradient mode"):
        with model.gradient_mode("exact"):
            pass
    assert model.gradient == "surrogate"
    undefended = DefendedClassifier(None, TinyClassifier())
    with undefended.gradient_mode("bpda"):
        assert undefended.gradient is None


def test_policy_levels_scores_and_description(diffusion, stats, images):
    fixed = defended(diffusion)
    assert repr(fixed.policy) == "FixedNoise(t_star=10)"
    assert fixed.levels(images, 0).tolist() == [10] * 6
    assert fixed.scores(images, 0) is None
    assert fixed.describe() == {
        "method": "DiffPure",
        "classifier": "TinyClassifier",
        "t_star": 10,
        "gradient": "full",
        "sampler": "ddpm",
        "noise": "FixedNoise(t_star=10)",
        "votes": 1,
        "purify_size": None,
    }
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNISigmoid(eps_norm, stats, t_star=10, tau=max(stats.std, 1e-3))
    ssni = DefendedClassifier(
        DiffPure(diffusion, noise=policy, t_star=10, steps=2), TinyClassifier()
    )
    scores = ssni.scores(images, 5)
    assert torch.equal(scores, policy.scores(images, 5)) and scores.shape == (6,)
    assert torch.equal(ssni.levels(images, 5), policy(images, 5))
    assert ssni.describe()["noise"] == repr(policy)
    undefended = DefendedClassifier(None, TinyClassifier())
    assert undefended.policy is None and undefended.levels(images) is None
    assert undefended.scores(images) is None
    assert undefended.describe()["method"] is None and undefended.describe()["t_star"] is None


def test_levels_and_scores_see_the_images_at_the_purification_size(diffusion, stats):
    diffusion.image_shape = (3, 16, 16)
    policy = RandomLevels(4)
    model = DefendedClassifier(
        DiffPure(diffusion, noise=policy, t_star=4, steps=2), TinyClassifier(), purify_size=(16, 16)
    )
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert model.levels(x, 0).shape == (3,)
    assert policy.calls[-1].shape == (3,)
    with model.record_levels() as passes:
        assert model(x).shape == (3, 10)
    assert [p.tolist() for p in passes] == [policy.calls[-1].tolist()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_defended_classifier_and_policy_accept_other_float_dtypes(dtype, diffusion, stats, images):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNISigmoid(eps_norm, stats, 6, 0.0, tau=stats.std)
    purifier = DiffPure(diffusion, t_star=6, steps=2, noise=policy, generator=0)
    model = DefendedClassifier(purifier, TinyClassifier())
    x = images.to(dtype)
    if dtype == torch.float64:  # exact in float32, so the levels are those of float32
        assert torch.equal(policy(x, generator=3), policy(images, generator=3))
    logits = model(x)
    assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    assert xg.grad.dtype == dtype
    undefended = DefendedClassifier(None, TinyClassifier())
    y = torch.zeros(images.shape[0], dtype=torch.long)
    x_adv = pgd_eot(undefended, x, y, eps=0.1, step=0.1, iterations=1, eot=1)
    assert x_adv.dtype == dtype
    limit = 0.1 + (1e-2 if dtype != torch.float64 else 1e-9)
    assert float((x_adv.double() - x.double()).abs().max()) <= limit


def test_float64_gives_the_float32_logits(diffusion, images):
    model = DefendedClassifier(None, TinyClassifier())
    assert torch.allclose(model(images.double()), model(images))


def test_integer_images_are_refused_with_value_error(diffusion):
    model = DefendedClassifier(None, TinyClassifier())
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
