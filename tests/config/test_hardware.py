"""Device and compute dtype: what ``auto`` picks and which reduced dtypes are refused."""

from __future__ import annotations

import pytest
import torch

from art_ssni.hardware import cpu_flags, pick_device, pick_dtype


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags\t\t: fpu sse2 avx512_bf16 amx_bf16\nbogomips : 1\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx512_bf16", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("flags", "picked"),
    [
        ({"amx_bf16"}, "bfloat16"),
        ({"avx512_bf16"}, "bfloat16"),
        ({"avx2"}, "float32"),
        ((), "float32"),
    ],
)
def test_auto_picks_bfloat16_only_where_the_cpu_runs_it_natively(flags, picked):
    dtype, why = pick_dtype("auto", "cpu", flags)
    assert dtype == picked
    assert ("runs bfloat16 natively" if picked == "bfloat16" else "no native bfloat16") in why


def test_an_emulated_reduced_dtype_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="emulate bfloat16 \\(no amx_bf16 or avx512_bf16\\)"):
        pick_dtype("bfloat16", "cpu", {"avx2"})
    with pytest.raises(ValueError, match="emulate float16"):
        pick_dtype("float16", "cpu", {"amx_bf16"})
    assert pick_dtype("float16", "cpu", {"avx512_fp16"})[0] == "float16"
    assert pick_dtype("bfloat16", "cpu", {"amx_bf16"}) == (
        "bfloat16", "this CPU runs bfloat16 natively",
    )  # fmt: skip
    assert pick_dtype("float32", "cpu", ()) == ("float32", "asked for")
    with pytest.raises(ValueError, match="dtype must be one of"):
        pick_dtype("int8", "cpu", ())


def test_devices():
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="not a device torch knows"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA device"):
            pick_device("cuda")
