"""benchmarks/bench_gpu.py: its toy run, its exact row and FLOP counts, its device peaks."""

from __future__ import annotations

import json

import pytest

from art_ssni import DiffusionModel

from tiny import TinyEpsNet, load_benchmark

bench_gpu = load_benchmark("bench_gpu")


def test_toy_run_end_to_end(tmp_path, one_thread) -> None:
    out = tmp_path / "toy.json"
    argv = ["--device", "cpu", "--toy", "--networks", "score_sde", "--dtypes", "bf16"]
    argv += ["--batches", "2", "--grad-steps", "2", "--repeats", "1", "--out", str(out)]
    result = bench_gpu.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    entry = result["networks"]["score_sde"]
    rows = {row["method"]: row for row in entry["throughput"]}
    # Fixed levels: DiffPure min(10, 100); GDMP 2 runs x min(6, 36); GNS 3 + 3 + 4.
    assert rows["DiffPure"]["network_rows_per_image"] == 10
    assert rows["GDMP"]["network_rows_per_image"] == 12
    assert rows["GNS"]["network_rows_per_image"] == 10
    # SSNI-N: the EPS pass's 5 rows plus min(10, t_i) with 0 <= t_i <= 100.
    assert 5 <= rows["DiffPure+SSNI-N"]["network_rows_per_image"] <= 15
    flops = entry["gflop_per_forward"] * 1e9
    peak = entry["matmul_peak_tflops"]["bf16"]
    for row in rows.values():
        rate = row["network_rows_per_image"] * row["batch"] * flops / row["seconds"] / 1e12
        assert row["tflops"] == pytest.approx(rate)
        assert row["fraction_of_matmul_peak"] == pytest.approx(rate / peak)
        assert row["fraction_of_spec_peak"] is None
    precision = entry["precision"]["bf16"]
    assert 0 < precision["eps_relative_error"] < 1e-2
    assert 0 < precision["image_relative_error"] < 2e-3
    (grad,) = entry["gradient"]["bf16"]
    assert grad["steps"] == 2 and grad["gradient_finite"] and grad["graph_MiB"] > 0
    call = entry["network_call"]["bf16"]
    assert call["speedup_channels_last"] == pytest.approx(
        call["contiguous_ms"] / call["channels_last_ms"]
    )
    overhead = entry["ssni_overhead"]["bf16"]
    assert overhead["ssni_over_diffpure_time"] > 0 and overhead["eps_pass_over_diffpure_time"] > 0


def test_flops_per_row_is_the_closed_form() -> None:
    model = DiffusionModel(TinyEpsNet(hidden=8), image_shape=(3, 8, 8))
    conv = 2 * 8 * 8 * 8 * 3 * 9  # 2 * H * W * C_out * C_in * k^2, both convolutions
    assert bench_gpu.flops_per_row(model) == 2 * conv + 2 * 8


def test_spec_peaks_by_device_name() -> None:
    assert bench_gpu.spec_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench_gpu.spec_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench_gpu.spec_peak_tflops("NVIDIA H200") == 989.4
    assert bench_gpu.spec_peak_tflops("x86_64 CPU, 2 cores") is None
    name = bench_gpu.default_out("NVIDIA H100 80GB HBM3", toy=False).name
    assert name == "bench_gpu_nvidia-h100-80gb-hbm3.json"
