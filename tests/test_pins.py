"""Pinned numbers: every method's purified images and input gradients, and a small digits
evaluation, recorded before a refactor and compared after it.

The references in ``tests/data/pins.safetensors`` and ``tests/data/pins_evaluate.json`` were
written by ``python tests/test_pins.py --write`` on the code they pin; a refactor that
changes any of them changes a recorded number, so it must say why and re-record on purpose.
They are written and compared on one torch thread: with more, sums run in another order and
the gradients round differently.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from art_ssni import (
    DAC,
    GDMP,
    GNS,
    AttentionMask,
    DiffPure,
    DiffusionModel,
    EPSNorm,
    MANIPure,
    ReferenceStats,
    SpectralNoise,
    SSNILinear,
    SSNISigmoid,
)
from art_ssni.data import load_digits
from art_ssni.models.zoo import load_embedded_classifier, load_embedded_eps_net, zoo_root
from art_ssni.noise import ATTENTION_LAYERS

DATA = Path(__file__).parent / "data"
PINS = DATA / "pins.safetensors"
EVALUATE_PINS = DATA / "pins_evaluate.json"
NOISES = ("fixed", "ssni-l", "ssni-n")


def _setting():
    diffusion = DiffusionModel(load_embedded_eps_net(), image_shape=(1, 8, 8), name="digits")
    classifier = load_embedded_classifier()
    stats = ReferenceStats.load(zoo_root() / "digits_stats.safetensors")
    x = load_digits("test")[0][:6]
    return diffusion, classifier, stats, x


def _purifiers(diffusion, classifier, stats, noise: str, gradient: str):
    def policy(t_star: int):
        if noise == "fixed":
            return None
        eps_norm = EPSNorm(diffusion, num_levels=20)
        if noise == "ssni-l":
            return SSNILinear(eps_norm, stats, t_star, 2.0)
        return SSNISigmoid(eps_norm, stats, t_star, 1.0, stats.std)

    mask = AttentionMask(classifier, ATTENTION_LAYERS["digits"], threshold=0.5)
    common = {"gradient": gradient}
    return {
        "diffpure": DiffPure(
            diffusion, t_star=60, steps=10, surrogate_steps=5, noise=policy(60), **common
        ),
        "diffpure-ddim": DiffPure(
            diffusion, t_star=60, steps=10, surrogate_steps=5, sampler="ddim",
            noise=policy(60), **common,
        ),
        "diffpure-sde": DiffPure(
            diffusion, t_star=60, steps=10, surrogate_steps=5, sampler="sde",
            noise=policy(60), **common,
        ),
        "gdmp": GDMP(
            diffusion, t_star=30, runs=2, steps=6, surrogate_steps=3, guidance="mse",
            noise=policy(30), **common,
        ),
        "gns": GNS(
            diffusion, stages=((20, 5), (20, 5), (40, 8)), surrogate_stages=((20, 1), (40, 2)),
            noise=policy(40), **common,
        ),
        "dac": DAC(
            diffusion, mask=mask, t_large=60, t_small=30, stride=6, resample=3,
            surrogate_stride=30, noise=policy(60), **common,
        ),
        "mani-pure": MANIPure(
            diffusion, t_star=60, steps=10, surrogate_steps=5, radius=2.0, delta=0.3,
            spectral=SpectralNoise(bands=4, gamma=1.8), noise=policy(60), **common,
        ),
    }  # fmt: skip


def compute_pins() -> dict[str, torch.Tensor]:
    """Purified images (no gradient) and input gradients of a fixed weighted sum, per method,
    noise policy and gradient mode, each from its own seed."""
    torch.manual_seed(0)
    diffusion, classifier, stats, x = _setting()
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    out: dict[str, torch.Tensor] = {}
    for noise in NOISES:
        for gradient in ("full", "surrogate", "bpda"):
            for name, purifier in _purifiers(diffusion, classifier, stats, noise, gradient).items():
                key = f"{name}/{noise}/{gradient}"
                if gradient == "full":
                    out[f"{key}/purified"] = purifier(x, generator=11).detach()
                xg = x.clone().requires_grad_(True)
                (purifier(xg, generator=13) * weights).sum().backward()
                out[f"{key}/grad"] = xg.grad.detach()
    return out


def _check_or_write(argv: list[str]) -> None:
    if "--write" in argv:
        torch.set_num_threads(1)
        DATA.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in compute_pins().items()}, PINS)
        with tempfile.TemporaryDirectory() as folder:
            pins = evaluate_pins(Path(folder) / "run")
        EVALUATE_PINS.write_text(json.dumps(pins, indent=1))


# Recorded as a digits --quick run with these sizes, when the smoke sizes were 2 EOT draws and
# a step of 2.5 eps / iterations = 0.25; spelled out so the pin does not follow the smoke sizes.
EVALUATE_ARGS = [
    "--preset", "digits", "--n-images", "6", "--batch-size", "3", "--iterations", "2",
    "--eot", "2", "--step", "0.25", "--draws", "2", "--judge-draws", "2",
    "--noise", "fixed,ssni-l,ssni-n", "--attack", "pgd-eot,selector-aware,bpda-eot",
    "--no-progress",
]  # fmt: skip


def evaluate_pins(out: Path) -> dict[str, dict[str, object]]:
    """The accuracies of every row of a small digits evaluation."""
    from art_ssni.cli import main

    assert main(["evaluate", "--out", str(out), "--overwrite", *EVALUATE_ARGS]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    return {
        row["key"]: {"clean": row["clean"], "robust": row["robust"], "n": row["n"]} for row in rows
    }


@pytest.fixture(scope="module")
def pinned() -> dict[str, torch.Tensor]:
    return load_file(PINS)


def test_purification_pins(pinned, one_thread):
    """Every method's purified images and gradients equal the recorded ones."""
    now = compute_pins()
    assert sorted(now) == sorted(pinned)
    for key, value in now.items():
        torch.testing.assert_close(value, pinned[key], rtol=0, atol=1e-6, msg=key)


def test_evaluation_pins(tmp_path, one_thread):
    """A small digits evaluation reports the recorded accuracies, row by row."""
    assert evaluate_pins(tmp_path / "run") == json.loads(EVALUATE_PINS.read_text())


if __name__ == "__main__":
    _check_or_write(sys.argv[1:])
