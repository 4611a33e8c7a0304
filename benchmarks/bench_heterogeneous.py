"""Heterogeneous-noise benchmark: DAC and MANI-Pure against DiffPure at the same rows.

For each method, fixed and with SSNI-N: network rows per purified image (``Purifier.rows``
of the levels the timed pass picked; the SSNI policy's scoring rows are the rest of the rows
the counting network saw), seconds per image, and the time per network row relative to
DiffPure's with the same noise kind (1.0 means the method costs exactly its rows, scoring
included); the methods are timed round robin,
``--repeats`` rounds, median. The `full` gradient's memory is the bytes the
autograd graph keeps for backward (saved-tensor hooks, as bench_core.py; MANI-Pure's graph
includes its reference call, which is not recomputed) plus one recomputed network call.
CIFAR-10-sized setting on bench_core's small diffusers UNet (random weights):
DiffPure t* = 100 with 100 steps, DAC's defaults (200 -> 100 -> 0, stride 2: 100 rows),
MANI-Pure t* = 100 with 100 steps (+1 reference row); DAC's mask is an AttentionMask (top 15 %)
on a small random CNN.

    python benchmarks/bench_heterogeneous.py [--batch 2] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
from bench_core import RowCounter, saved_bytes, small_unet, timed
from torch import nn

from art_ssni import (
    DAC,
    AttentionMask,
    DiffPure,
    DiffusionModel,
    EPSNorm,
    MANIPure,
    ReferenceStats,
    SSNISigmoid,
)


def small_classifier() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def _time_per_row(entry: dict) -> float:
    """Seconds per network row: the purification's and the noise policy's scoring rows."""
    return entry["seconds_per_image"] / (entry["rows_per_image"] + entry["scoring_rows_per_image"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/heterogeneous.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    counter = RowCounter(small_unet())
    diffusion = DiffusionModel(counter, image_shape=(3, 32, 32)).to(device).eval()
    for p in diffusion.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    eps_norm = EPSNorm(diffusion, num_levels=20)
    reference = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(device)
    stats = ReferenceStats.from_images(eps_norm, reference, batch_size=16, progress=False)
    mask = AttentionMask(small_classifier().to(device), ["1", "3"], top_fraction=0.15)

    def policy(t_star: int):
        return SSNISigmoid(eps_norm, stats, t_star=t_star, tau=max(stats.std, 1e-6))

    def build(method: str, noise):
        if method == "DiffPure":
            return DiffPure(diffusion, noise=policy(100) if noise else None, generator=0)
        if method == "DAC":
            return DAC(diffusion, mask=mask, noise=policy(200) if noise else None, generator=0)
        return MANIPure(diffusion, noise=policy(100) if noise else None, generator=0)

    purifiers = {
        f"{method}, {noise}": build(method, noise == "ssni-n")
        for noise in ("fixed", "ssni-n")
        for method in ("DiffPure", "DAC", "MANI-Pure")
    }
    seconds: dict[str, list[float]] = {key: [] for key in purifiers}
    timing = {}
    with torch.no_grad():
        for _ in range(args.repeats):  # round robin, so that machine load hits all alike
            for key, purifier in purifiers.items():
                passes: list[torch.Tensor] = []
                counter.rows = 0
                seconds[key].append(
                    timed(
                        lambda p=purifier, out=passes: out.append(p.forward_with_levels(x)[1]),
                        1,
                        device,
                    )
                )
                (levels,) = passes
                purification = purifier.rows(levels)
                timing[key] = {
                    "rows_per_image": purification / args.batch,
                    "scoring_rows_per_image": (counter.rows - purification) / args.batch,
                    "levels": levels.tolist(),
                }
    for key, entry in timing.items():
        entry["seconds_per_image"] = statistics.median(seconds[key]) / args.batch
        entry["seconds_all_repeats"] = seconds[key]
    for key, entry in timing.items():
        base = timing["DiffPure, " + key.split(", ")[1]]
        entry["time_per_row_vs_diffpure"] = _time_per_row(entry) / _time_per_row(base)

    xg = x.clone().requires_grad_(True)
    call = saved_bytes(lambda: diffusion.eps(xg * 2 - 1, torch.full((args.batch,), 100))) / 2**20
    memory = {}
    for method in ("DiffPure", "DAC", "MANI-Pure"):
        purifier = build(method, False)
        xg = x.clone().requires_grad_(True)
        levels = purifier.levels(xg)
        g = torch.Generator().manual_seed(0)
        graph = saved_bytes(
            lambda p=purifier, lv=levels, xg=xg, g=g: p.purify(xg, lv, p.stages, g, checkpoint=True)
        )
        memory[method] = {"graph_MiB": graph / 2**20, "peak_estimate_MiB": graph / 2**20 + call}

    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "device": str(device),
        "torch": torch.__version__,
        "network": "diffusers UNet2DModel 32x32, channels (32, 64), random weights",
        "batch": args.batch,
        "repeats": args.repeats,
        "timing": timing,
        "one_network_call_activations_MiB": call,
        "full_gradient_memory": memory,
    }
    print(f"{'method, noise':<22}{'rows/img':>10}{'s/img':>9}{'per-row time vs DiffPure':>26}")
    for key, entry in timing.items():
        print(
            f"{key:<22}{entry['rows_per_image']:>10.1f}{entry['seconds_per_image']:>9.2f}"
            f"{entry['time_per_row_vs_diffpure']:>26.3f}"
        )
    print(f"{'full gradient (MiB)':<22}{'graph':>10}{'peak est.':>12}")
    for key, value in memory.items():
        print(f"{key:<22}{value['graph_MiB']:>10.2f}{value['peak_estimate_MiB']:>12.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
