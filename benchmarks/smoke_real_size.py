r"""``--quick`` on a paper preset at real size: wall time and peak memory of the smoke run.

Writes random weights in the real layouts into ``--work`` (score_sde's DDPM++ deep
``checkpoint_8.pth`` layout at its full 106.6 M parameters, RobustBench's WRN-28-10
``Standard.pt``, two images as an .npz), computes reference statistics of the two images, then
times ``art-ssni evaluate --preset cifar10-linf --quick`` in a fresh process (``/usr/bin/time``
reports the wall time and the peak resident memory)::

    python benchmarks/smoke_real_size.py --work /tmp/smoke \
        --out benchmarks/results/smoke_real_size.json
"""

from __future__ import annotations

import argparse
import json
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


def timed(argv: list[str]) -> dict[str, float]:
    """Run ``art-ssni argv`` under /usr/bin/time: wall seconds and peak resident GiB."""
    command = ["/usr/bin/time", "-f", "TIME %e %M", sys.executable, "-m", "art_ssni", *argv]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds, kib = re.findall(r"TIME ([\d.]+) (\d+)", done.stderr)[-1]
    return {"seconds": float(seconds), "peak_resident_GiB": int(kib) / 2**20}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    files = [*write_files(args.work), "--preset", "cifar10-linf", "--no-progress"]
    stats = args.work / "stats.safetensors"
    record = {
        "stats": timed(["stats", *files, "--n-images", "2", "--out", str(stats)]),
        "quick": timed(
            [
                "evaluate",
                *files,
                "--quick",
                "--stats",
                str(stats),
                "--overwrite",
                "--out",
                str(args.work / "run"),
            ]
        ),  # fmt: skip
    }
    atomic_write_text(args.out, json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
