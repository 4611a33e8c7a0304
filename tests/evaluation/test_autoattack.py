"""AutoAttack rand (art_ssni.evaluation.autoattack): the reference run, re-judged over draws,
with the random state restored; samples skipped on a stochastic fluke are attacked; eps as
RobustBench writes it."""

import pytest
import torch
from torch import nn

from art_ssni.evaluation import autoattack as aa_module
from art_ssni.evaluation.autoattack import autoattack_rand, format_eps
from art_ssni.models.defended import DefendedClassifier

from tiny import TinyClassifier

EPS = 0.1


def test_autoattack_rand_runs_and_rejudges_over_draws(weak_defence, monkeypatch):
    weak, x, y = weak_defence
    draws_seen = []
    real = aa_module.predict_draws

    def spy(model, inputs, draws, **kwargs):
        draws_seen.append(draws)
        return real(model, inputs, draws, **kwargs)

    monkeypatch.setattr(aa_module, "predict_draws", spy)
    state = torch.random.get_rng_state()
    x_adv, result = autoattack_rand(
        weak, x, y, eps=EPS, eot_iter=2, n_iter=3, judge_draws=3, batch_size=8
    )
    assert torch.equal(torch.random.get_rng_state(), state)  # the reference reseeds; we restore
    assert draws_seen == [3, 3]
    assert set(result) >= {"robust", "clean", "protocol", "gradient", "unattacked"}
    assert set(result["robust"]) == {"single", "vote", "mean", "worst"}
    assert result["clean"]["vote"] == 1.0 and result["robust"]["vote"] <= 0.25
    assert "re-judged over 3 passes" in result["protocol"] and "2 EOT draws" in result["protocol"]
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with pytest.raises(ValueError, match="norm"):
        autoattack_rand(weak, x, y, norm="L1")
    with pytest.raises(ValueError, match="judge_draws"):
        autoattack_rand(weak, x, y, judge_draws=0)


class FlakyAtFirst(nn.Module):
    """A deterministic classifier whose first ``k`` calls answer wrongly (a stochastic fluke)."""

    def __init__(self, classifier, k):
        super().__init__()
        self.classifier = classifier
        self.k = k

    def forward(self, x):
        self.k -= 1
        logits = self.classifier(x)
        return -logits if self.k >= 0 else logits


def test_autoattack_rand_attacks_samples_the_reference_skipped_on_a_fluke(monkeypatch):
    classifier = TinyClassifier()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = classifier(x).argmax(1)
    # pyautoattack makes 3 clean calls (output-range check, dynamic check, accuracy) first.
    model = DefendedClassifier(None, FlakyAtFirst(classifier, k=3))
    x_adv, result = autoattack_rand(
        model, x, y, eps=0.3, eot_iter=1, n_iter=3, judge_draws=2, batch_size=4
    )
    assert model.classifier.k < -5  # it ran again after the flaky calls
    assert result["clean"]["vote"] == 1.0
    assert result["robust"]["vote"] == 0.0 and result["unattacked"] == 0
    assert (x_adv != x).any()


def test_format_eps():
    assert format_eps(8 / 255) == "8/255" and format_eps(4 / 255) == "4/255"
    assert format_eps(0.5, "L2") == "0.5" and format_eps(0.031) == "0.031"
