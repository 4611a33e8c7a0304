"""The art-ssni command on the embedded default, at smoke-test size: the table, report and
plots, resume after a kill, two processes equal one, clear command-line errors, in-loop rows,
the sampler and time convention reaching the purifier, DAC and MANI-Pure runs, and the user's
own models through the Python entry points."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import art_ssni
from art_ssni import DiffusionModel
from art_ssni.cli import evaluate as cli_evaluate
from art_ssni.cli import main
from art_ssni.pipeline import build_rows

from tiny import TinyClassifier, TinyEpsNet, plan

SMALL = [
    "--preset",
    "digits",
    "--n-images",
    "8",
    "--batch-size",
    "4",
    "--iterations",
    "1",
    "--eot",
    "1",
    "--draws",
    "2",
    "--steps",
    "4",
    "--t-star",
    "20",
    "--noise",
    "fixed,ssni-n",
    "--attack",
    "pgd-eot,selector-aware",
    "--judge-draws",
    "0",
    "--no-progress",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "art_ssni", *args],
        capture_output=True,
        text=True,
        env=ENV,
        **kwargs,
    )


def _rows(out: Path):
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "reference"
    assert main(["evaluate", *SMALL, "--out", str(out)]) == 0
    return out


def test_evaluate_writes_table_report_and_plots(reference, capsys):
    rows = _rows(reference)
    assert [r["key"] for r in rows] == [
        "none-pgd",
        "diffpure-fixed-pgd-eot",
        "diffpure-ssni-n-pgd-eot",
        "diffpure-ssni-n-selector-aware",
    ]
    assert {p.name for p in reference.iterdir()} >= {
        "results.json",
        "results.md",
        "accuracy.png",
        "levels.png",
        "eps_norms.png",
    }
    fixed = rows[1]
    # levels: draws x images, the level of every image in each judging pass
    assert fixed["gradient"] == "full" and fixed["levels_clean"] == [[20] * 8] * 2
    assert rows[0]["levels_clean"] is None and rows[0]["gradient"] == "n/a"
    for row in rows:
        assert 0 <= row["robust"]["worst"] <= row["robust"]["vote"] + 1e-9
        assert row["max_delta_linf"] <= 0.2 + 1e-6
    assert len(rows[2]["eps_clean"]) == 8


def test_resume_after_kill_gives_the_same_results(reference, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "art_ssni", "evaluate", *SMALL, "--out", str(out)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("parts/*/*.pt"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("parts/*/*.pt")))
    assert 2 <= done_before < 8, "the run should be interrupted part-way"
    assert not (out / "results.json").exists()
    result = _run(["evaluate", *SMALL, "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert _rows(out) == _rows(reference)
    assert len(list(out.glob("parts/*/*.pt"))) == 8


def test_two_processes_equal_one(reference, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "torchrun"
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "art_ssni",
            "evaluate",
            *SMALL,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _rows(out) == _rows(reference)
    assert json.loads((out / "results.json").read_text())["run"]["processes"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--preset", "mnist"], "argument --preset: invalid choice: 'mnist'"),
        (
            ["evaluate", "--preset", "digits", "--eps", "-1"],
            "expected a number in (0, 1], got '-1'",
        ),
        (
            ["evaluate", "--preset", "digits", "--eps", "abc"],
            "expected a number in (0, 1], got 'abc'",
        ),
        (["evaluate", "--preset", "digits", "--noise", "ssni-x"], "unknown ssni-x"),
        (["evaluate", "--preset", "cifar10-linf"], "needs --diffusion-checkpoint"),
        (
            [
                "evaluate",
                "--preset",
                "cifar10-linf",
                "--diffusion-checkpoint",
                "/nope/ckpt.pth",
                "--classifier-checkpoint",
                "/nope/Standard.pt",
                "--data-dir",
                "/nope",
            ],
            "/nope",
        ),
        (
            ["evaluate", "--preset", "digits", "--stats", "/nope/stats.safetensors"],
            "no such file or folder",
        ),
        (["evaluate", "--preset", "digits", "--criterion", "mean"], "unknown mean"),
    ],
)
def test_command_line_errors_are_clear(args, message):
    result = _run(args, timeout=300)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_resuming_with_other_settings_is_refused(reference, tmp_path):
    result = _run(["evaluate", *SMALL, "--eps", "0.1", "--out", str(reference)], timeout=300)
    assert result.returncode == 2 and "config.attack.eps changed" in result.stderr


def test_in_loop_flags_add_rows_beside_the_one_shot_rows():
    config, setup = plan(
        [
            "evaluate",
            "--preset",
            "digits",
            "--noise",
            "fixed",
            "--attack",
            "pgd-eot,apgd-eot",
            "--judge-draws",
            "4",
        ]
        + ["--criterion", "worst,vote", "--restarts", "2", "--device", "cpu"]
    )
    rows = build_rows(config, setup)
    assert [r.key for r in rows] == [
        "none-pgd",
        "diffpure-fixed-pgd-eot",
        "diffpure-fixed-pgd-eot-worst",
        "diffpure-fixed-pgd-eot-vote",
        "diffpure-fixed-apgd-eot",
        "diffpure-fixed-apgd-eot-worst",
        "diffpure-fixed-apgd-eot-vote",
    ]
    assert (
        rows[2].attack_kwargs["judge_draws"] == 4 and rows[3].attack_kwargs["criterion"] == "vote"
    )
    assert "judge_draws" not in rows[1].attack_kwargs
    assert all(r.attack_kwargs["restarts"] == 2 for r in rows)
    assert all(r.attack_kwargs["max_rows"] == 256 for r in rows)
    assert "step" not in rows[4].attack_kwargs and "step" in rows[1].attack_kwargs


def _own_models():
    """A user's 3x32x32 diffusion model, classifier and two images (tiny networks)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.randint(0, 10, (2,), generator=g)
    diffusion = DiffusionModel(TinyEpsNet(), image_shape=(3, 32, 32), name="mine")
    return diffusion, TinyClassifier(size=32), x, y


TINY_RUN = dict(n_images=2, batch_size=2, iterations=1, eot=1, draws=1, steps=2)
TINY_RUN.update(surrogate_steps=1, progress=False)


def test_own_models_without_a_preset_need_eps_and_t_star(tmp_path):
    """With the user's own models and no preset, the evaluation refuses to guess a budget (the
    digits toy's eps 0.2 and t* 60 fit no other data set) until eps and t_star are given; the
    cifar10-linf protocol then supplies the rest and the given eps is the one recorded."""
    diffusion, classifier, x, y = _own_models()
    own = dict(diffusion=diffusion, classifier=classifier, x=x, y=y)
    with pytest.raises(ValueError, match="preset.*explicit eps and t_star"):
        art_ssni.evaluate(**own, out=tmp_path / "a")
    with pytest.raises(ValueError, match="preset.*explicit t_star"):
        art_ssni.evaluate(**own, out=tmp_path / "a", eps=8 / 255)
    with pytest.raises(ValueError, match="preset.*explicit eps"):
        cli_evaluate(diffusion, classifier, x, y, out=tmp_path / "b", t_star=5)
    assert not (tmp_path / "a" / "results.json").exists()

    api = art_ssni.evaluate(
        **own, out=tmp_path / "api", eps=8 / 255, t_star=5, noises="fixed", attacks="pgd-eot",
        baseline=False, **TINY_RUN,
    )  # fmt: skip
    cli = cli_evaluate(
        diffusion, classifier, x, y, out=tmp_path / "cli", eps=8 / 255, t_star=5,
        noise="fixed", attack="pgd-eot", no_baseline=True, **TINY_RUN,
    )  # fmt: skip
    for name, results in (("api", api), ("cli", cli)):
        recorded = json.loads((tmp_path / name / "results.json").read_text())["config"]
        assert recorded == results["config"]
        assert recorded["attack"]["eps"] == pytest.approx(8 / 255)
        assert recorded["attack"]["eps"] != pytest.approx(0.2)
        assert recorded["defence"]["settings"]["t_star"] == 5
        assert recorded["preset"] == "cifar10-linf" and recorded["dataset"] == "user"
        assert [row["key"] for row in results["rows"]] == ["diffpure-fixed-pgd-eot"]
        assert results["rows"][0]["max_delta_linf"] <= 8 / 255 + 1e-6


def test_cli_sampler_and_convention_reach_the_purifier():
    from art_ssni.pipeline import build_rows, prepare

    config, setup = prepare(
        "digits", noises="fixed", attacks="pgd-eot", sampler="sde", judge_draws=0
    )
    rows = build_rows(config, setup)
    defended = [row for row in rows if row.model.purifier is not None]
    assert [row.model.purifier.sampler for row in defended] == ["sde"]
    assert defended[0].method.endswith("[SDE]")
    config, setup = prepare("digits", convention="diffpure-sde")
    assert setup.diffusion.schedule.continuous
    with pytest.raises(ValueError, match="do not belong to this setup"):
        # the shipped statistics belong to the as-trained convention
        build_rows(config, setup)


@pytest.mark.parametrize("method", ["dac", "mani-pure"])
def test_command_line_runs_both_methods_on_the_embedded_default(tmp_path, method):
    import json

    from art_ssni.cli import main

    out = tmp_path / method
    args = [
        "evaluate",
        "--preset",
        "digits",
        "--method",
        method,
        "--n-images",
        "2",
        "--batch-size",
        "2",
    ]
    args += ["--iterations", "1", "--eot", "1", "--draws", "1", "--steps", "4"]
    args += ["--noise", "fixed", "--attack", "pgd-eot", "--no-progress", "--no-baseline"]
    args += ["--judge-draws", "0"]
    assert main([*args, "--out", str(out)]) == 0
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["method"] == ("DAC" if method == "dac" else "MANI-Pure") + " (t*=60)"


def test_network_rows_flag_reaches_the_compute_config() -> None:
    config, _ = plan(["evaluate", "--preset", "digits", "--network-rows", "16"])
    assert config.compute.network_rows == 16
    default, _ = plan(["evaluate", "--preset", "digits"])
    assert default.compute.network_rows == 65_536 // (8 * 8)
