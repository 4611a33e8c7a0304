"""In-loop judging (art_ssni.evaluation.eot): the iterate each criterion keeps, restarts,
batched EOT, the DLR loss, and APGD-EOT's checkpoints and step schedule
(art_ssni.evaluation.apgd)."""

import pytest
import torch
from torch import nn

from art_ssni import DiffPure
from art_ssni.evaluation import (
    aggregate,
    apgd_eot,
    eot_gradient,
    judge,
    pgd_eot,
    predict_draws,
    selector_aware_pgd,
)
from art_ssni.evaluation import apgd as apgd_module
from art_ssni.evaluation.apgd import checkpoint_fractions, checkpoints
from art_ssni.evaluation.eot import BestIterate, best_of_restarts, dlr_loss, verdict
from art_ssni.models.defended import DefendedClassifier

from tiny import TinyClassifier

STEP = 0.02


class Scripted(nn.Module):
    """Two classes, label 0 right. The CE loss of label 0 grows with the image mean m, so
    Linf PGD walks m up by exactly one step per iteration. Inside a band (lo, hi) the model
    answers 1 with probability p, with logit ``value`` (a small or a large wrong margin)."""

    def __init__(self, bands: list[tuple[float, float, float, float]], seed: int = 0) -> None:
        super().__init__()
        self.bands = bands
        self.generator = torch.Generator().manual_seed(seed)
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)
        z1 = torch.zeros_like(m)
        for lo, hi, p, value in self.bands:
            draw = torch.rand(m.shape, generator=self.generator) < p
            z1 = torch.where((m > lo) & (m < hi) & draw, torch.full_like(m, value), z1)
        return torch.stack([5 - m, z1], 1)


def _band(x0: float, k: int, p: float, value: float) -> tuple[float, float, float, float]:
    centre = x0 + k * STEP
    return (centre - STEP / 4, centre + STEP / 4, p, value)


# Sample A (x0 = 0.2): iterate 2 is wrong in 30 % of draws, with a large margin.
# Sample C (x0 = 0.5): iterate 1 is wrong in 90 % of draws with a small margin (low loss);
# iterate 3 is wrong in 40 % of draws with a large margin (high loss).
BANDS = [_band(0.2, 2, 0.3, 20.0), _band(0.5, 1, 0.9, 4.8), _band(0.5, 3, 0.4, 20.0)]
X0 = torch.tensor([0.2, 0.5]).view(2, 1, 1, 1).expand(2, 1, 4, 4).contiguous()
Y0 = torch.zeros(2, dtype=torch.long)


def _scripted_pgd(**kwargs) -> torch.Tensor:
    model = Scripted(BANDS)
    attack = {"eps": 5 * STEP, "step": STEP, "iterations": 5, "eot": 2, "generator": 0}
    return pgd_eot(model, X0, Y0, **attack, **kwargs)


def _iterate_of(x_adv: torch.Tensor) -> list[int]:
    return [round(v) for v in ((x_adv - X0).flatten(1).mean(1) / STEP).tolist()]


def test_in_loop_judging_returns_the_iterate_that_fools_the_criterion():
    assert _iterate_of(_scripted_pgd()) == [5, 5]  # one-shot: the last iterate
    # worst: any wrong draw fools; A only at iterate 2; C at 1 (90 % of draws wrong) and at
    # 3 (40 %, with the higher loss): the iterate that fools more draws wins
    assert _iterate_of(_scripted_pgd(judge_draws=25, criterion="worst")) == [2, 1]
    # vote: C's iterate 1 is the only majority-wrong one although its loss is lower;
    # A is never majority-wrong, so the iterate wrong in the most draws (2) wins
    assert _iterate_of(_scripted_pgd(judge_draws=25, criterion="vote")) == [2, 1]


def test_worst_judging_prefers_the_iterate_wrong_in_more_draws_over_a_higher_loss():
    # Sample C's iterate 3 is wrong in 40 % of the draws with a large margin (the higher
    # loss), iterate 1 in 90 % with a small one. Ranking fooled iterates by loss alone kept
    # iterate 3, although it survives worst-of-N far more often.
    x1, x3 = (X0[1:] + k * STEP for k in (1, 3))
    found = [verdict(Scripted(BANDS), x, Y0[1:], 200, "worst") for x in (x1, x3)]
    assert found[0].fraction.item() == pytest.approx(0.9, abs=0.06)
    assert found[1].fraction.item() == pytest.approx(0.4, abs=0.08)
    assert bool(found[0].fooled) and bool(found[1].fooled)
    assert found[1].loss.item() > found[0].loss.item()
    best = BestIterate(x3, found[1].fooled, found[1].fraction, found[1].loss)
    best.update(x1, found[0].fooled, found[0].fraction, found[0].loss)
    assert torch.equal(best.x, x1)


def test_judge_criteria_on_a_scripted_model():
    x = X0 + torch.tensor([2.0, 1.0]).view(2, 1, 1, 1) * STEP
    worst, loss = judge(Scripted(BANDS), x, Y0, 25, "worst")
    vote, _ = judge(Scripted(BANDS), x, Y0, 25, "vote")
    assert worst.tolist() == [True, True] and vote.tolist() == [False, True]
    assert loss[0] > 1.0  # about 30 % of draws pay ~15 nats
    with pytest.raises(ValueError, match="criterion"):
        judge(Scripted(BANDS), x, Y0, 2, "mean")
    with pytest.raises(ValueError, match="judge_draws"):
        pgd_eot(Scripted(BANDS), X0, Y0, judge_draws=-1, iterations=1)


def test_best_iterate_prefers_fooling_then_more_wrong_draws_then_higher_loss():
    best = BestIterate(
        torch.zeros(5, 1),
        torch.tensor([False, True, False, True, True]),
        torch.tensor([0.0, 0.5, 0.2, 0.2, 0.5]),
        torch.tensor([1.0, 1.0, 5.0, 9.0, 1.0]),
    )
    best.update(
        torch.ones(5, 1),
        torch.tensor([True, False, False, True, True]),
        torch.tensor([0.1, 0.9, 0.2, 0.6, 0.5]),
        torch.tensor([0.1, 9.0, 6.0, 0.5, 0.5]),
    )
    assert best.x.flatten().tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert best.fooled.tolist() == [True, True, False, True, True]
    assert best.fraction.tolist() == pytest.approx([0.1, 0.5, 0.2, 0.6, 0.5])
    assert best.loss.tolist() == pytest.approx([0.1, 1.0, 6.0, 0.5, 1.0])


def test_restarts_keep_the_best_per_sample():
    verdicts = [
        (torch.tensor([True, False]), torch.tensor([0.5, 0.0]), torch.tensor([1.0, 5.0])),
        (torch.tensor([False, True]), torch.tensor([0.0, 0.5]), torch.tensor([9.0, 0.1])),
        (torch.tensor([False, False]), torch.tensor([0.0, 0.0]), torch.tensor([20.0, 20.0])),
    ]

    def run(r: int):
        x = torch.full((2, 1), float(r))
        return x, BestIterate(x, *verdicts[r])

    out = best_of_restarts(run, 3, nn.Identity(), Y0, "worst")
    assert out.flatten().tolist() == [0.0, 1.0]
    assert best_of_restarts(run, 1, nn.Identity(), Y0, "worst").flatten().tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="restarts"):
        best_of_restarts(run, 0, nn.Identity(), Y0, "worst")


def test_restarts_of_a_one_shot_attack_are_judged_over_one_draw():
    # restart 0 walks from x to mean + 5 steps; restart 1 starts at random and ends lower.
    # Sample A is wrong everywhere below its restart-0 end, so restart 1 wins there;
    # sample C is never wrong, so the higher loss (restart 0, the highest mean) wins.
    model = Scripted([(0.0, 0.2 + 4.75 * STEP, 1.0, 20.0)])
    attack = {"eps": 5 * STEP, "step": STEP, "iterations": 5, "eot": 1, "generator": 0}
    x_adv = pgd_eot(model, X0, Y0, restarts=2, **attack)
    moved = (x_adv - X0).flatten(1).mean(1) / STEP
    assert moved[0] < 4.75 and moved[1] == pytest.approx(5.0)
    assert model(x_adv[:1]).argmax(1).item() == 1


class SmoothPurifier(nn.Module):
    """A deterministic, non-linear stand-in for a purifier (its gradient mode is ignored)."""

    def __init__(self) -> None:
        super().__init__()
        self.gradient = "full"
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x) + x)


def test_batched_eot_equals_the_loop_for_a_deterministic_purifier(images):
    model = DefendedClassifier(SmoothPurifier(), TinyClassifier())
    y = torch.arange(6)
    loop_grads, loop_losses = [], []
    for _ in range(5):
        xg = images.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xg), y, reduction="none")
        loop_grads.append(torch.autograd.grad(loss.sum(), xg)[0])
        loop_losses.append(loss.detach())
    for max_rows in (4, 6, 1000):  # chunks that split a draw, one draw each, all at once
        grad, loss = eot_gradient(model, images, y, 5, max_rows=max_rows)
        assert torch.allclose(grad, torch.stack(loop_grads).mean(0), atol=1e-7)
        assert torch.allclose(loss, torch.stack(loop_losses).mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="max_rows"):
        eot_gradient(model, images, y, 2, max_rows=0)


def test_dlr_loss_by_hand_and_invariances():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    y = torch.tensor([0, 3])
    assert dlr_loss(logits, y).tolist() == pytest.approx([-0.5, 1.5])
    assert dlr_loss(logits * 7 + 2, y).tolist() == pytest.approx([-0.5, 1.5])
    with pytest.raises(ValueError, match="3 classes"):
        dlr_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))


def test_apgd_checkpoints_are_the_published_ones():
    published = [0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99]
    assert checkpoint_fractions() == pytest.approx(published)
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [0, 3, 5, 6, 7, 8, 9, 10]


def _schedule(monkeypatch, losses: list[float], iterations: int = 100) -> list[float]:
    calls = iter(losses)

    def scripted(model, point, y, eot, **kwargs):
        return torch.ones_like(point), torch.full((point.shape[0],), next(calls))

    monkeypatch.setattr(apgd_module, "eot_gradient", scripted)
    history: list[torch.Tensor] = []
    x = torch.full((1, 1, 2, 2), 0.5)
    apgd_eot(nn.Identity(), x, Y0[:1], eps=0.1, iterations=iterations, eot=1, history=history)
    return [h.item() for h in history]


def test_apgd_step_halves_at_checkpoints_when_the_loss_stalls(monkeypatch):
    marks = checkpoints(100)[1:]
    steps = _schedule(monkeypatch, [1.0] * 101)  # never a successful step
    expected = [0.2 * 0.5 ** sum(w < k for w in marks) for k in range(1, 101)]
    assert steps == pytest.approx(expected)
    assert steps[22] == pytest.approx(0.1) and steps[21] == pytest.approx(0.2)


def test_apgd_step_stays_while_the_loss_rises(monkeypatch):
    assert _schedule(monkeypatch, [float(k) for k in range(101)]) == pytest.approx([0.2] * 100)


def test_apgd_step_halves_when_too_few_steps_succeed(monkeypatch):
    # the loss rises on every other step (50 % < rho = 75 %) while the best keeps improving
    losses = [k / 2 if k % 2 == 0 else k / 2 - 1 for k in range(101)]
    steps = _schedule(monkeypatch, losses)
    marks = checkpoints(100)[1:]
    assert steps == pytest.approx([0.2 * 0.5 ** sum(w < k for w in marks) for k in range(1, 101)])


@pytest.mark.parametrize("norm, eps", [("Linf", 8 / 255), ("L2", 0.5)])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_stays_in_the_ball_and_the_box(diffusion, images, norm, eps, loss):
    purifier = DiffPure(diffusion, t_star=10, steps=3, surrogate_steps=1, generator=0)
    model = DefendedClassifier(purifier, TinyClassifier())
    x_adv = apgd_eot(
        model,
        images,
        torch.arange(6),
        norm=norm,
        eps=eps,
        iterations=3,
        eot=2,
        restarts=2,
        loss=loss,
        judge_draws=2,
        generator=0,
    )
    delta = (x_adv - images).flatten(1)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if norm == "Linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert (delta.norm(dim=1) <= eps + 1e-5).all()
    assert delta.abs().max() > 0


def test_apgd_breaks_the_undefended_classifier_and_is_seeded():
    torch.manual_seed(0)
    classifier = TinyClassifier()
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    y = classifier(x).argmax(1)
    undefended = DefendedClassifier(None, classifier)
    for loss in ("ce", "dlr"):
        x_adv = apgd_eot(undefended, x, y, eps=0.1, iterations=10, eot=1, loss=loss, generator=1)
        assert aggregate(predict_draws(undefended, x_adv, 1), y)["single"] <= 0.05
        again = apgd_eot(undefended, x, y, eps=0.1, iterations=10, eot=1, loss=loss, generator=1)
        assert torch.equal(x_adv, again)
    with pytest.raises(ValueError, match="loss"):
        apgd_eot(undefended, x, y, loss="hinge")
    with pytest.raises(ValueError, match="iterations"):
        apgd_eot(undefended, x, y, iterations=0)


def test_selector_aware_attack_takes_in_loop_judging(diffusion, stats, images):
    from art_ssni import EPSNorm, SSNISigmoid

    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNISigmoid(eps_norm, stats, t_star=10, tau=max(stats.std, 1e-3))
    purifier = DiffPure(diffusion, noise=policy, t_star=10, steps=2, surrogate_steps=1)
    model = DefendedClassifier(purifier, TinyClassifier())
    x_adv = selector_aware_pgd(
        model, images, torch.arange(6), eps=0.05, iterations=2, eot=1, judge_draws=2, restarts=2
    )
    assert (x_adv - images).abs().max() <= 0.05 + 1e-6
