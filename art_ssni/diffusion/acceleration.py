"""Faster network calls: reduced precision, torch.compile and CUDA-graph replay.

Only the network body changes; :class:`~art_ssni.diffusion.model.DiffusionModel` casts the
network's output back to the sampler's dtype, so the schedule arithmetic, the sampler state
and the purified images stay float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REDUCED_DTYPES = (torch.bfloat16, torch.float16)

NetworkCall = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` if the network body can run in it, else ValueError naming the choices."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
    return dtype


def autocast(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """torch.autocast to a reduced ``dtype`` (no-op for float32 and float64).

    The weight-cast cache is off: each weight is used once per call, and a cache is not
    allowed while a CUDA graph is captured.
    """
    if dtype not in REDUCED_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype, cache_enabled=False)


def compile_call(fn: NetworkCall, options: bool | dict[str, Any]) -> NetworkCall:
    """``torch.compile(fn, **options)``; ``True`` means torch.compile's defaults."""
    if options is True:
        options = {}
    if not isinstance(options, dict):
        raise ValueError(
            f"compile must be a bool or a dict of torch.compile options, got {options!r}"
        )
    return torch.compile(fn, **options)


class CUDAGraphCalls:
    """Replays one captured CUDA graph per input signature for no-grad calls on CUDA tensors.

    A reverse chain calls the network with the same shapes at every step, so after one
    capture each call is a copy into static inputs, one graph replay and a copy out, with no
    per-kernel launch cost. Calls that need a gradient, calls on other devices and signatures
    beyond ``max_graphs`` (each graph keeps its own memory pool) run ``fn`` directly.
    """

    def __init__(self, fn: NetworkCall, max_graphs: int = 8) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.fn = fn
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda" or torch.is_grad_enabled():
            return self.fn(x, label)
        label = torch.as_tensor(label, device=x.device)
        key = (x.shape, x.dtype, x.device, x.stride(), label.shape, label.dtype)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return self.fn(x, label)
            entry = self.graphs[key] = self._capture(x, label)
        graph, static_x, static_label, static_out = entry
        static_x.copy_(x)
        static_label.copy_(label)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor, label: torch.Tensor) -> tuple:
        static_x, static_label = x.clone(), label.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(static_x, static_label)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_x, static_label)
        return graph, static_x, static_label, static_out
