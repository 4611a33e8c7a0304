"""Train the embedded offline model zoo on scikit-learn's 8x8 digits, reproducibly.

Writes ``digits_classifier.safetensors`` (SmallCNN), ``digits_eps.safetensors`` (SmallUNet,
EMA weights) and ``zoo.json`` (configs, seeds, steps, split, sha256, evaluation) to
``--out`` (default ``art_ssni/zoo``), then reports a sanity evaluation on the test split:

* classifier accuracy on clean images and after DDPM purification at level k* for
  k* in {10, 25, 50, 100, 200, 300}: forward-noise to level k*, then the ancestral DDPM
  chain (eta = 1) over levels k*, ..., 1 back to a clean estimate;
* the EPS deviation measure over the first 20 levels for clean images and for the same
  images plus uniform noise U[-a, a], a in {8/255, 0.1, 0.2}, clipped to [0, 1].

Conventions: level t in 1..1000 is the 0-based schedule index k = t - 1
(``alphas_cumprod[k] = prod_{i<=k}(1 - betas[i])``, betas = linspace(1e-4, 0.02, 1000));
level 0 is the clean image. ``eps_net(x_t, k)`` takes the 0-based index.

Diffusion training uses the standard eps-MSE loss with a timestep distribution that
oversamples small k (see ``sample_timesteps``): purification uses k up to about 300 and
the EPS measure the first 20 indices. Everything runs on CPU with fixed seeds, one
thread and deterministic algorithms, so a rerun on the same torch build gives the same
weights (and sha256). Reproduce the shipped zoo with::

    python benchmarks/train_embedded.py --out art_ssni/zoo
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from art_ssni.data import TEST_SIZE, load_digits
from art_ssni.diffusion.networks.small_unet import SmallUNet
from art_ssni.models.small_cnn import SmallCNN
from art_ssni.models.zoo import ZOO_JSON, sha256_file

CLASSIFIER_FILE = "digits_classifier.safetensors"
EPS_FILE = "digits_eps.safetensors"
CLASSIFIER_BATCH = 64
CLASSIFIER_CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "num_classes": 10,
    "channels": [32, 64],
    "hidden": 128,
    "dropout": 0.25,
    "image_size": 8,
}
UNET_CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "base_channels": 16,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention": True,
    "groups": 8,
    "dropout": 0.0,
    "num_timesteps": 1000,
}
SCHEDULE = {"type": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000}
# Timestep sampling mixture: (probability, upper bound exclusive) of k ~ U{0..bound-1}.
TIMESTEP_MIXTURE = ((0.6, 1000), (0.25, 300), (0.15, 50))
PURIFY_LEVELS = (10, 25, 50, 100, 200, 300)
EPS_LEVELS = 20
NOISE_SIZES = {"uniform_8/255": 8.0 / 255.0, "uniform_0.1": 0.1, "uniform_0.2": 0.2}


def alphas_cumprod() -> torch.Tensor:
    """abar[k] = prod_{i<=k} (1 - beta_i), float64, 0-based k (diffusers convention)."""
    betas = torch.linspace(
        SCHEDULE["beta_start"], SCHEDULE["beta_end"], SCHEDULE["num_timesteps"], dtype=torch.float64
    )
    return torch.cumprod(1.0 - betas, dim=0)


def sample_timesteps(n: int, gen: torch.Generator) -> torch.Tensor:
    """Draw n 0-based indices from ``TIMESTEP_MIXTURE`` (60% all, 25% <300, 15% <50)."""
    probs = torch.tensor([p for p, _ in TIMESTEP_MIXTURE])
    which = torch.multinomial(probs, n, replacement=True, generator=gen)
    bounds = torch.tensor([b for _, b in TIMESTEP_MIXTURE])[which]
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return (u * bounds).long().clamp_(max=SCHEDULE["num_timesteps"] - 1)


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): classifier augmentation."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    oy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 2% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` on [0,1] images."""
    model.eval()
    correct = sum(
        (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
        for i in range(0, len(x), batch)
    )
    return correct / len(x)


def quiet() -> tqdm:
    """A bar that shows nothing: the default of the functions that tick the run's bar."""
    return tqdm(disable=True)


def run_steps(n_train: int, args: argparse.Namespace) -> dict[str, int]:
    """The run's work in steps, part by part: optimiser steps of each model, then network
    calls over the test set in the evaluation (one bar counts them all)."""
    evaluation = 4 * 8 + sum(PURIFY_LEVELS) + EPS_LEVELS * (1 + len(NOISE_SIZES))
    return {
        "classifier": args.classifier_epochs * math.ceil(n_train / CLASSIFIER_BATCH),
        "diffusion": args.diffusion_steps,
        "evaluation": evaluation,
    }


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    batch_size: int = CLASSIFIER_BATCH,
    bar: tqdm | None = None,
) -> tuple[SmallCNN, dict[str, Any]]:
    """Cross-entropy training with +-1 pixel shift augmentation, AdamW, cosine LR; ``bar``
    advances by one per optimiser step."""
    bar = quiet() if bar is None else bar
    torch.manual_seed(seed)
    model = SmallCNN(**CLASSIFIER_CONFIG)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    bar.set_postfix_str("classifier")
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, 2e-3, warmup=50)
            loss = F.cross_entropy(model(random_shift(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update()
    model.eval()
    meta = {
        "seed": seed,
        "epochs": epochs,
        "steps": total,
        "batch_size": batch_size,
        "optimizer": "AdamW(lr=2e-3, weight_decay=1e-4), 50-step warm-up, cosine to 2%",
        "augmentation": "random +-1 pixel translation, zero fill",
        "loss": "cross-entropy",
    }
    return model, meta


def diffusion_loss(
    net: nn.Module, x0: torch.Tensor, k: torch.Tensor, abar: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """eps-MSE at indices ``k`` for clean images ``x0`` in [-1, 1]."""
    a = abar[k].to(torch.float32)[:, None, None, None]
    x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * eps
    return F.mse_loss(net(x_t, k), eps)


def train_diffusion(
    x: torch.Tensor,
    *,
    steps: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    ema_decay: float = 0.999,
    bar: tqdm | None = None,
) -> tuple[SmallUNet, dict[str, Any]]:
    """Standard DDPM eps-prediction training with small-k oversampling; returns the EMA net.
    ``bar`` advances by one per optimiser step."""
    bar = quiet() if bar is None else bar
    torch.manual_seed(seed)
    net = SmallUNet(**UNET_CONFIG)
    ema = copy.deepcopy(net).requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    abar = alphas_cumprod()
    x0_all = 2.0 * x - 1.0
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10 + 1)
    running = None
    bar.set_postfix_str("diffusion")
    for step in range(steps):
        idx = torch.randint(0, len(x0_all), (batch_size,), generator=gen)
        k = sample_timesteps(batch_size, gen)
        eps = torch.randn(x0_all[idx].shape, generator=gen)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup)
        net.train()
        loss = diffusion_loss(net, x0_all[idx], k, abar, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update()
        if step % 100 == 0:
            bar.set_postfix_str(f"diffusion, loss {running:.4f}")
    ema.eval()
    meta = {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "optimizer": f"AdamW(lr={lr}, weight_decay=0), {warmup}-step warm-up, cosine to 2%, "
        "grad-norm clip 1.0",
        "ema_decay": ema_decay,
        "ema_warmup": "decay = min(ema_decay, (1 + step) / (10 + step))",
        "loss": "MSE(eps_net(x_t, k), eps), x_t = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps",
        "timestep_sampling": {
            "mixture": [{"prob": p, "k_uniform_below": b} for p, b in TIMESTEP_MIXTURE],
            "why": "oversample small k: purification uses k <= ~300, EPS uses k < 20",
        },
        "data": "train split, x0 = 2 * pixels / 16 - 1, no augmentation",
        "final_running_loss": running,
    }
    return ema, meta


@torch.no_grad()
def eps_mse_by_band(
    net: nn.Module,
    x: torch.Tensor,
    abar: torch.Tensor,
    gen: torch.Generator,
    bar: tqdm | None = None,
) -> dict[str, float]:
    """Held-out eps-MSE of ``net`` in bands of k (every image at 8 random k per band)."""
    bar = quiet() if bar is None else bar
    out = {}
    x0 = 2.0 * x - 1.0
    for lo, hi in ((0, 20), (20, 100), (100, 300), (300, 1000)):
        losses = []
        for _ in range(8):
            k = torch.randint(lo, hi, (len(x0),), generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            losses.append(diffusion_loss(net, x0, k, abar, eps).item())
            bar.update()
        out[f"k{lo}-{hi - 1}"] = float(np.mean(losses))
    return out


@torch.no_grad()
def ddpm_purify(
    net: nn.Module,
    x: torch.Tensor,
    level: int,
    abar: torch.Tensor,
    gen: torch.Generator,
    bar: tqdm | None = None,
) -> torch.Tensor:
    """Noise [0,1] images to ``level`` (index level-1) and run ancestral DDPM back to 0.

    Each step from level t (index i = t-1) to t-1 uses the DDIM-form update with eta = 1:
    x0_hat = (x - sqrt(1-a) eps)/sqrt(a), x' = sqrt(a') x0_hat + c1 z + c2 eps with
    c1 = sqrt((1-a/a')(1-a')/(1-a)), c2 = sqrt(1-a'-c1^2), a' = abar[i-1] (1 at i = 0).
    """
    bar = quiet() if bar is None else bar
    if level <= 0:
        return x.clone()
    abar32 = abar.to(torch.float32)
    i = level - 1
    h = abar32[i].sqrt() * (2.0 * x - 1.0) + (1 - abar32[i]).sqrt() * torch.randn(
        x.shape, generator=gen
    )
    for i in range(level - 1, -1, -1):
        a = abar[i]
        a_prev = abar[i - 1] if i > 0 else torch.ones((), dtype=torch.float64)
        eps = net(h, torch.full((len(h),), i, dtype=torch.long))
        bar.update()
        x0_hat = (h - (1 - a).sqrt().float() * eps) / a.sqrt().float()
        c1 = ((1 - a / a_prev) * (1 - a_prev) / (1 - a)).clamp(min=0).sqrt()
        c2 = (1 - a_prev - c1**2).clamp(min=0).sqrt()
        h = a_prev.sqrt().float() * x0_hat + c2.float() * eps
        if i > 0:
            h = h + c1.float() * torch.randn(h.shape, generator=gen)
    return ((h + 1.0) / 2.0).clamp(0.0, 1.0)


@torch.no_grad()
def eps_norms(
    net: nn.Module,
    x: torch.Tensor,
    abar: torch.Tensor,
    gen: torch.Generator,
    bar: tqdm | None = None,
) -> torch.Tensor:
    """Per-sample L2 norm of the score averaged over indices 0..EPS_LEVELS-1 (fresh noise)."""
    bar = quiet() if bar is None else bar
    x0 = 2.0 * x - 1.0
    total = torch.zeros_like(x0)
    for i in range(EPS_LEVELS):
        a = abar[i].float()
        sigma = (1 - a).sqrt()
        x_k = a.sqrt() * x0 + sigma * torch.randn(x0.shape, generator=gen)
        total += -net(x_k, torch.full((len(x0),), i, dtype=torch.long)) / sigma
        bar.update()
    return (total / EPS_LEVELS).flatten(1).norm(dim=1)


def evaluate(
    classifier: nn.Module,
    eps_net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    bar: tqdm | None = None,
) -> dict[str, Any]:
    """Clean/purified accuracy, EPS norms clean vs noisy, held-out eps-MSE by band; ``bar``
    advances by one per network call over the test set."""
    bar = quiet() if bar is None else bar
    bar.set_postfix_str("evaluation")
    abar = alphas_cumprod()
    gen = torch.Generator().manual_seed(seed + 2)
    result: dict[str, Any] = {"num_test_images": len(x), "eval_seed": seed + 2}
    result["clean_accuracy"] = accuracy(classifier, x, y)
    result["eps_mse_test"] = eps_mse_by_band(eps_net, x, abar, gen, bar)
    purified = {}
    for level in PURIFY_LEVELS:
        purified_x = ddpm_purify(eps_net, x, level, abar, gen, bar)
        purified[str(level)] = accuracy(classifier, purified_x, y)
    result["purified_accuracy"] = purified
    result["purification"] = (
        "forward-noise to level k* (index k*-1), ancestral DDPM (eta=1) over levels k*..1, "
        "no clipping of x0_hat, output clamped to [0,1]; one draw"
    )
    clean = eps_norms(eps_net, x, abar, gen, bar)
    norms: dict[str, Any] = {"clean": {"mean": clean.mean().item(), "std": clean.std().item()}}
    for name, size in NOISE_SIZES.items():
        noise = (torch.rand(x.shape, generator=gen) * 2.0 - 1.0) * size
        x_noisy = (x + noise).clamp(0.0, 1.0)
        noisy = eps_norms(eps_net, x_noisy, abar, gen, bar)
        labels = np.r_[np.zeros(len(clean)), np.ones(len(noisy))]
        scores = torch.cat([clean, noisy]).numpy()
        norms[name] = {
            "mean": noisy.mean().item(),
            "std": noisy.std().item(),
            "auroc_vs_clean": float(roc_auc_score(labels, scores)),
            "classifier_accuracy": accuracy(classifier, x_noisy, y),
        }
    result["eps_norms"] = norms
    result["eps_definition"] = (
        f"mean over k = 0..{EPS_LEVELS - 1} (0-based) of -eps_net(x_k, k) / sqrt(1 - abar_k), "
        "fresh noise per k, then per-sample L2 norm (model space [-1,1])"
    )
    return result


@torch.no_grad()
def forward_time_ms(net: nn.Module, batch: int = 512, repeats: int = 10) -> float:
    """Median wall time (ms) of one eps-net forward at ``batch`` (machine-load dependent)."""
    x = torch.zeros(batch, 1, 8, 8)
    k = torch.arange(batch) % 1000
    net(x, k)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net(x, k)
        times.append(time.perf_counter() - t0)
    return round(1000.0 * float(np.median(times)), 1)


def save_safetensors(model: nn.Module, path: Path) -> None:
    """Write a contiguous float32 copy of the state dict."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})
    path.chmod(0o644)  # safetensors writes 0600; installed package data must be readable


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train both zoo models, evaluate them and write the weight files and zoo.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("art_ssni/zoo"))
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the digits split")
    parser.add_argument("--diffusion-steps", type=int, default=3000)
    parser.add_argument("--diffusion-batch-size", type=int, default=128)
    parser.add_argument("--classifier-epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    cpu_start = time.process_time()
    x_train, y_train = load_digits("train", seed=args.split_seed)
    x_test, y_test = load_digits("test", seed=args.split_seed)
    steps = run_steps(len(x_train), args)
    bar = tqdm(total=sum(steps.values()), desc="train_embedded", unit="step", mininterval=2.0)

    t0 = time.perf_counter()
    classifier, cls_meta = train_classifier(
        x_train, y_train, epochs=args.classifier_epochs, seed=args.seed, bar=bar
    )
    cls_meta["train_time_s"] = round(time.perf_counter() - t0, 1)
    cls_acc = accuracy(classifier, x_test, y_test)
    bar.write(f"classifier test accuracy {cls_acc:.4f} ({cls_meta['train_time_s']} s)")

    t0 = time.perf_counter()
    eps_net, eps_meta = train_diffusion(
        x_train,
        steps=args.diffusion_steps,
        seed=args.seed + 100,
        batch_size=args.diffusion_batch_size,
        bar=bar,
    )
    eps_meta["train_time_s"] = round(time.perf_counter() - t0, 1)
    bar.write(f"diffusion trained ({eps_meta['train_time_s']} s)")

    t0 = time.perf_counter()
    evaluation = evaluate(classifier, eps_net, x_test, y_test, args.seed, bar)
    evaluation["eval_time_s"] = round(time.perf_counter() - t0, 1)
    bar.close()
    evaluation["eps_net_forward_ms_batch512"] = forward_time_ms(eps_net)

    args.out.mkdir(parents=True, exist_ok=True)
    save_safetensors(classifier, args.out / CLASSIFIER_FILE)
    save_safetensors(eps_net, args.out / EPS_FILE)
    n_params = {
        "classifier": sum(p.numel() for p in classifier.parameters()),
        "eps_net": sum(p.numel() for p in eps_net.parameters()),
    }
    manifest = {
        "format_version": 1,
        "description": "Embedded offline model zoo trained on scikit-learn digits (8x8).",
        "produced_by": "benchmarks/train_embedded.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out",)
        ),
        "data": {
            "dataset": "sklearn.datasets.load_digits",
            "scaling": "x = pixels / 16, float32 (N,1,8,8) in [0,1]",
            "split": "art_ssni.data.load_digits: stratified train_test_split",
            "split_seed": args.split_seed,
            "num_train": len(x_train),
            "num_test": len(x_test),
            "test_size": TEST_SIZE,
        },
        "schedule": {**SCHEDULE, "index": "0-based k, abar[k] = prod_{i<=k}(1 - betas[i])"},
        "classifier": {
            "file": CLASSIFIER_FILE,
            "sha256": sha256_file(args.out / CLASSIFIER_FILE),
            "class": "art_ssni.models.small_cnn.SmallCNN",
            "config": classifier.config,
            "num_parameters": n_params["classifier"],
            "input": "[0,1] float32 (B,1,8,8); fixed 2x-1 inside",
            "test_accuracy": cls_acc,
            "training": cls_meta,
        },
        "eps_net": {
            "file": EPS_FILE,
            "sha256": sha256_file(args.out / EPS_FILE),
            "class": "art_ssni.diffusion.networks.small_unet.SmallUNet",
            "config": eps_net.config,
            "num_parameters": n_params["eps_net"],
            "input": "x_t in [-1,1] (B,1,8,8), k LongTensor (B,) 0-based index; returns eps",
            "weights": "EMA",
            "training": eps_meta,
        },
        "evaluation": evaluation,
        "software": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "threads": args.threads,
            "deterministic_algorithms": True,
        },
        "total_time_s": round(time.perf_counter() - start, 1),
        "total_cpu_time_s": round(time.process_time() - cpu_start, 1),
    }
    with (args.out / ZOO_JSON).open("w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    print(json.dumps({"test_accuracy": cls_acc, **evaluation}, indent=2))
    print(
        f"wrote {args.out} in {manifest['total_time_s']} s wall, "
        f"{manifest['total_cpu_time_s']} s CPU"
    )
    return manifest


if __name__ == "__main__":
    main()
