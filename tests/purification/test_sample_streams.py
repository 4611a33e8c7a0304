"""Per-sample random streams (art_ssni._rng): a sample's draws depend on the call seed, its key
and its own earlier draws only, never on the other rows or the batch size."""

import pytest
import torch

from art_ssni._rng import SampleStreams, check_sample_ids, stream_seed, tiled_keys


def test_a_rows_draws_are_its_own_streams_whatever_else_is_drawn():
    streams = SampleStreams(5, torch.tensor([10, 11, 12]))
    first = streams.randn((2, 3), device="cpu")
    only_last = streams.randn((2, 3), device="cpu", rows=torch.tensor([2]))
    alone = SampleStreams(5, torch.tensor([12]))
    torch.testing.assert_close(alone.randn((2, 3), device="cpu")[0], first[2], rtol=0, atol=0)
    torch.testing.assert_close(alone.randn((2, 3), device="cpu"), only_last, rtol=0, atol=0)
    again = SampleStreams(5, torch.tensor([12, 10]))  # order and batch-mates do not matter
    torch.testing.assert_close(again.randn((2, 3), device="cpu"), first[[2, 0]], rtol=0, atol=0)
    uniform = SampleStreams(5, torch.arange(4)).rand((1000,), device="cpu")
    assert float(uniform.min()) >= 0 and float(uniform.max()) < 1
    assert abs(float(uniform.mean()) - 0.5) < 0.02


def test_stream_seeds_mix_call_seed_sample_and_copy():
    assert stream_seed(3, 7, 0) == stream_seed(3, 7)
    seeds = {stream_seed(c, i, k) for c in (0, 1) for i in (0, 1, 2) for k in (0, 1)}
    assert len(seeds) == 12 and all(0 <= s < 2**64 for s in seeds)
    assert stream_seed(-1, -1) == stream_seed(2**64 - 1, 2**64 - 1)  # 64-bit two's complement


def test_a_call_seed_comes_from_the_callers_generator():
    generator = torch.Generator().manual_seed(4)
    first, second = (SampleStreams.for_call(generator, 2) for _ in range(2))
    assert first.call_seed != second.call_seed  # successive calls (EOT draws) differ
    assert SampleStreams.for_call(4, 2).call_seed == first.call_seed  # a seed repeats
    assert SampleStreams.for_call(4, 3, [[9, 0], [9, 1], [2, 0]]).keys.tolist() == [
        [9, 0],
        [9, 1],
        [2, 0],
    ]
    assert SampleStreams.for_call(4, 2).keys.tolist() == [[0, 0], [1, 0]]  # positions


def test_sample_ids_are_checked():
    assert check_sample_ids([3, 1], 2).tolist() == [[3, 0], [1, 0]]
    for ids, batch, message in [
        ([1, 2, 3], 2, "batch of 2"),
        (torch.tensor([0.0, 1.0]), 2, "integer ids"),
        ([5, 5], 2, "repeat a key"),
        ([[5, 1], [5, 1]], 2, "repeat a key"),
        (torch.zeros(2, 3, dtype=torch.long), 2, r"\(B, 2\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_sample_ids(ids, batch)


def test_tiled_keys_follow_a_repeated_batch():
    ids = torch.tensor([7, 9, 4])
    keys = tiled_keys(ids, 2, 5)
    assert keys.tolist() == [[4, 0], [7, 1], [9, 1], [4, 1], [7, 2]]
    whole = tiled_keys(ids, 0, 9)
    assert torch.equal(torch.cat([tiled_keys(ids, 0, 4), tiled_keys(ids, 4, 5)]), whole)
    assert torch.equal(whole[:, 0], ids.repeat(3))
