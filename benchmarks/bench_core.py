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

    python benchmarks/bench_core.py [--device cpu] [--batch 4] [--out benchmarks/results/core.json]
    python benchmarks/bench_core.py --only overhead   # writes benchmarks/results/core_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from art_ssni import GNS, DiffPure, DiffusionModel, EPSNorm, ReferenceStats, SSNISigmoid
from art_ssni._compat import import_torchvision
from art_ssni.models.zoo import load_embedded_eps_net


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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--t-star", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=("all", "overhead"), default="all")
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
