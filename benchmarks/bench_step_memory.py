"""Memory of one exact (``full``) gradient through DiffPure on the embedded digits default.

Compares checkpointing the whole reverse step (the engine) with checkpointing only the network
call (the engine before it checkpointed whole steps, emulated by a model whose ``eps`` is
checkpointed and a chain run without step checkpointing). Each configuration runs in a fresh
process, which reports the bytes the autograd graph saves (saved-tensor hooks, exact) and its
peak resident memory above the level before the gradient (``ru_maxrss``, Linux).

    python benchmarks/bench_step_memory.py    # writes benchmarks/results/step_memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from art_ssni import DiffPure, DiffusionModel
from art_ssni.models.zoo import load_embedded_eps_net

ROOT = Path(__file__).resolve().parents[1]


class NetworkCheckpointed(DiffusionModel):
    """Checkpoints only the network call, as the engine did before whole-step checkpointing."""

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return checkpoint(super().eps, x_t, t, use_reentrant=False)
        return super().eps(x_t, t)


def measure(mode: str, steps: int, batch: int) -> dict[str, float]:
    """One full-gradient purification; graph bytes and peak RSS growth in MiB."""
    torch.set_num_threads(1)
    cls = DiffusionModel if mode == "whole-step" else NetworkCheckpointed
    diffusion = cls(load_embedded_eps_net(), image_shape=(1, 8, 8))
    purifier = DiffPure(diffusion, t_star=100, steps=steps)
    x = torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    xg = x.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    levels = purifier.levels(xg, g)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = purifier.purify(xg, levels, purifier.stages, g, checkpoint=mode == "whole-step")
    out.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"graph_MiB": saved / 2**20, "peak_rss_growth_MiB": (peak - before) / 1024}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/step_memory.json"))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.batch)))
        return
    rows = []
    for mode in ("whole-step", "network-call"):
        for steps in args.steps:
            command = [sys.executable, __file__, "--batch", str(args.batch)]
            command += ["--child", mode, str(steps)]
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            row = {"mode": mode, "K": steps, **json.loads(result.stdout.splitlines()[-1])}
            rows.append(row)
            print(
                f"{mode:<13} K={steps:<4} graph {row['graph_MiB']:8.2f} MiB   "
                f"peak RSS growth {row['peak_rss_growth_MiB']:8.1f} MiB"
            )
    record = {
        "benchmark": "full-gradient memory, DiffPure t*=100 on the embedded digits model",
        "batch": args.batch,
        "machine": f"{platform.machine()}, one torch thread per child process, torch "
        f"{torch.__version__}",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
