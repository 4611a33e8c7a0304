"""Which device and compute dtype a run uses, chosen from what the hardware runs natively.

``--dtype auto`` picks bfloat16 where the hardware has native bfloat16 arithmetic (a CPU with
the ``amx_bf16`` or ``avx512_bf16`` flag, a CUDA device that supports bfloat16) and float32
elsewhere. A reduced dtype the device would only emulate (many times slower than float32) is
refused with the reason. :func:`pick_rows` sizes the network calls of passes that batch many
rows (SSNI's EPS levels) to what the device runs fastest.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch

from .validation import check_device

DTYPES = ("auto", "float32", "bfloat16", "float16")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NATIVE_CPU_FLAGS = {"bfloat16": ("amx_bf16", "avx512_bf16"), "float16": ("amx_fp16", "avx512_fp16")}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where the file does not exist)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def pick_device(requested: str) -> str:
    """``"auto"``: cuda where this torch build has a CUDA device, else cpu; any other name is
    checked (a ValueError says why a device is unusable)."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(check_device(requested))


def pick_dtype(
    requested: str, device: str, flags: Collection[str] | None = None
) -> tuple[str, str]:
    """The compute dtype for ``device`` and the reason: ``requested`` itself when the device
    runs it natively, bfloat16-or-float32 for ``"auto"``; a ValueError for an emulated one.
    ``flags`` are the CPU's feature flags (default: read from /proc/cpuinfo)."""
    if requested not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {requested!r}")
    if requested == "float32":
        return "float32", "asked for"
    kind = torch.device(device).type
    if kind == "cuda":
        native = {"bfloat16": torch.cuda.is_bf16_supported(), "float16": True}
        where = f"CUDA device {torch.cuda.get_device_name(torch.device(device))}"
    else:
        flags = cpu_flags() if flags is None else frozenset(flags)
        native = {d: any(f in flags for f in NATIVE_CPU_FLAGS[d]) for d in NATIVE_CPU_FLAGS}
        where = "this CPU"
    if requested == "auto":
        if native["bfloat16"]:
            return "bfloat16", f"{where} runs bfloat16 natively"
        return "float32", f"{where} has no native bfloat16"
    if not native[requested]:
        need = " or ".join(NATIVE_CPU_FLAGS[requested]) if kind == "cpu" else "hardware support"
        raise ValueError(
            f"{where} would emulate {requested} (no {need}), many times slower than float32; "
            "use --dtype float32 or auto"
        )
    return requested, f"{where} runs {requested} natively"


CPU_CALL_PIXELS = 64 * 32 * 32
"""Image pixels one network call takes on a CPU when a pass batches many rows: 64 rows of
32x32, where the shipped CIFAR-10 UNet runs fastest on the dev CPU (8 to 64 rows per call;
256 rows lose 16 to 27 %, benchmarks/README.md, "Throughput against the machine")."""
DEVICE_CALL_ROWS = 1024
"""Rows one network call takes elsewhere (a GPU fills up with large calls)."""


def pick_rows(requested: int | None, device: str, image_size: int) -> int:
    """Most rows one call of the diffusion network takes in a pass that batches many rows:
    ``requested`` when given; on a CPU as many images of ``image_size`` x ``image_size`` as
    make :data:`CPU_CALL_PIXELS` (at least 1), elsewhere :data:`DEVICE_CALL_ROWS`."""
    if requested is not None:
        return requested
    if torch.device(device).type == "cpu":
        return max(1, CPU_CALL_PIXELS // (image_size * image_size))
    return DEVICE_CALL_ROWS
