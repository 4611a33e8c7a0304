"""Train the embedded CIFAR-10 models from the shared JPEG images, reproducibly and resumably.

Two models, trained from ``cifar10-jpeg-train.zip`` only (the test zip is used for the
model card's evaluation and the shipped 512 images, never for training):

* ``--part classifier``: :class:`~art_ssni.models.compact_cnn.CompactCNN`, cross-entropy
  with label smoothing, random crop (reflect pad 4) and horizontal flip, SGD-Nesterov with
  a linear warm-up and linear decay.
* ``--part eps``: :class:`~art_ssni.diffusion.networks.small_unet.SmallUNet` on the DDPM
  linear schedule (betas 1e-4..0.02, 1000 steps), trained only on the 0-based indices
  k < ``--max-level`` (default 300: purification and EPS never go higher), eps-MSE loss,
  horizontal flips, AdamW, EMA weights. The level limit is stored in the network's config,
  so every purifier refuses higher levels.
* ``--part card``: writes ``cifar10.json`` (the model card: data, steps, wall time,
  machine, clean test accuracy on all 10,000 test images with the fp32 and the shipped fp16
  weights, one-step x0_hat PSNR at t = 50, 100, 200 on 2,000 test images) and
  ``cifar10_test512.safetensors`` (512 test images as uint8, the draw
  ``fixed_subset(512, 10000, seed=0)`` of the JPEG order, with labels and indices).

``--part all`` (the default) runs the three in order. Each training part saves a checkpoint
to ``--work`` every ``--checkpoint-every`` steps and resumes from it when rerun; the batch
order and augmentation of step s are drawn from generators seeded by (seed, epoch) and
(seed, s), so a resumed run takes the same steps as an uninterrupted one.

Reproduce the shipped files (the reference EPS statistics are made afterwards with
``art-ssni stats``, see benchmarks/README.md)::

    python benchmarks/train_cifar10.py --out art_ssni/zoo --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from art_ssni.data import fixed_subset, load_cifar10
from art_ssni.diffusion.networks.small_unet import SmallUNet
from art_ssni.io import atomic_torch_save
from art_ssni.models.compact_cnn import TTAS, CompactCNN, whitening_weights
from art_ssni.models.zoo import CIFAR10_FILES, sha256_file

SCHEDULE = {"type": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000}
PSNR_LEVELS = (50, 100, 200)
PSNR_IMAGES = 2000
SHIPPED_IMAGES = 512


def unet_config(base: int, max_level: int, blocks: int = 1) -> dict[str, Any]:
    return {
        "in_channels": 3,
        "base_channels": base,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": blocks,
        "attention": True,
        "groups": 8,
        "dropout": 0.0,
        "num_timesteps": 1000,
        "max_level": max_level,
    }


def alphas_cumprod() -> torch.Tensor:
    """abar[k] = prod_{i<=k}(1 - beta_i), float64, 0-based k."""
    betas = torch.linspace(SCHEDULE["beta_start"], SCHEDULE["beta_end"], 1000, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def batch_indices(step: int, n: int, batch: int, seed: int) -> torch.Tensor:
    """The indices of step ``step``: a slice of epoch ``step // (n // batch)``'s permutation."""
    per_epoch = n // batch
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[pos * batch : (pos + 1) * batch]


def augment(x: torch.Tensor, gen: torch.Generator, crop: bool) -> torch.Tensor:
    """Random horizontal flip, and with ``crop`` a random 32x32 crop of the reflect-padded image."""
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if not crop:
        return x
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    oy = torch.randint(0, 9, (b,), generator=gen)
    ox = torch.randint(0, 9, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(32))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(32))[:, None, None, :]
    return padded[
        torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols
    ]


def load_train(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split, or its first ``--train-images`` images of a fixed draw (smoke runs)."""
    if args.train_images is None:
        return load_cifar10("train", root=args.data, source="jpeg")
    index = fixed_subset(args.train_images, 50_000, seed=args.seed)
    return load_cifar10("train", root=args.data, source="jpeg", indices=index)


class Checkpoint:
    """Save and resume the state of named modules and optimisers, the step, the wall time
    spent and a log of plain records (the training curve), read back with
    ``weights_only=True``."""

    def __init__(self, path: Path, **stateful: Any) -> None:
        self.path = path
        self.stateful = stateful
        self.log: list[dict[str, float]] = []

    def resume(self) -> tuple[int, float]:
        """Load the saved state if there is one; return (step, seconds spent so far)."""
        if not self.path.is_file():
            return 0, 0.0
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        for name, obj in self.stateful.items():
            obj.load_state_dict(state[name])
        self.log = list(state.get("log", []))
        return int(state["step"]), float(state["elapsed"])

    def save(self, step: int, elapsed: float) -> None:
        state = {name: obj.state_dict() for name, obj in self.stateful.items()}
        record = {**state, "step": step, "elapsed": elapsed, "log": self.log}
        atomic_torch_save(record, self.path)


def classifier_config(widths: list[int]) -> dict[str, Any]:
    return {
        "widths": widths,
        "num_classes": 10,
        "stem": "whiten",
        "head_bias": False,
        "head_scale": 1 / 9,
        "tta": "flip_translate",
    }


def prepare_classifier(model: CompactCNN, x: torch.Tensor) -> None:
    """Whitening stem from 2x2 patches of 5,000 training images, identity (Dirac) start on
    the first filters of every 3x3 convolution, BatchNorm scales frozen at 1."""
    stem = model.net[0]
    sample = (x[:5000] - model.mean) / model.std
    patches = sample.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5)
    with torch.no_grad():
        stem.weight.copy_(whitening_weights(patches.reshape(-1, 3, 2, 2)))
        stem.bias.zero_()
    stem.weight.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            with torch.no_grad():
                n = min(m.in_channels, m.out_channels)
                nn.init.dirac_(m.weight[:n])
        if isinstance(m, nn.BatchNorm2d):
            m.momentum, m.eps = 0.4, 1e-12
            m.weight.requires_grad_(False)


def classifier_lr(step: int, total: int) -> float:
    """Triangular schedule: 0.2 -> 1 over the first 23 % of steps, then down to 0.07."""
    peak = int(0.23 * total)
    if step < peak:
        return 0.2 + 0.8 * step / peak
    return 1.0 - 0.93 * (step - peak) / max(1, total - peak)


def translate_flip(
    x: torch.Tensor, idx: torch.Tensor, epoch: int, gen: torch.Generator, seed: int
) -> torch.Tensor:
    """Random translation by up to 2 pixels (reflect padding) and an alternating flip: each
    image's mirror state is drawn once (from ``seed`` and its index) and toggles every epoch,
    so consecutive epochs see both."""
    first = torch.rand(len(x), generator=torch.Generator().manual_seed(seed)) < 0.5
    flip = first[idx] ^ bool(epoch % 2)
    b = len(idx)
    batch = torch.where(flip[:, None, None, None], x[idx].flip(3), x[idx])
    padded = F.pad(batch, (2, 2, 2, 2), mode="reflect")
    oy = torch.randint(0, 5, (b,), generator=gen)
    ox = torch.randint(0, 5, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(32))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(32))[:, None, None, :]
    return padded[
        torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols
    ]


def classifier_steps(args: argparse.Namespace) -> int:
    """Optimiser steps of the classifier: ``--classifier-epochs`` of full batches."""
    n = 50_000 if args.train_images is None else args.train_images
    return round(args.classifier_epochs * (n // args.classifier_batch))


def train_classifier(args: argparse.Namespace, bar: tqdm | None = None) -> dict[str, Any]:
    """The airbench94 recipe (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU")
    on the CPU in bfloat16: whitening stem, Dirac initialisation, frozen BatchNorm scales,
    SGD-Nesterov on the summed label-smoothed (0.2) loss, a triangular schedule, lookahead
    averaging every 5 steps, translate-2 and alternating-flip augmentation, flip-and-translate
    test-time augmentation. Writes fp16 safetensors and the part's json."""
    x, y = load_train(args)
    torch.manual_seed(args.seed)
    model = CompactCNN(**classifier_config(args.classifier_widths))
    prepare_classifier(model, x)
    lookahead = copy.deepcopy(model).requires_grad_(False)
    batch = args.classifier_batch
    momentum = 0.85
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = args.classifier_lr / kilostep, 0.0153 * batch / kilostep
    stem_bias = model.net[0].bias
    biases = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim == 1]
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    opt = torch.optim.SGD(
        [
            {"params": weights, "lr": lr, "weight_decay": wd / lr, "base": lr},
            {"params": biases, "lr": lr * 64, "weight_decay": wd / (lr * 64), "base": lr * 64},
        ],
        momentum=momentum,
        nesterov=True,
    )
    per_epoch = len(x) // batch
    total = classifier_steps(args)
    ckpt = Checkpoint(args.work / "classifier.pt", model=model, lookahead=lookahead, opt=opt)
    step, elapsed = ckpt.resume()
    start = time.perf_counter() - elapsed
    model.train()
    own = bar is None
    if own:
        bar = tqdm(total=total, desc="classifier", unit="step", mininterval=5.0)
    bar.update(step)
    while step < total:
        idx = batch_indices(step, len(x), batch, args.seed)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        xb = translate_flip(x, idx, step // per_epoch, gen, args.seed)
        scale = classifier_lr(step, total)
        for group in opt.param_groups:
            group["lr"] = group["base"] * scale
        stem_bias.requires_grad_(step < 3 * per_epoch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(xb.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits.float(), y[idx], label_smoothing=0.2, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 5 == 0 or step == total:
            decay = 0.0 if step == total else 0.95**5 * (step / total) ** 3
            with torch.no_grad():
                for p_ema, p in zip(
                    lookahead.state_dict().values(), model.state_dict().values(), strict=True
                ):
                    if p.is_floating_point():
                        p_ema.lerp_(p, 1.0 - decay)
                        p.copy_(p_ema)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item() / batch:.3f}", refresh=False)
        if step % args.checkpoint_every == 0 or step == total:
            ckpt.save(step, time.perf_counter() - start)
    if own:
        bar.close()
    model.eval()
    wall = time.perf_counter() - start
    meta = {
        "class": "art_ssni.models.compact_cnn.CompactCNN",
        "config": model.config,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "input": "[0,1] float32 (B,3,32,32); CIFAR-10 mean/std normalisation and "
        "flip-and-translate test-time augmentation (6 views) inside",
        "training": {
            "seed": args.seed,
            "recipe": "airbench94 (Keller Jordan, 2024) re-implemented for the CPU",
            "epochs": args.classifier_epochs,
            "steps": total,
            "batch_size": batch,
            "precision": "bfloat16 autocast, float32 weights",
            "optimizer": f"SGD(momentum={momentum}, nesterov), summed loss, lr "
            f"{args.classifier_lr}/{kilostep:.0f} (x64 on biases), decoupled weight decay "
            f"{wd:.5f} x schedule per step, triangular schedule 0.2 -> 1 -> 0.07, lookahead "
            "every 5 steps",
            "loss": "cross-entropy, label smoothing 0.2",
            "augmentation": "random translation by up to 2 pixels (reflect), alternating flip",
            "train_time_s": round(wall, 1),
        },
    }
    save_part(args, "classifier", model, meta)
    return meta


def train_eps(args: argparse.Namespace, bar: tqdm | None = None) -> dict[str, Any]:
    """eps-MSE DDPM training on indices k < max_level, AdamW, EMA; writes EMA weights."""
    x, _ = load_train(args)
    x = x * 2.0 - 1.0
    abar = alphas_cumprod().float()
    torch.manual_seed(args.seed)
    net = SmallUNet(**unet_config(args.unet_base, args.max_level, args.unet_blocks))
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.eps_lr, weight_decay=0.0)
    total, warmup = args.eps_steps, 200
    ckpt = Checkpoint(args.work / "eps.pt", model=net, ema=ema, opt=opt)
    step, elapsed = ckpt.resume()
    start = time.perf_counter() - elapsed
    probe = load_cifar10(
        "test", root=args.data, source="jpeg", indices=fixed_subset(500, 10_000, seed=2)
    )[0]
    net.train()
    own = bar is None
    if own:
        bar = tqdm(total=total, desc="eps UNet", unit="step", mininterval=5.0)
    bar.update(step)
    while step < total:
        idx = batch_indices(step, len(x), args.eps_batch, args.seed + 1)
        gen = torch.Generator().manual_seed((args.seed + 1) * 1_000_003 + step)
        x0 = augment(x[idx], gen, crop=False)
        k = torch.randint(0, args.max_level, (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[k][:, None, None, None]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.eps_bf16):
            pred = net(a.sqrt() * x0 + (1 - a).sqrt() * noise, k)
        loss = F.mse_loss(pred.float(), noise)
        lr = args.eps_lr * min(1.0, (step + 1) / warmup)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay = min(args.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - decay)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if args.curve_every and (step % args.curve_every == 0 or step == total):
            psnr = one_step_psnr(ema, probe, 100, args.seed)
            ckpt.log.append(
                {"step": step, "seconds": time.perf_counter() - start, "psnr_100": psnr}
            )
            bar.write(json.dumps(ckpt.log[-1]))
        if step % args.checkpoint_every == 0 or step == total:
            ckpt.save(step, time.perf_counter() - start)
    if own:
        bar.close()
    wall = time.perf_counter() - start
    meta = {
        "class": "art_ssni.diffusion.networks.small_unet.SmallUNet",
        "config": ema.config,
        "num_parameters": sum(p.numel() for p in ema.parameters()),
        "input": "x_t in [-1,1] (B,3,32,32) and the 0-based DDPM index k < max_level",
        "trained_levels": f"0-based indices 0..{args.max_level - 1} "
        f"(levels t = 1..{args.max_level})"
        f" only; purifiers refuse higher levels",
        "training": {
            "seed": args.seed,
            "steps": total,
            "batch_size": args.eps_batch,
            "timesteps": f"k ~ U{{0..{args.max_level - 1}}}",
            "optimizer": f"AdamW(lr={args.eps_lr}, weight_decay=0), {warmup}-step warm-up, "
            "cosine to 10%, grad-norm clip 1.0",
            "ema_decay": args.ema_decay,
            "weights": "EMA",
            "augmentation": "horizontal flip",
            "loss": "eps-MSE",
            "precision": "bfloat16 autocast, float32 weights" if args.eps_bf16 else "float32",
            "train_time_s": round(wall, 1),
            "curve": ckpt.log,
        },
    }
    save_part(args, "eps_net", ema, meta)
    return meta


def save_part(args: argparse.Namespace, key: str, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write fp32 (work) and fp16 (shipped) safetensors and the part's metadata."""
    meta["command"] = "python benchmarks/train_cifar10.py " + " ".join(args.argv)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    args.work.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.work / f"{key}_fp32.safetensors"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(half, str(args.out / CIFAR10_FILES[key]))
    (args.work / f"{key}.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


@torch.no_grad()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    hits = sum(
        int((model(x[i : i + 500]).argmax(1) == y[i : i + 500]).sum())
        for i in range(0, len(x), 500)
    )
    return hits / len(x)


@torch.no_grad()
def one_step_psnr(net: nn.Module, x: torch.Tensor, level: int, seed: int) -> float:
    """Mean PSNR (dB, [0,1] scale) of x0_hat = (x_t - sqrt(1-abar) eps_hat) / sqrt(abar),
    clipped to [-1, 1]."""
    abar = alphas_cumprod().float()[level - 1]
    gen = torch.Generator().manual_seed(seed + level)
    psnrs = []
    for i in range(0, len(x), 250):
        x0 = x[i : i + 250] * 2 - 1
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn(x0.shape, generator=gen)
        eps = net(xt, torch.full((len(x0),), level - 1))
        x0_hat = ((xt - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
        mse = ((x0_hat - x0) / 2).square().flatten(1).mean(1)
        psnrs.append(10 * torch.log10(1.0 / mse))
    return float(torch.cat(psnrs).mean())


def write_card(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the models trained in ``--work`` on the test split and write cifar10.json and
    the 512 images. A model not trained there keeps its section of the current card (its
    shipped file must match the recorded sha256), and so does the card's SSNI choice."""
    from safetensors.torch import load_file

    card_path = args.out / CIFAR10_FILES["card"]
    previous = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    x, y = load_cifar10("test", root=args.data, source="jpeg")
    card: dict[str, Any] = {
        "format_version": 1,
        "description": "Embedded CIFAR-10 models trained on the shared JPEG training images.",
        "produced_by": "benchmarks/train_cifar10.py " + " ".join(args.argv),
        "data": {
            "train": "cifar10-jpeg-train.zip (50,000 JPEG images, about quality 75)",
            "test": "cifar10-jpeg-test.zip (10,000 JPEG images)",
            "sha256_train": sha256_file(args.data / "cifar10-jpeg-train.zip"),
        },
        "schedule": {**SCHEDULE, "index": "0-based k, abar[k] = prod_{i<=k}(1 - betas[i])"},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "device": "cpu",
        },
    }
    for key, cls in (("classifier", CompactCNN), ("eps_net", SmallUNet)):
        path = args.out / CIFAR10_FILES[key]
        if not (args.work / f"{key}.json").is_file():
            kept = previous.get(key)
            if kept is None or sha256_file(path) != kept["sha256"]:
                raise FileNotFoundError(
                    f"{key} was not trained in {args.work} and {path} is not the one the "
                    f"current card records"
                )
            card[key] = {**kept, "kept_from_previous_card": True}
            continue
        meta = json.loads((args.work / f"{key}.json").read_text(encoding="utf-8"))
        model = cls(**meta["config"]).eval()
        full = load_file(str(args.work / f"{key}_fp32.safetensors"))
        model.load_state_dict(full)
        if key == "classifier":
            meta["test_accuracy_fp32"] = test_accuracy(model, x, y)
            shipped_tta = model.tta
            meta["test_accuracy_fp32_by_tta"] = {}
            for tta in TTAS:
                model.tta = tta
                meta["test_accuracy_fp32_by_tta"][tta] = test_accuracy(model, x, y)
            model.tta = shipped_tta
        else:
            sub = x[fixed_subset(PSNR_IMAGES, len(x), seed=1)]
            meta["psnr_fp32"] = {
                str(t): one_step_psnr(model, sub, t, args.seed) for t in PSNR_LEVELS
            }
        model.load_state_dict(load_file(str(path)))
        if key == "classifier":
            meta["test_accuracy"] = test_accuracy(model, x, y)
        else:
            meta["one_step_psnr_db"] = {
                str(t): one_step_psnr(model, sub, t, args.seed) for t in PSNR_LEVELS
            }
            meta["psnr_images"] = f"{PSNR_IMAGES} test images, fixed_subset(seed=1)"
        meta["file"] = CIFAR10_FILES[key]
        meta["dtype"] = "float16 (loaded into float32 modules)"
        meta["sha256"] = sha256_file(path)
        card[key] = meta
    idx = fixed_subset(SHIPPED_IMAGES, len(x), seed=0)
    images = (x[idx] * 255).round().to(torch.uint8).contiguous()
    save_file(
        {"images": images, "labels": y[idx].contiguous(), "indices": idx.contiguous()},
        str(args.out / CIFAR10_FILES["images"]),
    )
    classifier = CompactCNN(**card["classifier"]["config"]).eval()
    classifier.load_state_dict(load_file(str(args.out / CIFAR10_FILES["classifier"])))
    card["images"] = {
        "file": CIFAR10_FILES["images"],
        "sha256": sha256_file(args.out / CIFAR10_FILES["images"]),
        "draw": f"fixed_subset({SHIPPED_IMAGES}, 10000, seed=0) of the JPEG test order",
        "classifier_accuracy": test_accuracy(classifier, images.float() / 255, y[idx]),
    }
    if "ssni" in previous:
        card["ssni"] = previous["ssni"]
    (args.out / CIFAR10_FILES["card"]).write_text(
        json.dumps(card, indent=2) + "\n", encoding="utf-8"
    )
    return card


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("all", "classifier", "eps", "card"), default="all")
    p.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    p.add_argument("--out", type=Path, default=Path("art_ssni/zoo"))
    p.add_argument("--work", type=Path, default=Path("runs/train_cifar10"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, help="train on a fixed draw of N images (tests)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--classifier-widths", type=int, nargs=4, default=[24, 64, 256, 256])
    p.add_argument("--classifier-epochs", type=float, default=16.0)
    p.add_argument("--classifier-batch", type=int, default=1024)
    p.add_argument("--classifier-lr", type=float, default=11.5)
    p.add_argument("--unet-base", type=int, default=16)
    p.add_argument("--unet-blocks", type=int, default=1)
    p.add_argument("--eps-bf16", action="store_true", help="bfloat16 autocast (AMX CPUs)")
    p.add_argument("--curve-every", type=int, default=0, help="one-step PSNR(t=100) every N steps")
    p.add_argument("--max-level", type=int, default=300)
    p.add_argument("--eps-steps", type=int, default=4000)
    p.add_argument("--eps-batch", type=int, default=64)
    p.add_argument("--eps-lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    parts = [part for part in ("classifier", "eps") if args.part in ("all", part)]
    if parts:
        steps = {"classifier": classifier_steps(args), "eps": args.eps_steps}
        desc = "training " + " + ".join(parts)
        with tqdm(total=sum(steps[p] for p in parts), desc=desc, unit="step",
                  mininterval=5.0) as bar:  # fmt: skip
            if "classifier" in parts:
                train_classifier(args, bar)
            if "eps" in parts:
                train_eps(args, bar)
    if args.part in ("all", "card"):
        card = write_card(args)
        print(json.dumps({k: card[k] for k in ("classifier", "eps_net", "images")}, indent=1))


if __name__ == "__main__":
    main()
