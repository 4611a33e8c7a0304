"""Inputs that used to give silently wrong results: refused with their names."""

import os

import pytest
import torch

from art_ssni import ReferenceStats
from art_ssni.cli import check_out_dir
from art_ssni.evaluation.accuracy import predict_draws


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_predict_draws_refuses_a_batch_size_that_is_not_a_positive_integer(batch_size) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="batch_size"):
        predict_draws(model, torch.rand(2, 1, 2, 2), 2, batch_size=batch_size)


def test_reference_statistics_refuse_negative_norms() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        ReferenceStats(norms=torch.tensor([-1.0, 2.0]), model="m", schedule="s",
                       num_levels=4, image_shape=(1, 8, 8))  # fmt: skip


def test_the_write_probe_never_follows_a_planted_link(tmp_path) -> None:
    victim = tmp_path / "thesis.tex"
    victim.write_text("years of work")
    out = tmp_path / "out"
    out.mkdir()
    (out / f".art-ssni-write-test-{os.getpid()}").symlink_to(victim)
    with pytest.raises(ValueError, match="cannot write to --out"):
        check_out_dir(out)
    assert victim.read_text() == "years of work"
