"""The art-ssni command on the embedded default, at smoke-test size."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from art_ssni.cli import main

SMALL = [
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
    assert fixed["gradient"] == "full" and fixed["levels_clean"] == [20] * 8
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
    assert json.loads((out / "results.json").read_text())["config"]["processes"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--preset", "mnist"], "unknown preset 'mnist'"),
        (["evaluate", "--eps", "-1"], "epsilon must lie in"),
        (["evaluate", "--eps", "abc"], "epsilon must be a number"),
        (["evaluate", "--noise", "ssni-x"], "unknown ssni-x"),
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
        (["evaluate", "--stats", "/nope/stats.safetensors"], "no statistics file"),
        (["evaluate", "--criterion", "mean"], "unknown mean"),
    ],
)
def test_command_line_errors_are_clear(args, message):
    result = _run(args, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_resuming_with_other_settings_is_refused(reference, tmp_path):
    result = _run(["evaluate", *SMALL, "--eps", "0.1", "--out", str(reference)], timeout=300)
    assert result.returncode == 2 and "another configuration" in result.stderr


def test_in_loop_flags_add_rows_beside_the_one_shot_rows():
    from art_ssni.cli import _settings, build_parser, build_rows, load_setup

    args = build_parser().parse_args(
        ["evaluate", "--noise", "fixed", "--attack", "pgd-eot,apgd-eot", "--judge-draws", "4"]
        + ["--criterion", "worst,vote", "--restarts", "2", "--device", "cpu"]
    )
    setup = load_setup(args)
    rows = build_rows(args, setup, _settings(args, setup))
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
