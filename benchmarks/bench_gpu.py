"""Purification speed at real size against the FLOP floor.

Random weights in the real architectures (score_sde DDPM++ at 32x32, guided-diffusion ADM at
256x256), so nothing is downloaded. For each network and compute dtype it measures:

- images/s of DiffPure (t* = 100, K = 100), DiffPure + SSNI-N (EPS pass over T' = 20 levels
  included), GDMP (4 x 36) and GNS (the paper's stages), DiffPure over a batch sweep;
- the network rows each method sends per image (exact: sum over stages of min(K_s, t_i),
  plus B T' for the EPS pass) times the FLOPs of one forward (counted by
  ``torch.utils.flop_counter`` on our network), divided by the time: the TFLOP/s reached and
  its fraction of the device's peak (the vendor's dense bf16 figure where known, and a
  measured large-matmul rate);
- time and peak memory of one full-gradient PGD step (checkpointed) at K = 20 and K = 100;
- the SSNI overhead: SSNI-N time / DiffPure time, and the EPS pass alone / DiffPure time;
- the relative error of eps and of one purified image against float32.

``--toy`` builds tiny versions of both networks with fewer steps, so the whole run takes
seconds on a CPU:

    python benchmarks/bench_gpu.py --device cpu --toy
    python benchmarks/bench_gpu.py --device cuda --dtypes bf16 --channels-last
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from art_ssni import GDMP, GNS, DiffPure, DiffusionModel, EPSNorm, ReferenceStats, SSNISigmoid
from art_ssni.diffusion import VPSchedule, continuous_time_label
from art_ssni.diffusion.networks import ADMUNet, NCSNpp
from art_ssni.purification.methods import GNS_CIFAR10_STAGES, GNS_IMAGENET_STAGES

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense (no sparsity) tensor-core peak in TFLOP/s for bf16/fp16, from the vendors' data sheets.
SPEC_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
)


@dataclass(frozen=True)
class Setup:
    """One network and the method settings it is benchmarked with."""

    image_size: int
    build: Callable[[], nn.Module]
    schedule: Callable[[], VPSchedule]
    time_label: Callable | None
    gns_stages: tuple[tuple[int, int], ...]
    batches: tuple[int, ...]
    grad_batch: int
    eps_chunk: int
    steps: int = 100
    eps_levels: int = 20
    gdmp: tuple[int, int, int] = (4, 36, 36)
    references: int = 64


def _score_sde(toy: bool) -> Setup:
    config = (
        dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8)
        if toy
        else {}
    )
    return Setup(
        image_size=8 if toy else 32,
        build=lambda: NCSNpp(**config),
        schedule=lambda: VPSchedule(continuous=True),
        time_label=continuous_time_label(1000),
        gns_stages=((30, 3), (50, 3), (125, 4)) if toy else GNS_CIFAR10_STAGES,
        batches=(1, 4, 16) if toy else (16, 64, 256),
        grad_batch=2 if toy else 8,
        eps_chunk=256 if toy else 512,
        steps=10 if toy else 100,
        eps_levels=5 if toy else 20,
        gdmp=(2, 36, 6) if toy else (4, 36, 36),
        references=16 if toy else 64,
    )


def _adm(toy: bool) -> Setup:
    config = (
        dict(
            image_size=8,
            model_channels=32,
            num_res_blocks=1,
            channel_mult=(1, 2),
            attention_resolutions=(4,),
            num_head_channels=16,
        )
        if toy
        else {}
    )
    return Setup(
        image_size=8 if toy else 256,
        build=lambda: ADMUNet(**config),
        schedule=VPSchedule,
        time_label=None,
        gns_stages=((30, 3), (50, 3), (200, 4)) if toy else GNS_IMAGENET_STAGES,
        batches=(1, 4, 16) if toy else (1, 4, 8),
        grad_batch=2 if toy else 1,
        eps_chunk=256 if toy else 16,
        steps=10 if toy else 100,
        eps_levels=5 if toy else 20,
        gdmp=(2, 36, 6) if toy else (4, 36, 36),
        references=16 if toy else 32,
    )


SETUPS = {"score_sde": _score_sde, "adm": _adm}


def randomize_(net: nn.Module, seed: int = 0) -> nn.Module:
    """Gaussian weights scaled by 1/sqrt(fan-in), drawn on the weights' device.

    Replaces the zero-initialised output layers so that eps, and so the precision figures,
    are not degenerate.
    """
    param = next(net.parameters())
    generator = torch.Generator(device=param.device).manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            fan_in = math.prod(p.shape[1:]) if p.dim() > 1 else 10
            p.copy_(torch.randn(p.shape, generator=generator, device=p.device) / math.sqrt(fan_in))
    return net.eval().requires_grad_(False)


def build_model(setup: Setup, device: torch.device, dtype: torch.dtype, options: dict) -> Any:
    with torch.device(device):
        net = randomize_(setup.build())
    channels = 3
    return DiffusionModel(
        net,
        setup.schedule(),
        time_label=setup.time_label,
        image_shape=(channels, setup.image_size, setup.image_size),
        compute_dtype=dtype,
        **options,
    )


def flops_per_row(model: DiffusionModel) -> int:
    """FLOPs of one network forward on one image (matmuls, convolutions, attention)."""
    x = torch.zeros(1, *model.image_shape, device=model.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eps(x, torch.tensor([500], device=model.device))
    return int(counter.get_total_flops())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``repeats`` calls (after one warm-up call unless told otherwise)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def spec_peak_tflops(name: str) -> float | None:
    for key, value in SPEC_PEAK_TFLOPS:
        if key in name:
            return value
    return None


def measured_peak_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """TFLOP/s of an n x n x n matmul in ``dtype`` (the rate dense layers can reach here)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    seconds = timed(lambda: a @ b, device, 5)
    return 2 * n**3 / seconds / 1e12


def peak_memory(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """(fn(), peak MiB allocated during it above what was held before) on CUDA; None elsewhere."""
    if device.type != "cuda":
        return fn(), None
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    synchronize(device)
    return out, (torch.cuda.max_memory_allocated(device) - before) / 2**20


def saved_tensor_mib(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), MiB the autograd graph saves for backward), exact on any device."""
    live: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        live[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(live.values()) / 2**20


def images(batch: int, size: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g).to(device)


def seeded(device: torch.device, seed: int = 0) -> torch.Generator:
    """A fresh generator on the device: the noise is drawn where it is used, and every timed
    call repeats the same draws (so SSNI picks the same levels each time)."""
    return torch.Generator(device=device).manual_seed(seed)


def purifiers(model: DiffusionModel, setup: Setup, device: torch.device) -> dict[str, Any]:
    """The benchmarked methods; SSNI-N's reference statistics use random images."""
    eps_norm = EPSNorm(model, num_levels=setup.eps_levels, batch_size=setup.eps_chunk)
    reference = images(setup.references, setup.image_size, device, seed=2)
    stats = ReferenceStats.from_images(
        eps_norm, reference, batch_size=max(1, setup.eps_chunk // setup.eps_levels), progress=False
    )
    policy = SSNISigmoid(eps_norm, stats, t_star=100, tau=max(stats.std, 1e-6))
    runs, t_star, steps = setup.gdmp
    return {
        "DiffPure": DiffPure(model, t_star=100, steps=setup.steps, generator=0),
        "DiffPure+SSNI-N": DiffPure(
            model, noise=policy, t_star=100, steps=setup.steps, generator=0
        ),
        "GDMP": GDMP(model, t_star=t_star, runs=runs, steps=steps, generator=0),
        "GNS": GNS(model, stages=setup.gns_stages, generator=0),
    }


def throughput_row(
    name: str, purifier: Any, x: torch.Tensor, flops: int, peaks: dict, repeats: int
) -> dict[str, Any]:
    device = x.device
    with torch.no_grad():
        levels = purifier.levels(x, seeded(device))
        rows = purifier.rows(levels)
        if isinstance(purifier.noise, SSNISigmoid):
            rows += x.shape[0] * purifier.noise.eps_norm.num_levels
        call = lambda: purifier(x, seeded(device))  # noqa: E731
        _, memory = peak_memory(device, call)
        seconds = timed(call, device, repeats, warmup=False)
    tflops = rows * flops / seconds / 1e12
    return {
        "method": name,
        "batch": x.shape[0],
        "seconds": seconds,
        "images_per_second": x.shape[0] / seconds,
        "network_rows_per_image": rows / x.shape[0],
        "tflops": tflops,
        "fraction_of_spec_peak": tflops / peaks["spec"] if peaks["spec"] else None,
        "fraction_of_matmul_peak": tflops / peaks["matmul"],
        "peak_memory_MiB": memory,
    }


def gradient_row(model: DiffusionModel, setup: Setup, steps: int, repeats: int) -> dict:
    """One PGD step: loss of a linear classifier on the purified batch, full gradient."""
    device = model.device
    purifier = DiffPure(model, t_star=100, steps=steps, gradient="full", generator=0)
    x = images(setup.grad_batch, setup.image_size, device, seed=3)
    features = 3 * setup.image_size**2
    g = torch.Generator(device=device).manual_seed(4)
    weight = torch.randn(10, features, generator=g, device=device) / math.sqrt(features)
    labels = torch.arange(x.shape[0], device=device) % 10

    def step() -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        logits = purifier(xg, seeded(device)).flatten(1) @ weight.T
        loss = nn.functional.cross_entropy(logits, labels)
        return torch.autograd.grad(loss, xg)[0]

    grad, memory = peak_memory(device, step)
    seconds = timed(step, device, repeats, warmup=False)
    xg = x.clone().requires_grad_(True)
    _, graph = saved_tensor_mib(lambda: purifier(xg, seeded(device)))
    return {
        "steps": steps,
        "batch": x.shape[0],
        "seconds": seconds,
        "peak_memory_MiB": memory,
        "graph_MiB": graph,
        "gradient_finite": bool(torch.isfinite(grad).all()),
    }


def precision_row(model: DiffusionModel, setup: Setup, reference: dict) -> dict:
    """Relative L2 error of eps and of one DiffPure image against the float32 ``reference``."""
    eps, image = _eps_and_image(model, setup)
    return {
        "eps_relative_error": float((eps - reference["eps"]).norm() / reference["eps"].norm()),
        "image_relative_error": float(
            (image - reference["image"]).norm() / reference["image"].norm()
        ),
        "image_max_abs_error": float((image - reference["image"]).abs().max()),
    }


def _eps_and_image(model: DiffusionModel, setup: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    x = images(4, setup.image_size, model.device, seed=5)
    t = torch.tensor([5, 100, 400, 900], device=model.device)
    with torch.no_grad():
        eps = model.eps(2 * x - 1, t).float()
        image = DiffPure(model, t_star=100, steps=setup.steps)(x, seeded(model.device)).float()
    return eps, image


CALL_VARIANTS = {
    "contiguous": {},
    "channels_last": {"channels_last": True},
    "compiled": {"compile": True},
}


def call_variants_row(
    setup: Setup,
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    repeats: int,
    variants: Sequence[str] = ("contiguous", "channels_last"),
) -> dict[str, float]:
    """Milliseconds of one network call per variant (layout, compilation), timed alternately;
    ``speedup_<variant>`` is the contiguous eager time over the variant's."""
    models = {name: build_model(setup, device, dtype, CALL_VARIANTS[name]) for name in variants}
    x = 2 * images(batch, setup.image_size, device, seed=6) - 1
    t = torch.full((batch,), 100, device=device)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model.eps(x, t)
        for _ in range(repeats):
            for name, model in models.items():
                times[name].append(1e3 * timed(lambda m=model: m.eps(x, t), device, 1, False))
    row: dict[str, float] = {"batch": batch}
    row.update({f"{name}_ms": statistics.median(values) for name, values in times.items()})
    for name in variants[1:]:
        row[f"speedup_{name}"] = row["contiguous_ms"] / row[f"{name}_ms"]
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    name = device_name(device)
    options = dict(
        channels_last=args.channels_last,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
    )
    matmul_n = 1024 if device.type == "cpu" else 8192
    result: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benchmarks/bench_gpu.py", *args.argv]),
        "toy": args.toy,
        "torch_threads": torch.get_num_threads(),
        "options": options,
        "spec_peak_tflops_bf16": spec_peak_tflops(name),
        "networks": {},
    }
    for network in args.networks:
        setup = SETUPS[network](args.toy)
        if args.batches:
            setup = replace(setup, batches=tuple(args.batches))
        entry: dict[str, Any] = {"image_size": setup.image_size, "throughput": []}
        base = build_model(setup, device, torch.float32, {})  # eager float32: FLOPs, reference
        entry["parameters"] = sum(p.numel() for p in base.eps_net.parameters())
        flops = flops_per_row(base)
        entry["gflop_per_forward"] = flops / 1e9
        reference = dict(zip(("eps", "image"), _eps_and_image(base, setup)))
        del base
        entry["precision"] = {}
        for label in args.dtypes:
            dtype = DTYPES[label]
            model = build_model(setup, device, dtype, options)
            if dtype != torch.float32:
                entry["precision"][label] = precision_row(model, setup, reference)
            peaks = {
                "spec": spec_peak_tflops(name) if dtype != torch.float32 else None,
                "matmul": measured_peak_tflops(device, dtype, matmul_n),
            }
            entry.setdefault("matmul_peak_tflops", {})[label] = peaks["matmul"]
            variants = ("contiguous", "channels_last") + (
                ("compiled",) if args.compile_check else ()
            )
            entry.setdefault("network_call", {})[label] = call_variants_row(
                setup, device, dtype, max(setup.batches), max(5, args.repeats), variants
            )
            methods = purifiers(model, setup, device)
            for batch in setup.batches:
                x = images(batch, setup.image_size, device, seed=1)
                row = throughput_row("DiffPure", methods["DiffPure"], x, flops, peaks, args.repeats)
                entry["throughput"].append({"dtype": label, **row})
                _print_row(network, label, row)
            x = images(max(setup.batches), setup.image_size, device, seed=1)
            timings = {}
            for method, purifier in methods.items():
                if method == "DiffPure":
                    timings[method] = next(
                        r["seconds"]
                        for r in entry["throughput"]
                        if r["dtype"] == label and r["batch"] == x.shape[0]
                    )
                    continue
                row = throughput_row(method, purifier, x, flops, peaks, args.repeats)
                entry["throughput"].append({"dtype": label, **row})
                timings[method] = row["seconds"]
                _print_row(network, label, row)
            eps_pass = methods["DiffPure+SSNI-N"].noise.eps_norm
            with torch.no_grad():
                eps_seconds = timed(
                    lambda e=eps_pass, x=x: e(x, seeded(device)), device, args.repeats
                )
            entry.setdefault("ssni_overhead", {})[label] = {
                "batch": x.shape[0],
                "ssni_over_diffpure_time": timings["DiffPure+SSNI-N"] / timings["DiffPure"],
                "eps_pass_over_diffpure_time": eps_seconds / timings["DiffPure"],
            }
            entry.setdefault("gradient", {})[label] = [
                gradient_row(model, setup, steps, args.repeats) for steps in args.grad_steps
            ]
            del model, methods
        result["networks"][network] = entry
    return result


def _print_row(network: str, dtype: str, row: dict) -> None:
    spec = row["fraction_of_spec_peak"]
    print(
        f"{network:<10}{dtype:<6}{row['method']:<17}B={row['batch']:<5}"
        f"{row['images_per_second']:>10.2f} img/s {row['tflops']:>10.4g} TFLOP/s "
        f"matmul-peak {100 * row['fraction_of_matmul_peak']:5.1f}%"
        + (f" spec-peak {100 * spec:5.1f}%" if spec else ""),
        flush=True,
    )


def default_out(name: str, toy: bool) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return Path("benchmarks/results") / f"bench_gpu_{slug}{'_toy' if toy else ''}.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--toy", action="store_true", help="tiny networks, fewer steps")
    parser.add_argument("--networks", nargs="+", choices=sorted(SETUPS), default=list(SETUPS))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--batches", nargs="+", type=int, help="DiffPure batch sweep")
    parser.add_argument("--grad-steps", nargs="+", type=int, default=[20, 100])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network call")
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument(
        "--compile-check", action="store_true", help="also time a torch.compile'd network call"
    )
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/bench_gpu_<device>)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for value in [*(args.batches or []), *args.grad_steps, args.repeats]:
        if value < 1:
            parser.error(f"batches, grad steps and repeats must be >= 1, got {value}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out) if args.out else default_out(result["device"], args.toy)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
