"""benchmarks/bench_core.py's engine-overhead rows: the replayed calls are exactly the engine's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_bench_core():
    spec = importlib.util.spec_from_file_location("bench_core", ROOT / "benchmarks/bench_core.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_core"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_engine_overhead_replays_the_engines_calls(one_thread) -> None:
    bench_core = _load_bench_core()
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
