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


def _args(bench_core, *extra: str):
    return bench_core.parse_args(
        [
            "--rows",
            "2",
            "--purify-batch",
            "1",
            "--attack-batch",
            "1",
            "--repeats",
            "1",
            "--matmul-size",
            "128",
            *extra,
        ]  # fmt: skip
    )


def test_throughput_counts_the_flops_of_each_measured_call(one_thread) -> None:
    """Forward FLOPs are rows x FLOPs per row; a purification of the cifar10-embedded DiffPure
    is 20 network rows per image; backward to the input at least doubles the forward; every
    rate is its FLOPs over its time and is compared with the matmul peak of its dtype."""
    bench_core = load_benchmark("bench_core")
    result = bench_core.throughput(_args(bench_core))
    per_row = result["gflop_per_row"]
    assert per_row > 0
    for dtype in ("float32", "bfloat16"):
        rows = result[dtype]
        assert rows["forward"]["gflop"] == pytest.approx(2 * per_row)
        assert rows["forward_backward"]["gflop"] >= 2 * rows["forward"]["gflop"]
        assert rows["purification"]["gflop"] == pytest.approx(20 * per_row)
        assert rows["attack_step"]["gflop"] > 2 * rows["purification"]["gflop"]
        assert 0 < sum(rows["forward_time_by_op"].values()) <= 1 + 1e-9
        for name in ("forward", "forward_backward", "purification", "attack_step"):
            row = rows[name]
            assert row["gflop_per_s"] == pytest.approx(row["gflop"] / row["seconds"])
            assert row["fraction_of_matmul_peak"] == pytest.approx(
                row["gflop_per_s"] / rows["matmul_peak_gflop_per_s"]
            )


def test_fixes_are_ratios_of_timings_taken_in_the_same_run(one_thread) -> None:
    bench_core = load_benchmark("bench_core")
    extra = ["--eps-images", "1", "--eot-images", "1", "--eot-draws", "2", "--chunk-images", "2"]
    args = _args(bench_core, *extra, "--chunk", "8")
    args.row_sweep = [1, 2]
    result = bench_core.fixes(args)
    names = ["bfloat16", "eps_levels_batched", "eot_rows_batched"]
    per_dtype = [
        f"{f}_{d}" for f in ("channels_last", "eps_rows_chunked") for d in bench_core.DTYPES
    ]
    for name in [*names, *per_dtype]:
        entry = result[name]
        assert entry["before_over_after"] == pytest.approx(
            entry["before_seconds"] / entry["after_seconds"]
        )
    for dtype in ("float32", "bfloat16"):
        assert sorted(result["gflop_per_s_by_rows_per_call"][dtype]) == ["1", "2"]


def test_weight_copies_are_timed_against_autocasts_casts_in_the_same_run(one_thread) -> None:
    """Each case is a ratio of its two timings, taken alternately in one run, and the weights
    cast once give the very eps of autocast's own casts."""
    bench_core = load_benchmark("bench_core")
    result = bench_core.weight_copies(_args(bench_core))
    assert result.pop("identical_eps") is True
    assert sorted(result) == sorted(
        ["forward_2_rows", "forward_4_rows", "forward_backward_2_rows",
         "purification_1_images", "attack_step_1_images"]
    )  # fmt: skip
    for entry in result.values():
        assert entry["before_over_after"] == pytest.approx(
            entry["before_seconds"] / entry["after_seconds"]
        )
