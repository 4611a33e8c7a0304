"""The embedded digits data set (art_ssni.data.digits): shapes and range, seeded disjoint
train and test splits, and an unknown split refused."""

import pytest
import torch

from art_ssni.data import load_digits


def test_load_digits_shapes_and_range() -> None:
    x_tr, y_tr = load_digits("train")
    x_te, y_te = load_digits("test")
    assert x_tr.shape == (1297, 1, 8, 8) and x_te.shape == (500, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_te.dtype == torch.int64
    assert y_tr.shape == (1297,) and y_te.shape == (500,)
    for x in (x_tr, x_te):
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(y_te.tolist()) == set(range(10))


def test_load_digits_split_is_seeded_and_disjoint() -> None:
    x_a, y_a = load_digits("test", seed=0)
    x_b, y_b = load_digits("test", seed=0)
    assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)
    x_c, _ = load_digits("test", seed=1)
    assert not torch.equal(x_a, x_c)
    x_all, _ = load_digits("all")
    x_tr, _ = load_digits("train", seed=0)
    assert len(x_all) == len(x_tr) + len(x_a)
    # Train and test partition the set: every image of 'all' is in exactly one split.
    keys = {tuple(v.tolist()) for v in x_all.flatten(1)}
    assert {tuple(v.tolist()) for v in torch.cat([x_tr, x_a]).flatten(1)} == keys


def test_load_digits_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        load_digits("validation")
