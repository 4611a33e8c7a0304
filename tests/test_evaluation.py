import pytest
import torch

from art_ssni import DiffPure, EPSNorm, SSNISigmoid
from art_ssni.evaluation import (
    aggregate,
    bpda_eot,
    eot_gradient,
    majority_vote,
    pgd_eot,
    predict_draws,
    selector_aware_pgd,
)
from art_ssni.models.defended import DefendedClassifier

from tiny import TinyClassifier


def _defended(diffusion, **kwargs):
    purifier = DiffPure(diffusion, t_star=10, steps=3, surrogate_steps=1, generator=0, **kwargs)
    return DefendedClassifier(purifier, TinyClassifier())


def test_aggregations_on_hand_made_draws():
    y = torch.tensor([0, 1, 2, 3])
    predictions = torch.tensor(
        [
            [0, 1, 2, 0],  # draw 1: 3 of 4
            [0, 2, 2, 3],  # draw 2: 3 of 4
            [0, 2, 1, 3],  # draw 3: 2 of 4
        ]
    )
    result = aggregate(predictions, y)
    assert result["single"] == pytest.approx(0.75)
    assert result["mean"] == pytest.approx(8 / 12)
    assert result["worst"] == pytest.approx(0.25)  # only sample 0 is right in every draw
    assert majority_vote(predictions).tolist() == [0, 2, 2, 3]
    assert result["vote"] == pytest.approx(0.75)
    assert majority_vote(torch.tensor([[1], [0]])).tolist() == [0]  # tie -> smallest label


def test_defended_classifier_is_frozen_eval_and_on_the_right_device(diffusion):
    model = _defended(diffusion)
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


def test_eot_gradient_is_the_mean_of_single_draw_gradients(diffusion, images):
    model = _defended(diffusion)
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
    model = _defended(diffusion)
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
    model = _defended(diffusion, gradient="full")
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
        selector_aware_pgd(_defended(diffusion), images, y, iterations=1)


def test_attack_argument_errors(diffusion, images):
    model = _defended(diffusion)
    with pytest.raises(ValueError, match="norm"):
        pgd_eot(model, images, torch.arange(6), norm="L1")
    with pytest.raises(ValueError, match="eps"):
        pgd_eot(model, images, torch.arange(6), eps=0)
    with pytest.raises(ValueError, match="label"):
        pgd_eot(model, images, torch.arange(5))
    with pytest.raises(ValueError, match="draws"):
        predict_draws(model, images, 0)


def test_sanity_checks_report_their_numbers_and_verdicts(diffusion):
    from art_ssni.evaluation.sanity import random_perturbation, sanity_checks

    torch.manual_seed(0)
    classifier = TinyClassifier()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    y = classifier(x).argmax(1)
    weak = DefendedClassifier(DiffPure(diffusion, t_star=1, steps=1, generator=0), classifier)
    report = sanity_checks(
        weak,
        DefendedClassifier(None, classifier),
        x,
        y,
        norm="Linf",
        eps=0.1,
        step=0.03,
        iterations=4,
        eot=1,
        draws=2,
        eps_multipliers=(1, 4),
        iteration_multipliers=(1, 2),
        restart_counts=(1, 3),
    )
    assert [r["eps"] for r in report["by_eps"]] == [0.1, 0.4]
    assert [r["iterations"] for r in report["by_iterations"]] == [4, 8]
    assert report["checks"]["accuracy_falls_with_eps"] and report["checks"]["undefended_is_broken"]
    assert report["checks"]["attack_beats_random_noise"]
    assert [r["restarts"] for r in report["by_restarts"]] == [1, 3]
    assert report["in_loop"]["judge_draws"] == 2 and report["in_loop"]["criterion"] == "vote"
    restarts = [r["robust_vote"] for r in report["by_restarts"]]
    assert report["checks"]["more_restarts_never_help"] == (restarts[1] <= restarts[0] + 0.05)
    assert report["checks"]["in_loop_at_most_one_shot"] == (
        report["in_loop"]["robust_vote"] <= report["attack_vote"] + 0.05
    )
    assert report["passed"] == all(report["checks"].values())
    noisy = random_perturbation(x, "Linf", 0.05, torch.Generator().manual_seed(0))
    assert (noisy - x).abs().max() <= 0.05 + 1e-6 and noisy.min() >= 0 and noisy.max() <= 1
    l2 = random_perturbation(x, "L2", 0.5, torch.Generator().manual_seed(0))
    assert ((l2 - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()


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
    model = _defended(diffusion)
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
    model = _defended(diffusion, gradient="surrogate")
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
    fixed = _defended(diffusion)
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
