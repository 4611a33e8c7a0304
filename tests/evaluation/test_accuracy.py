"""Accuracy over draws (art_ssni.evaluation.accuracy): single, mean, worst and majority-vote
aggregations, and Wilson confidence intervals."""

import pytest
import torch

from art_ssni.evaluation import aggregate, majority_vote
from art_ssni.evaluation.accuracy import intervals, wilson_interval


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


def test_wilson_interval_known_values():
    z = 1.959963984540054
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(z * z / (10 + z * z))  # closed form at p = 0
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)  # tabulated 95 % interval
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(10 / (10 + z * z))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_intervals_of_predictions():
    predictions = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 0]])
    y = torch.tensor([0, 1, 2, 3])
    found = intervals(predictions, y)
    assert found["single"] == list(wilson_interval(4, 4))
    assert found["worst"] == list(wilson_interval(3, 4))
