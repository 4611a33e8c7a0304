"""Does a denoiser cost DiffPure less clean accuracy? Compare UNets on the shipped images.

For each UNet (a ``config`` json as the trainer writes it, ``eps_net.json``, and its
safetensors), DiffPure t* = 100 in 20 DDPM steps purifies the first ``--n-images`` shipped
CIFAR-10 test images ``--draws`` times, the shipped classifier labels them, and the script
prints the classifier's accuracy and the defended single-draw, vote and worst-of-N accuracy,
with the one-step x0 PSNR at t = 100 on 500 test images (``fixed_subset(500, seed=2)``) and the
wall time::

    python benchmarks/denoiser_check.py \\
        --unet art_ssni/zoo/cifar10.json art_ssni/zoo/cifar10_eps.safetensors \\
        --unet runs/unet24/eps_net.json runs/unet24/eps_net_fp32.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from art_ssni import DefendedClassifier, DiffPure, DiffusionModel
from art_ssni.data import fixed_subset, load_cifar10
from art_ssni.diffusion.networks.small_unet import SmallUNet
from art_ssni.evaluation.accuracy import aggregate, predict_draws
from art_ssni.models.zoo import load_embedded_cifar10_classifier, load_embedded_cifar10_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cifar10 import one_step_psnr  # noqa: E402


def load_unet(config: Path, weights: Path) -> SmallUNet:
    """A UNet from a trainer's json (or the model card: its ``eps_net`` section) and weights."""
    meta = json.loads(config.read_text(encoding="utf-8"))
    meta = meta.get("eps_net", meta)
    net = SmallUNet(**meta["config"]).eval().requires_grad_(False)
    net.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
    return net


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--unet", nargs=2, action="append", type=Path, required=True,
                   metavar=("CONFIG", "WEIGHTS"))  # fmt: skip
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--draws", type=int, default=5)
    p.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    args = p.parse_args(argv)
    classifier = load_embedded_cifar10_classifier()
    x, y = load_embedded_cifar10_images()
    x, y = x[: args.n_images], y[: args.n_images]
    probe = load_cifar10("test", root=args.data, source="jpeg",
                         indices=fixed_subset(500, 10_000, seed=2))[0]  # fmt: skip
    with torch.no_grad():
        plain = (classifier(x).argmax(1) == y).float().mean().item()
    for config, weights in args.unet:
        net = load_unet(config, weights)
        diffusion = DiffusionModel(net, image_shape=(3, 32, 32), compute_dtype=torch.bfloat16)
        model = DefendedClassifier(
            DiffPure(diffusion, t_star=100, steps=20, generator=0), classifier
        )
        start = time.perf_counter()
        with torch.no_grad():
            scores = aggregate(predict_draws(model.eval(), x, args.draws, batch_size=128), y)
        record = {
            "unet": str(weights), "parameters": sum(t.numel() for t in net.parameters()),
            "psnr_t100_db": one_step_psnr(net, probe, 100, 0), "classifier": plain,
            "diffpure": scores, "seconds": round(time.perf_counter() - start, 1),
            "n_images": args.n_images, "draws": args.draws,
        }  # fmt: skip
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
