"""``--quick`` is a smoke run on every preset: 2 images, 2 reverse steps, 1 attack iteration
with 1 EOT draw, 1 judging draw, no in-loop rows, one run. The tests fail if a smoke run
grows: they read the sizes back from what the run wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from art_ssni.cli import main


def _check_small(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    assert config["smoke"] and config["runs"] == 1
    assert (config["n_images"], config["draws"], config["batch_size"]) == (2, 1, 2)
    attack = config["attack"]
    assert (attack["iterations"], attack["eot"], attack["restarts"], attack["judge_draws"]) == (
        1, 1, 1, 0,
    )  # fmt: skip
    settings = config["defence"]["settings"]
    assert settings.get("steps", 2) <= 2 and settings.get("surrogate_steps", 1) <= 1
    for row in results["rows"]:
        assert row["n"] == 2 and row["judging"]["in_loop_draws"] == 0
        assert row["final_judging"]["draws"] == 1
    units = sorted(p.relative_to(out / "parts") for p in (out / "parts").rglob("*.pt"))
    assert len(units) == len(results["rows"])  # one batch per row
    return results


@pytest.mark.parametrize("preset", ["digits", "cifar10-embedded"])
@pytest.mark.parametrize("method", ["diffpure", "gns", "dac"])
def test_quick_is_a_smoke_run_on_every_shipped_preset(tmp_path, preset, method):
    out = tmp_path / "run"
    argv = ["evaluate", "--preset", preset, "--method", method, "--quick", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    results = _check_small(out)
    stages = results["config"]["defence"]["settings"].get("stages")
    if stages:
        assert max(k for _, k in stages) <= 2


def _paper_files(folder: Path) -> list[str]:
    """Real-layout random weights for cifar10-linf, small where the layout allows: a diffusers
    DDPM folder (``unet/`` + ``scheduler/``, a small UNet2DModel at 32x32), RobustBench's
    WRN-28-10 state dict, and two images as an .npz."""
    from art_ssni._compat import import_torchvision
    from art_ssni.models.classifiers import _robustbench_wide_resnet

    import_torchvision()
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).save_pretrained(folder / "ddpm" / "unet")  # fmt: skip
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "ddpm" / "scheduler")
    wrn = _robustbench_wide_resnet()(depth=28, widen_factor=10)
    torch.save({"state_dict": wrn.state_dict()}, folder / "Standard.pt")
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    np.savez(folder / "images.npz", x=images, y=np.array([3, 5]))
    return [
        "--diffusion-checkpoint", str(folder / "ddpm"),
        "--classifier-checkpoint", str(folder / "Standard.pt"),
        "--data", str(folder / "images.npz"),
    ]  # fmt: skip


def test_quick_is_a_smoke_run_on_a_paper_preset_with_real_layout_weights(tmp_path):
    files = _paper_files(tmp_path)
    stats = tmp_path / "stats.safetensors"
    argv = ["--preset", "cifar10-linf", *files, "--no-progress"]
    assert main(["stats", *argv, "--n-images", "2", "--out", str(stats)]) == 0
    out = tmp_path / "run"
    assert main(["evaluate", *argv, "--quick", "--stats", str(stats), "--out", str(out)]) == 0
    results = _check_small(out)
    assert results["config"]["preset"] == "cifar10-linf"
    assert {row["key"] for row in results["rows"]} >= {
        "none-pgd", "diffpure-fixed-pgd-eot", "diffpure-ssni-n-selector-aware",
    }  # fmt: skip


def test_autoattack_first_runs_the_undefended_row_with_its_own_keywords(tmp_path):
    """The undefended row gets exactly the budget keywords of its attack (AutoAttack takes no
    restarts or max_rows); this crashed with a TypeError before the attack registry."""
    out = tmp_path / "aa"
    argv = ["evaluate", "--preset", "digits", "--quick", "--noise", "fixed"]
    assert main([*argv, "--attack", "autoattack", "--no-progress", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [row["key"] for row in rows] == ["none-autoattack", "diffpure-fixed-autoattack"]
    assert rows[0]["attack"].startswith("AutoAttack") and rows[0]["n"] == 2
