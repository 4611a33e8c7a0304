r"""``--quick`` on the paper presets at real size: wall time and peak memory of the smoke run.

Writes random weights in the real layouts into ``--work`` (score_sde's DDPM++ deep
``checkpoint_8.pth`` layout at its full 106.6 M parameters, RobustBench's WRN-28-10
``Standard.pt``, two images as an .npz), then times ``art-ssni evaluate --preset P --quick``
for each preset P in a fresh process per thread count (``/usr/bin/time`` reports the wall
time and the peak resident memory); the runs are added to ``--out`` (others are kept). The
smoke run needs no statistics file: it computes its own at its T' = 1 from 2 of its images.
The record also holds what one network row costs (FLOPs counted by
``torch.utils.flop_counter`` on the meta device: DDPM++ at 32x32, and guided-diffusion's ADM
at 256x256, imagenet-linf's network, not timed here) and the machine's 1-minute load average
around each run, as the machine may be shared::

    python benchmarks/smoke_real_size.py --work /tmp/smoke \
        --out benchmarks/results/smoke_real_size.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from art_ssni.io import atomic_write_text


def write_files(work: Path) -> list[str]:
    """The real-layout checkpoints and images; returns their command-line flags."""
    from art_ssni.diffusion.networks.ncsnpp import NCSNpp
    from art_ssni.models.classifiers import _robustbench_wide_resnet

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = NCSNpp()
    params = [p.detach() for p in net.parameters()]
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save(
        {"model": state, "ema": {"decay": 0.9999, "num_updates": 1, "shadow_params": params},
         "optimizer": {}, "step": 0},
        work / "checkpoint_8.pth",
    )  # fmt: skip
    wrn = _robustbench_wide_resnet()(depth=28, widen_factor=10)
    torch.save({"state_dict": wrn.state_dict()}, work / "Standard.pt")
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    np.savez(work / "images.npz", x=images, y=np.array([3, 5]))
    return [
        "--diffusion-checkpoint", str(work / "checkpoint_8.pth"),
        "--classifier-checkpoint", str(work / "Standard.pt"),
        "--data", str(work / "images.npz"),
    ]  # fmt: skip


def gflop_per_row() -> dict[str, float]:
    """FLOPs of one network forward on one image, counted on the meta device (no weights)."""
    from torch.utils.flop_counter import FlopCounterMode

    from art_ssni.diffusion.networks.adm import ADMUNet
    from art_ssni.diffusion.networks.ncsnpp import NCSNpp

    networks = {
        "score_sde DDPM++ 32x32": (NCSNpp, 32),
        "ADM 256x256 (imagenet-linf)": (ADMUNet, 256),
    }
    out = {}
    for name, (build, size) in networks.items():
        with torch.device("meta"), torch.no_grad(), FlopCounterMode(display=False) as counter:
            build()(torch.zeros(1, 3, size, size), torch.tensor([10]))
        out[name] = counter.get_total_flops() / 1e9
    return out


def timed(argv: list[str], threads: int) -> dict[str, float]:
    """Run ``art-ssni argv`` with ``threads`` torch threads under /usr/bin/time: wall
    seconds, peak resident GiB, and the 1-minute load average before and after."""
    command = ["/usr/bin/time", "-f", "TIME %e %M", sys.executable, "-m", "art_ssni", *argv]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    before = os.getloadavg()[0]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    seconds, kib = re.findall(r"TIME ([\d.]+) (\d+)", done.stderr)[-1]
    return {
        "threads": threads,
        "seconds": float(seconds),
        "peak_resident_GiB": int(kib) / 2**20,
        "load_average_before": before,
        "load_average_after": os.getloadavg()[0],
    }


def work_done(run: Path) -> dict[str, object]:
    """What the smoke run did, read back from its results: sizes and the rows it ran."""
    results = json.loads((run / "results.json").read_text())
    config = results["config"]
    return {
        "n_images": config["n_images"],
        "num_levels": config["ssni"]["num_levels"],
        "reference_images": config["ssni"]["reference_images"],
        "steps": config["defence"]["settings"].get("steps"),
        "rows": {row["key"]: row["seconds_per_image"] for row in results["rows"]},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--presets", nargs="+", default=["cifar10-linf"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    files = [*write_files(args.work), "--no-progress"]
    record = json.loads(args.out.read_text()) if args.out.exists() else {}
    record.update({"gflop_per_row": gflop_per_row(), "torch": torch.__version__})
    for preset in args.presets:
        for threads in args.threads:
            run = args.work / f"run-{preset}-{threads}"
            argv = ["evaluate", *files, "--preset", preset, "--quick", "--out", str(run)]
            if run.exists():
                argv.append("--overwrite")
            record[f"{preset} quick, {threads} thread(s)"] = {
                **timed(argv, threads),
                **work_done(run),
            }
    atomic_write_text(args.out, json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
