"""``--quick`` is a smoke run on every preset: 2 images (1 on the paper presets' full-size
networks), 2 reverse steps, 1 attack iteration with 1 EOT draw, 1 judging draw, no in-loop
rows, one run, and SSNI's EPS measure at T' = 1 with statistics the run computes from 2 of its
own images. The tests fail if a smoke run grows: they read the sizes back from what the run
wrote and count the work it did (EPS passes and their images and levels, purification passes,
diffusion-network calls and rows) against a budget written from those sizes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from art_ssni import DiffusionModel, EPSNorm
from art_ssni.cli import main
from art_ssni.config import resolve
from art_ssni.purification.engine import Purifier

LEVELS = 1  # T' of a smoke run's EPS measure
REFERENCE_IMAGES = 2  # images of a smoke run's own statistics
STEPS = 2  # reverse steps per stage
PASSES_PER_ROW = 3  # purification passes per defended row: the attack's gradient, 2 judgings
# EPS passes per SSNI row: the attack's levels, judging clean and attacked, their reported
# scores; the selector-aware attack adds its EPS gradient.
EPS_PASSES_PER_ROW = 5


@dataclass
class Work:
    """What a run sent through the diffusion network."""

    eps: list[tuple[int, int]] = field(default_factory=list)  # (images, levels) per EPS pass
    purifications: list[int] = field(default_factory=list)  # images per purification pass
    network: list[int] = field(default_factory=list)  # rows per network call

    def clear(self) -> None:
        self.eps.clear()
        self.purifications.clear()
        self.network.clear()


@pytest.fixture
def work(monkeypatch) -> Work:
    """Counts the work of a run by wrapping the three entry points every method goes through."""
    counted = Work()
    eps, network, purify = EPSNorm.expected_score, DiffusionModel.eps, Purifier.forward_with_levels

    def eps_pass(self, x, *args, **kwargs):
        counted.eps.append((x.shape[0], self.num_levels))
        return eps(self, x, *args, **kwargs)

    def network_call(self, x_t, t):
        counted.network.append(x_t.shape[0])
        return network(self, x_t, t)

    def purification(self, x, *args, **kwargs):
        counted.purifications.append(x.shape[0])
        return purify(self, x, *args, **kwargs)

    monkeypatch.setattr(EPSNorm, "expected_score", eps_pass)
    monkeypatch.setattr(DiffusionModel, "eps", network_call)
    monkeypatch.setattr(Purifier, "forward_with_levels", purification)
    return counted


def _check_small(out: Path, images: int) -> dict:
    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    assert config["smoke"] and config["runs"] == 1
    assert (config["n_images"], config["draws"], config["batch_size"]) == (images, 1, images)
    attack = config["attack"]
    assert (attack["iterations"], attack["eot"], attack["restarts"], attack["judge_draws"]) == (
        1, 1, 1, 0,
    )  # fmt: skip
    ssni = config["ssni"]
    assert (ssni["num_levels"], ssni["reference_images"]) == (LEVELS, REFERENCE_IMAGES)
    assert ssni["smoke_statistics"]
    settings = config["defence"]["settings"]
    assert settings.get("steps", STEPS) <= STEPS and settings.get("surrogate_steps", 1) <= 1
    for row in results["rows"]:
        assert row["n"] == images and row["judging"]["in_loop_draws"] == 0
        assert row["final_judging"]["draws"] == 1
    units = sorted(p.relative_to(out / "parts") for p in (out / "parts").rglob("*.pt"))
    assert len(units) == len(results["rows"])  # one batch per row
    return results


def _check_work(work: Work, results: dict, images: int, steps_per_pass: int | None) -> None:
    """The work of a smoke run against its budget. ``steps_per_pass``: the network rows one
    image sends per purification pass at any level (None for a method whose rows grow with
    the level, DAC's strided chain)."""
    rows = [row for row in results["rows"] if (row["defence"] or {}).get("method")]
    scored = [row for row in rows if row["eps_clean"] is not None]
    selector = [row for row in scored if row["key"].endswith("selector-aware")]
    widest = max(images, REFERENCE_IMAGES)
    assert work.eps[0] == (REFERENCE_IMAGES, LEVELS)  # the run's own statistics
    assert all(n <= images and levels == LEVELS for n, levels in work.eps[1:])
    assert len(work.eps) <= 1 + EPS_PASSES_PER_ROW * len(scored) + len(selector)
    assert all(n <= images for n in work.purifications)
    assert len(work.purifications) <= PASSES_PER_ROW * len(rows)
    assert max(work.network) <= widest * LEVELS
    if steps_per_pass is not None:
        eps_rows = sum(n * levels for n, levels in work.eps)
        gradients = len(rows)  # each attack gradient recomputes its chain in the backward
        chain_rows = (len(work.purifications) + gradients) * images * steps_per_pass
        assert sum(work.network) <= eps_rows + chain_rows


# Network rows per image and purification pass: DiffPure's 2 steps; GNS's 8 stages (CIFAR-10's
# 30 x 4, 50 x 2, 125 x 2) of 2 steps each.
STEPS_PER_PASS = {"diffpure": STEPS, "gns": 8 * STEPS, "dac": None}


@pytest.mark.parametrize("preset", ["digits", "cifar10-embedded"])
@pytest.mark.parametrize("method", ["diffpure", "gns", "dac"])
def test_quick_is_a_smoke_run_on_every_shipped_preset(tmp_path, work, preset, method):
    out = tmp_path / "run"
    argv = ["evaluate", "--preset", preset, "--method", method, "--quick", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    results = _check_small(out, images=2)
    stages = results["config"]["defence"]["settings"].get("stages")
    if stages:
        assert max(k for _, k in stages) <= STEPS
    _check_work(work, results, images=2, steps_per_pass=STEPS_PER_PASS[method])


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


def test_quick_is_a_smoke_run_on_a_paper_preset_with_real_layout_weights(tmp_path, work):
    """One image, and statistics of its own: a statistics file of the full T' = 20 is set
    aside (the smoke run no longer needs one at all)."""
    files = _paper_files(tmp_path)
    stats = tmp_path / "stats.safetensors"
    argv = ["--preset", "cifar10-linf", *files, "--no-progress"]
    assert main(["stats", *argv, "--n-images", "2", "--out", str(stats)]) == 0
    work.clear()
    out = tmp_path / "run"
    assert main(["evaluate", *argv, "--quick", "--stats", str(stats), "--out", str(out)]) == 0
    results = _check_small(out, images=1)
    assert results["config"]["preset"] == "cifar10-linf"
    assert {row["key"] for row in results["rows"]} >= {
        "none-pgd", "diffpure-fixed-pgd-eot", "diffpure-ssni-n-selector-aware",
    }  # fmt: skip
    _check_work(work, results, images=1, steps_per_pass=STEPS)
    work.clear()
    bare = tmp_path / "bare"
    assert main(["evaluate", *argv, "--quick", "--noise", "ssni-n", "--out", str(bare)]) == 0
    assert work.eps[0] == (REFERENCE_IMAGES, LEVELS)


def test_autoattack_first_runs_the_undefended_row_with_its_own_keywords(tmp_path):
    """The undefended row gets exactly the budget keywords of its attack (AutoAttack takes no
    restarts or max_rows); this crashed with a TypeError before the attack registry."""
    out = tmp_path / "aa"
    argv = ["evaluate", "--preset", "digits", "--quick", "--noise", "fixed"]
    assert main([*argv, "--attack", "autoattack", "--no-progress", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [row["key"] for row in rows] == ["none-autoattack", "diffpure-fixed-autoattack"]
    assert rows[0]["attack"].startswith("AutoAttack") and rows[0]["n"] == 2


def test_smoke_settings_never_reach_a_full_run():
    """Every preset: the smoke statistics, T' = 1 and the smoke image count exist only under
    quick; a full run keeps the preset's T' and reads statistics."""
    from art_ssni.presets import list_presets

    for name in list_presets():
        full, quick = resolve(name), resolve(name, quick=True)
        assert not full.ssni.smoke_statistics and full.ssni.num_levels >= 20
        assert quick.ssni.smoke_statistics and quick.ssni.num_levels == LEVELS
        assert quick.n_images == (2 if name in ("digits", "cifar10-embedded") else 1)
