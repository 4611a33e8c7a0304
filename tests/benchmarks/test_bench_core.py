"""benchmarks/bench_core.py's engine-overhead rows: the replayed calls are exactly the engine's."""

from __future__ import annotations

import pytest
import torch

from tiny import load_benchmark


def test_engine_overhead_replays_the_engines_calls(one_thread) -> None:
    bench_core = load_benchmark("bench_core")
    rows = bench_core.engine_overhead("conv2", batch=2, repeats=1, device=torch.device("cpu"))
    diffpure, ssni, gns = rows["DiffPure"], rows["DiffPure+SSNI-N"], rows["GNS"]
    assert (diffpure["network_calls"], diffpure["network_rows"]) == (100, 200)
    # GNS CIFAR-10 stages 30 x 4, 50 x 2, 125 x 2 with as many steps as the level.
    assert (gns["network_calls"], gns["network_rows"]) == (470, 940)
    # SSNI-N: one EPS call of 2 x 20 rows, then at most 100 steps of at most 2 rows.
    assert 1 <= ssni["network_calls"] <= 101 and 40 <= ssni["network_rows"] <= 240
    for row in rows.values():
        assert row["engine_over_bare"] == pytest.approx(
            row["engine_seconds"] / row["bare_network_seconds"]
        )
        assert row["engine_over_bare"] > 1
