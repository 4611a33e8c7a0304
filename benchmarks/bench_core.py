"""Core purification benchmark: throughput, SSNI overhead, network rows, gradient memory,
engine overhead over the bare network.

Network rows per image are the purification's (``Purifier.rows`` of the levels each timed
pass picked); the noise policy's own scoring rows (SSNI's EPS norm) are the rest of the rows
the counting network saw.

Runs on CPU (or GPU with --device cuda) on a small diffusers UNet at 32x32 with random
weights; prints a table and writes JSON. Memory of a gradient is measured as the bytes the
autograd graph keeps for the backward pass (saved-tensor hooks, exact and device-independent);
with checkpointing the backward also holds one recomputed network call's activations at a
time, so the peak is estimated as graph + one call (measured the same way).

The engine overhead replays the exact network calls a purification made
(same inputs, same labels, same row counts) on the bare network and reports engine time / bare
time for DiffPure, DiffPure + SSNI-N and GNS at ``--overhead-batch`` on small 8x8 networks;
the remainder above 1 is the sampler's and engine's own work (noise draws, schedule lookups,
the update arithmetic, Python).

The throughput against the machine (``--only throughput``) measures, in float32 and bfloat16
on the shipped CIFAR-10 UNet (the network ``art-ssni evaluate`` runs by default), the FLOPs
counted by ``torch.utils.flop_counter.FlopCounterMode`` per second against the rate of a
1024^3 matmul in the same dtype: the network's forward, its forward and backward (gradient
to the input, weights frozen, as in an attack), one whole purification (DiffPure t* = 100 in
20 steps, the preset's) and one attack step (the EOT gradient through that purification and
the classifier, exact gradient): engine and classifier included; and where a forward's time
goes, operator by operator. ``--only fixes`` measures the cheap fixes against their
baseline in the same run, as time ratios (before / after): bfloat16, channels-last (in both
dtypes), batching the EPS levels (all levels of all images in one call against one call of
the images per level), batching the EOT rows (``max_rows``: all draws in one pass against
one pass per draw), the rate against the rows per call in both dtypes and the EPS norm in
chunks of ``--chunk`` rows against one call of all rows; ``--only compile`` times
``torch.compile`` of the network call (its compile time, then eager / compiled);
``--only weights`` times bfloat16 calls with the convolution and linear weights cast once
against autocast casting them at every call. Each adds its section to ``core.json`` (the
other sections are kept).

    python benchmarks/bench_core.py [--device cpu] [--batch 4] [--out benchmarks/results/core.json]
    python benchmarks/bench_core.py --only overhead   # writes benchmarks/results/core_overhead.json
    OMP_NUM_THREADS=1 python benchmarks/bench_core.py --only throughput
    OMP_NUM_THREADS=1 python benchmarks/bench_core.py --only fixes
    OMP_NUM_THREADS=1 python benchmarks/bench_core.py --only compile
    OMP_NUM_THREADS=1 python benchmarks/bench_core.py --only weights
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from art_ssni import GNS, DiffPure, DiffusionModel, EPSNorm, ReferenceStats, SSNISigmoid
from art_ssni._compat import import_torchvision
from art_ssni.io import atomic_write_text
from art_ssni.models.zoo import load_embedded_eps_net

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class RowCounter(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.rows = 0

    def forward(self, x, t):
        self.rows += x.shape[0]
        return self.net(x, t)


def small_unet() -> nn.Module:
    import_torchvision()
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


def timed(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def saved_bytes(fn) -> int:
    """Bytes the autograd graph keeps for backward while ``fn`` builds it (peak, deduplicated)."""
    live: dict[int, int] = {}

    def pack(t: torch.Tensor):
        live[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    total = sum(live.values())
    del out
    return total


class CallRecorder(nn.Module):
    """Passes calls through to ``net``; while ``recording``, keeps each call's inputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.recording = False
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t):
        if self.recording:
            self.calls.append((x.detach().clone(), t.detach().clone()))
        return self.net(x, t)


class ConvEpsNet(nn.Module):
    """Two 3x3 convolutions with a time input (the test suite's tiny network)."""

    def __init__(self, channels: int = 1, hidden: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.time = nn.Linear(1, hidden)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x, t):
        h = self.inp(x) + self.time(t.float()[:, None] / 1000)[:, :, None, None]
        return self.out(torch.tanh(h))


OVERHEAD_NETWORKS = {
    "embedded": ("the shipped digits SmallUNet (1x8x8, 164k parameters)", load_embedded_eps_net),
    "conv2": ("two 3x3 convolutions, 8 channels (1x8x8, the tests' tiny network)", ConvEpsNet),
}


def engine_overhead(
    network: str, batch: int, repeats: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Engine time / bare network time over the same calls, per method (median of repeats).

    A seeded purification makes the same calls every time; they are recorded once, then each
    repeat times the whole purification and right after it the replay of those calls (same
    tensors) on the bare network, and takes the ratio within the repeat, so both sides see
    the same machine load.
    """
    recorder = CallRecorder(OVERHEAD_NETWORKS[network][1]().to(device).eval())
    recorder.requires_grad_(False)
    diffusion = DiffusionModel(recorder, image_shape=(1, 8, 8))
    x = torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(device)
    eps_norm = EPSNorm(diffusion, num_levels=20)
    reference = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(2)).to(device)
    stats = ReferenceStats.from_images(eps_norm, reference, batch_size=64, progress=False)
    policy = SSNISigmoid(eps_norm, stats, t_star=100, tau=max(stats.std, 1e-6))
    methods = {
        "DiffPure": DiffPure(diffusion, t_star=100, steps=100),
        "DiffPure+SSNI-N": DiffPure(diffusion, noise=policy, t_star=100, steps=100),
        "GNS": GNS(diffusion),
    }
    out = {}
    for name, purifier in methods.items():
        ratios, engine_times, bare_times = [], [], []
        with torch.no_grad():
            recorder.calls.clear()
            recorder.recording = True
            purifier(x, 0)
            recorder.recording = False
            calls = list(recorder.calls)
            recorder.calls.clear()
            for _ in range(repeats):
                engine = timed(lambda p=purifier: p(x, 0), 1, device)
                bare = timed(lambda c=calls: [recorder.net(xi, ti) for xi, ti in c], 1, device)
                ratios.append(engine / bare)
                engine_times.append(engine)
                bare_times.append(bare)
        rows = sum(xi.shape[0] for xi, _ in calls)
        out[name] = {
            "engine_over_bare": statistics.median(ratios),
            "engine_seconds": statistics.median(engine_times),
            "bare_network_seconds": statistics.median(bare_times),
            "network_calls": len(calls),
            "network_rows": rows,
            "overhead_us_per_call": 1e6
            * statistics.median(e - b for e, b in zip(engine_times, bare_times))
            / len(calls),
        }
    return out


def matmul_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n matmul in ``dtype``: the rate dense layers can reach here."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    a @ b
    return 2 * n**3 / timed(lambda: a @ b, repeats, torch.device("cpu")) / 1e9


class _NoModuleTracking:
    """Stands in for FlopCounterMode's per-module tracker: its backward hooks make
    ``torch.autograd.grad`` on an input leaf fail (torch 2.13), and only the total is used."""

    parents = ("Global",)

    def __enter__(self) -> _NoModuleTracking:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def counted_flops(fn) -> int:
    """The FLOPs ``fn`` executes (matmuls, convolutions, attention; forward and backward)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    with counter:
        fn()
    return int(counter.get_total_flops())


def rate(fn, repeats: int, peak: float) -> dict[str, float]:
    """FLOPs of one call of ``fn`` (counted once, which also warms it up), its median time
    over ``repeats`` and the rate reached, also as a fraction of the matmul ``peak``."""
    flops = counted_flops(fn)
    seconds = timed(fn, repeats, torch.device("cpu"))
    return {
        "gflop": flops / 1e9,
        "seconds": seconds,
        "gflop_per_s": flops / seconds / 1e9,
        "fraction_of_matmul_peak": flops / seconds / 1e9 / peak,
    }


def time_by_op(fn, top: int = 6) -> dict[str, float]:
    """The share of ``fn``'s CPU time in each operator (its own time, profiler), the ``top``
    largest: where the time that FLOPs do not count goes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        fn()
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    largest = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return {e.key: e.self_cpu_time_total / total for e in largest}


def cifar10_defence():
    """The cifar10-embedded preset's shipped models and images and its DiffPure (t* = 100 in
    20 steps, exact gradient) with the fixed level: what ``art-ssni evaluate`` runs."""
    from art_ssni.config import Overrides, resolve
    from art_ssni.pipeline import build_defence
    from art_ssni.sources import load_setup

    setup = load_setup("cifar10-embedded")
    config = resolve("cifar10-embedded", Overrides(dtype="float32", noises=("fixed",)))
    return setup, build_defence(config, setup, "fixed")


def timed_calls(args: argparse.Namespace) -> tuple:
    """The cifar10-embedded setup and defence, the network inputs (``args.rows`` noisy images
    at t = 100), the images a purification and an attack step take, and a forward + backward
    of the network to its input (weights frozen, as in an attack)."""
    setup, defended = cifar10_defence()
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(args.rows, 3, 32, 32, generator=g)
    t = torch.full((args.rows,), 100)
    x = setup.x[: args.purify_batch]
    xa, ya = setup.x[: args.attack_batch], setup.y[: args.attack_batch]

    def forward_backward():
        xg = x_t.clone().requires_grad_(True)
        torch.autograd.grad(setup.diffusion.eps(xg, t).sum(), xg)

    return setup, defended, x_t, t, x, xa, ya, forward_backward


def throughput(args: argparse.Namespace) -> dict:
    """Per dtype: forward, forward + backward, one purification and one attack step of the
    cifar10-embedded DiffPure, each as GFLOP/s against the matmul peak of that dtype."""
    from art_ssni.evaluation.eot import eot_gradient

    setup, defended, x_t, t, x, xa, ya, forward_backward = timed_calls(args)
    diffusion = setup.diffusion
    out = {
        "network": "the shipped CIFAR-10 SmallUNet (267,891 parameters), 3x32x32",
        "rows": args.rows,
        "purify_batch": args.purify_batch,
        "attack_batch": args.attack_batch,
        "gflop_per_row": counted_flops(lambda: diffusion.eps(x_t[:1], t[:1])) / 1e9,
    }
    for name, dtype in DTYPES.items():
        diffusion.set_speed_options(compute_dtype=dtype)
        peak = matmul_peak(dtype, args.matmul_size)
        with torch.no_grad():
            forward = rate(lambda: diffusion.eps(x_t, t), args.repeats, peak)
            purification = rate(lambda: defended.purifier(x, 0), args.repeats, peak)
        rows = {
            "forward": forward,
            "forward_backward": rate(forward_backward, args.repeats, peak),
            "purification": purification,
            "attack_step": rate(lambda: eot_gradient(defended, xa, ya, 1), args.repeats, peak),
        }
        network_seconds = purification["gflop"] / forward["gflop_per_s"]
        with torch.no_grad():
            by_op = time_by_op(lambda: diffusion.eps(x_t, t))
        out[name] = {
            "matmul_peak_gflop_per_s": peak,
            **rows,
            "purification_over_its_network_calls": purification["seconds"] / network_seconds,
            "forward_time_by_op": by_op,
        }
    diffusion.set_speed_options()
    return out


def ratio(before, after, repeats: int) -> dict[str, float]:
    """Median seconds of ``before`` and ``after``, timed alternately, and before / after."""
    before(), after()
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(repeats):
        for key, fn in (("before", before), ("after", after)):
            times[key].append(timed(fn, 1, torch.device("cpu")))
    b, a = statistics.median(times["before"]), statistics.median(times["after"])
    return {"before_seconds": b, "after_seconds": a, "before_over_after": b / a}


def fixes(args: argparse.Namespace) -> dict:
    """The cheap fixes, each timed against its baseline in the same run (ratios)."""
    from art_ssni.evaluation.eot import eot_gradient

    setup, defended = cifar10_defence()
    diffusion = setup.diffusion
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(args.rows, 3, 32, 32, generator=g)
    t = torch.full((args.rows,), 100)
    out: dict = {"rows": args.rows, "repeats": args.repeats}

    def call():
        with torch.no_grad():
            diffusion.eps(x_t, t)

    out["bfloat16"] = ratio(call, lambda: _with(diffusion, call, torch.bfloat16), args.repeats)
    net = copy.deepcopy(diffusion.eps_net)
    for name, dtype in DTYPES.items():
        diffusion.set_speed_options(compute_dtype=dtype)
        nhwc = DiffusionModel(net, diffusion.schedule, compute_dtype=dtype, channels_last=True)
        with torch.no_grad():
            out[f"channels_last_{name}"] = ratio(call, lambda m=nhwc: m.eps(x_t, t), args.repeats)
    diffusion.set_speed_options()
    out["gflop_per_s_by_rows_per_call"] = by_rows = {}
    for name, dtype in DTYPES.items():
        diffusion.set_speed_options(compute_dtype=dtype)
        by_rows[name] = {}
        for rows in args.row_sweep:
            xs, ts = torch.randn(rows, 3, 32, 32, generator=g), torch.full((rows,), 100)
            with torch.no_grad():
                speed = rate(lambda xs=xs, ts=ts: diffusion.eps(xs, ts), args.repeats, 1.0)
            by_rows[name][str(rows)] = speed["gflop_per_s"]
        chunks = eps_chunks(diffusion, setup.x[: args.chunk_images], args.chunk, args.repeats)
        out[f"eps_rows_chunked_{name}"] = chunks
    diffusion.set_speed_options()
    images = setup.x[: args.eps_images]
    levels = 20
    per_level = EPSNorm(diffusion, levels, batch_size=args.eps_images)
    all_rows = EPSNorm(diffusion, levels, batch_size=1024)
    with torch.no_grad():
        out["eps_levels_batched"] = {
            "images": args.eps_images,
            "levels": levels,
            **ratio(lambda: per_level(images, 0), lambda: all_rows(images, 0), args.repeats),
        }
    n, draws = args.eot_images, args.eot_draws
    xe, ye = setup.x[:n], setup.y[:n]
    out["eot_rows_batched"] = {
        "images": n,
        "draws": draws,
        **ratio(
            lambda: eot_gradient(defended, xe, ye, draws, max_rows=n),
            lambda: eot_gradient(defended, xe, ye, draws, max_rows=n * draws),
            args.repeats,
        ),
    }
    return out


def eps_chunks(diffusion: DiffusionModel, images, chunk: int, repeats: int) -> dict:
    """The EPS norm (T' = 20) of ``images`` with every row in one call (before) against
    calls of ``chunk`` rows (after)."""
    whole, chunked = (EPSNorm(diffusion, 20, batch_size=b) for b in (1024, chunk))
    with torch.no_grad():
        measured = ratio(lambda: whole(images, 0), lambda: chunked(images, 0), repeats)
    return {"images": len(images), "levels": 20, "chunk": chunk, **measured}


def compiled(args: argparse.Namespace) -> dict:
    """torch.compile of the network call: the compile time with an empty compile cache (a
    fresh ``TORCHINDUCTOR_CACHE_DIR``), then eager / compiled time of a call of ``args.rows``
    rows, float32."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-core-inductor-")
    setup, _ = cifar10_defence()
    diffusion = setup.diffusion
    x_t = torch.randn(args.rows, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.full((args.rows,), 100)
    repeats = args.repeats
    compiled = DiffusionModel(diffusion.eps_net, diffusion.schedule, compile=True)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            compiled.eps(x_t, t)
    except Exception as err:  # an inductor without a working compiler: record why
        return {"error": f"{type(err).__name__}: {err}"[:500]}
    seconds = time.perf_counter() - start
    with torch.no_grad():
        measured = ratio(lambda: diffusion.eps(x_t, t), lambda: compiled.eps(x_t, t), repeats)
    return {"compile_seconds": seconds, **measured}


class ReducedWeightNet(nn.Module):
    """``net(x, t)`` with its convolution and linear weights cast to ``dtype`` once and passed
    through :func:`torch.func.functional_call`: under autocast the same numbers as autocast
    casting them at every call (its cast is the same ``.to(dtype)`` and skips a tensor that
    has the type already)."""

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net = net
        self.copies = {
            f"{prefix}.{name}": param.detach().to(dtype)
            for prefix, module in net.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))
            for name, param in module.named_parameters(recurse=False)
        }

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.net, self.copies, (x, t))


def weight_copies(args: argparse.Namespace) -> dict:
    """bfloat16 network calls with the convolution and linear weights cast once (after)
    against autocast casting them at every call (before), in the same run: a forward of
    ``args.rows`` and of 4 rows, a forward + backward, one purification and one attack step.
    Dropped from the library: no case gained (benchmarks/README.md)."""
    from art_ssni.evaluation.eot import eot_gradient

    setup, defended, x_t, t, x, xa, ya, forward_backward = timed_calls(args)
    diffusion = setup.diffusion
    diffusion.set_speed_options(compute_dtype=torch.bfloat16)
    net = diffusion.eps_net
    reduced = ReducedWeightNet(net, torch.bfloat16)

    @torch.no_grad()
    def forward(rows: int) -> None:
        diffusion.eps(x_t[:rows], t[:rows])

    cases = {
        f"forward_{args.rows}_rows": lambda: forward(args.rows),
        "forward_4_rows": lambda: forward(4),
        f"forward_backward_{args.rows}_rows": forward_backward,
        f"purification_{args.purify_batch}_images": lambda: defended.purifier(x, 0),
        f"attack_step_{args.attack_batch}_images": lambda: eot_gradient(defended, xa, ya, 1),
    }

    def variant(fn, network: nn.Module):
        def run():
            diffusion.eps_net = network
            try:
                return fn()
            finally:
                diffusion.eps_net = net

        return run

    with torch.no_grad():
        eps = [variant(lambda: diffusion.eps(x_t, t), m)() for m in (net, reduced)]
    out = {name: ratio(variant(fn, net), variant(fn, reduced), args.repeats)
           for name, fn in cases.items()}  # fmt: skip
    out["identical_eps"] = torch.equal(*eps)
    diffusion.set_speed_options()
    return out


def _with(diffusion: DiffusionModel, fn, dtype: torch.dtype):
    diffusion.set_speed_options(compute_dtype=dtype)
    try:
        return fn()
    finally:
        diffusion.set_speed_options()


def cpu() -> torch.device:
    return torch.device("cpu")


SECTIONS = {
    "throughput": throughput,
    "fixes": fixes,
    "compile": compiled,
    "weights": weight_copies,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--t-star", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=("all", "overhead", *SECTIONS), default="all")
    parser.add_argument("--rows", type=int, default=64, help="rows per network call")
    parser.add_argument("--matmul-size", type=int, default=1024, help="n of the peak's matmul")
    parser.add_argument("--purify-batch", type=int, default=8)
    parser.add_argument("--attack-batch", type=int, default=4)
    parser.add_argument("--row-sweep", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--eps-images", type=int, default=4)
    parser.add_argument("--eot-images", type=int, default=2)
    parser.add_argument("--eot-draws", type=int, default=4)
    parser.add_argument("--chunk-images", type=int, default=32, help="EPS norms chunked")
    parser.add_argument("--chunk", type=int, default=64, help="rows per call when chunked")
    parser.add_argument("--overhead-batch", type=int, default=32)
    parser.add_argument(
        "--overhead-networks",
        nargs="+",
        choices=sorted(OVERHEAD_NETWORKS),
        default=["embedded", "conv2"],
    )
    parser.add_argument("--overhead-repeats", type=int, default=5)
    parser.add_argument("--out", help="default: results/core.json, core_overhead.json with --only")
    args = parser.parse_args(argv)
    if args.out is None:
        name = "core_overhead.json" if args.only == "overhead" else "core.json"
        args.out = f"benchmarks/results/{name}"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.only in SECTIONS:
        load = os.getloadavg()[0]
        section = SECTIONS[args.only](args)
        print(json.dumps(section, indent=2))
        out = Path(args.out)
        record = json.loads(out.read_text()) if out.exists() else {}
        load = {"load_average_before": load, "load_average_after": os.getloadavg()[0]}
        record[args.only] = {**section, **_context(device), **load}
        atomic_write_text(out, json.dumps(record, indent=2))
        print(f"wrote {out} ({args.only})")
        return
    overhead = {
        network: {
            "network": OVERHEAD_NETWORKS[network][0],
            "batch": args.overhead_batch,
            "methods": engine_overhead(network, args.overhead_batch, args.overhead_repeats, device),
        }
        for network in args.overhead_networks
    }
    print(
        f"{'network':<10}{'method':<17}{'engine/bare':>12}{'engine s':>10}{'bare s':>9}"
        f"{'us/call':>9}"
    )
    for network, entry in overhead.items():
        for method, row in entry["methods"].items():
            print(
                f"{network:<10}{method:<17}{row['engine_over_bare']:>12.3f}"
                f"{row['engine_seconds']:>10.3f}{row['bare_network_seconds']:>9.3f}"
                f"{row['overhead_us_per_call']:>9.0f}"
            )
    if args.only == "overhead":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"engine_overhead": overhead, **_context(device)}, indent=2))
        print(f"wrote {out}")
        return

    counter = RowCounter(small_unet())
    diffusion = DiffusionModel(counter, image_shape=(3, 32, 32)).to(device).eval()
    for p in diffusion.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)

    eps_norm = EPSNorm(diffusion, num_levels=20)
    reference = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(device)
    stats = ReferenceStats.from_images(eps_norm, reference, batch_size=16, progress=False)
    policy = SSNISigmoid(eps_norm, stats, t_star=args.t_star, tau=max(stats.std, 1e-6))

    fixed = DiffPure(diffusion, t_star=args.t_star, steps=args.steps, generator=0)
    ssni = DiffPure(diffusion, noise=policy, t_star=args.t_star, steps=args.steps, generator=0)
    rows, scoring_rows, speed, pass_levels = {}, {}, {}, {}
    for name, purifier in (("fixed", fixed), ("ssni-n", ssni)):
        passes: list[torch.Tensor] = []
        with torch.no_grad():
            purifier(x)
            counter.rows = 0
            seconds = timed(
                lambda p=purifier, out=passes: out.append(p.forward_with_levels(x)[1]),
                args.repeats,
                device,
            )
        purification = sum(purifier.rows(levels) for levels in passes)
        rows[name] = purification / (len(passes) * args.batch)
        scoring_rows[name] = (counter.rows - purification) / (len(passes) * args.batch)
        speed[name] = args.batch / seconds
        pass_levels[name] = passes[0]

    memory = {}
    for steps in (10, 100):
        for checkpoint in (True, False):
            purifier = DiffPure(diffusion, t_star=args.t_star, steps=steps, generator=0)
            xg = x.clone().requires_grad_(True)
            lv = purifier.levels(xg)
            g = torch.Generator().manual_seed(0)
            graph = saved_bytes(
                lambda p=purifier, xg=xg, lv=lv, g=g, c=checkpoint: p.purify(
                    xg, lv, p.stages, g, checkpoint=c
                )
            )
            key = f"K={steps},{'checkpointed' if checkpoint else 'plain'}"
            memory[key] = {"graph_MiB": graph / 2**20}
    xg = x.clone().requires_grad_(True)
    levels_one = torch.full((args.batch,), args.t_star, device=device)
    call = saved_bytes(lambda: diffusion.eps(xg * 2 - 1, levels_one)) / 2**20
    for key, value in memory.items():
        recompute = call if "checkpointed" in key else 0.0
        value["peak_estimate_MiB"] = value["graph_MiB"] + recompute

    result = {
        **_context(device),
        "engine_overhead": overhead,
        "network": "diffusers UNet2DModel 32x32, channels (32, 64), random weights",
        "parameters": sum(p.numel() for p in counter.parameters()),
        "batch": args.batch,
        "t_star": args.t_star,
        "steps": args.steps,
        "images_per_second": speed,
        "ssni_overhead_ratio": speed["fixed"] / speed["ssni-n"],
        "network_rows_per_image": rows,
        "policy_scoring_rows_per_image": scoring_rows,
        "ssni_levels": pass_levels["ssni-n"].tolist(),
        "full_gradient_memory": memory,
        "one_network_call_activations_MiB": call,
        "full_gradient_peak_ratio_K100_over_K10": memory["K=100,checkpointed"]["peak_estimate_MiB"]
        / memory["K=10,checkpointed"]["peak_estimate_MiB"],
    }
    print(f"{'method':<10}{'images/s':>10}{'rows/image':>12}")
    for name in speed:
        print(f"{name:<10}{speed[name]:>10.2f}{rows[name]:>12.1f}")
    print(f"SSNI-N overhead (fixed / SSNI-N time ratio): {result['ssni_overhead_ratio']:.3f}")
    print(f"{'full gradient memory (MiB)':<26}{'graph':>10}{'peak est.':>12}")
    for key, value in memory.items():
        print(f"{key:<26}{value['graph_MiB']:>10.2f}{value['peak_estimate_MiB']:>12.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def _context(device: torch.device) -> dict[str, str]:
    return {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "device": str(device),
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    main()
