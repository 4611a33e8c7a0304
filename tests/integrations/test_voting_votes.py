"""VotingPyTorchClassifier votes as often as the defence it wraps publishes (DAC 20, GNS 10,
one prediction otherwise) unless told otherwise."""

import pytest
import torch

from art_ssni import DAC, DefendedClassifier
from art_ssni.defences import DACPyTorch, DiffPurePyTorch, GNSPyTorch, VotingPyTorchClassifier

from tiny import TinyClassifier, half_mask


def _voting(model, defences=(), **kwargs):
    return VotingPyTorchClassifier(
        model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 8, 8), nb_classes=10,
        preprocessing_defences=list(defences), clip_values=(0, 1), device_type="cpu", **kwargs,
    )  # fmt: skip


def test_votes_default_to_the_defences_published_votes(diffusion):
    small = {"device_type": "cpu", "generator": 0}
    dac = DACPyTorch(diffusion, mask=half_mask, t_large=8, t_small=4, stride=2, **small)
    gns = GNSPyTorch(diffusion, stages=((4, 2),), surrogate_stages=((4, 1),), **small)
    diffpure = DiffPurePyTorch(diffusion, t_star=4, steps=2, **small)
    assert _voting(TinyClassifier(), [dac]).votes == 20
    assert _voting(TinyClassifier(), [gns]).votes == 10
    assert _voting(TinyClassifier(), [diffpure]).votes == 1
    assert _voting(TinyClassifier()).votes == 1
    assert _voting(TinyClassifier(), [dac], votes=3).votes == 3
    purifier = DAC(diffusion, mask=half_mask, t_large=8, t_small=4, stride=2, votes=7)
    defended = DefendedClassifier(purifier, TinyClassifier())
    assert defended.votes == 7 and _voting(defended).votes == 7
    with pytest.raises(ValueError, match="votes"):
        _voting(TinyClassifier(), votes=0)
