"""Time conventions (art_ssni.diffusion.model.time_convention): each pair of trained and queried
convention picks the schedule and the network's time label, and the checkpoint loaders apply
it."""

import pytest
import torch

from art_ssni import DiffusionModel
from art_ssni.diffusion.model import time_convention

from tiny import RowCounter, TinyEpsNet


def test_conventions_pick_schedule_and_label():
    t = torch.tensor([1, 100, 1000])
    cases = {
        ("continuous", "as-trained"): (True, t.float() * 0.999),
        ("continuous", "diffpure-sde"): (True, t.float() * 0.999),
        ("continuous", "lee-kim"): (False, t - 1),
        ("discrete", "as-trained"): (False, t - 1),
        ("discrete", "lee-kim"): (False, t - 1),
        ("discrete", "diffpure-sde"): (True, t.float()),
    }
    for (trained, name), (continuous, label) in cases.items():
        schedule, time_label = time_convention(trained, name)
        assert schedule.continuous is continuous, (trained, name)
        torch.testing.assert_close(time_label(t).float(), label.float())
    with pytest.raises(ValueError, match="convention"):
        time_convention("discrete", "nie")


def test_loaders_apply_the_convention(monkeypatch):
    from art_ssni.diffusion.networks import adm, ncsnpp

    def fake(*args, **kwargs):
        net = RowCounter(TinyEpsNet())
        net.image_size = 8
        return net

    monkeypatch.setattr(ncsnpp, "load_score_sde_checkpoint", fake)
    monkeypatch.setattr(adm, "load_guided_diffusion_checkpoint", fake)
    x, t = torch.zeros(2, 3, 8, 8), torch.tensor([1, 100])
    expected = {
        ("score", "as-trained"): ([0.999, 99.9], True),
        ("score", "lee-kim"): ([0.0, 99.0], False),
        ("adm", "as-trained"): ([0.0, 99.0], False),
        ("adm", "diffpure-sde"): ([1.0, 100.0], True),
    }
    for (kind, name), (labels, continuous) in expected.items():
        load = (
            DiffusionModel.from_score_sde
            if kind == "score"
            else (DiffusionModel.from_guided_diffusion)
        )
        model = load("unused.pth", convention=name)
        model.eps(x, t)
        assert model.eps_net.labels[-1].float().tolist() == pytest.approx(labels)
        assert model.schedule.continuous is continuous
