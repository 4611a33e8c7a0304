"""What the command writes and prints beyond one run: --runs N (every run and their mean ± std,
each resumable), the baseline row under the asked attack with tau recorded, --save-adversarial
with confidence intervals in the results, --version and --help."""

import json
import math

import pytest
import torch

from art_ssni.cli import main
from art_ssni.evaluation.accuracy import wilson_interval
from art_ssni.pipeline import build_rows

from tiny import plan

SMALL = [
    "--preset",
    "digits",
    "--n-images",
    "4",
    "--batch-size",
    "4",
    "--iterations",
    "1",
    "--eot",
    "1",
]
SMALL += ["--draws", "2", "--steps", "2", "--t-star", "5", "--no-progress"]
SMALL += ["--noise", "fixed", "--attack", "pgd-eot"]


# --runs N writes every run and their mean ± std, and each run resumes


def test_runs_write_each_run_and_the_mean(tmp_path):
    out = tmp_path / "runs"
    assert main(["evaluate", *SMALL, "--runs", "2", "--out", str(out)]) == 0
    runs = [json.loads((out / f"run_{k}" / "results.json").read_text()) for k in range(2)]
    assert [r["run"]["seed"] for r in runs] == [0, 1]
    assert [r["config"]["seed"] for r in runs] == [0, 0]  # the configured seed of the set
    combined = json.loads((out / "results.json").read_text())
    assert combined["config"]["runs"] == 2
    for index, row in enumerate(combined["rows"]):
        values = [r["rows"][index]["robust"]["vote"] for r in runs]
        assert row["robust"]["vote"] == pytest.approx(sum(values) / 2)
        assert row["runs_std"]["robust"]["vote"] == pytest.approx(
            abs(values[0] - values[1]) / math.sqrt(2)
        )
    assert "over 2 runs" in (out / "results.md").read_text()
    part = out / "run_1" / "parts" / "none-pgd" / "batch_00000.pt"
    stamp = part.stat().st_mtime_ns
    assert main(["evaluate", *SMALL, "--runs", "2", "--out", str(out)]) == 0
    assert part.stat().st_mtime_ns == stamp  # each run resumes
    assert (out / ".art-ssni-run").is_file()  # so that --overwrite may clear the whole set


# reports and command-line extras


def test_baseline_runs_under_the_asked_attack_and_tau_is_recorded(tmp_path):
    config, setup = plan(
        [
            "evaluate",
            "--preset",
            "digits",
            "--attack",
            "bpda-eot",
            "--noise",
            "ssni-n",
            "--out",
            str(tmp_path),
        ]
    )
    assert config.ssni.tau == setup.stats.std  # the statistics' spread, recorded as run
    assert config.ssni.bias_for("ssni-n") == 0
    rows = build_rows(config, setup)
    assert (rows[0].key, rows[0].attack) == ("none-bpda-eot", "bpda-eot")
    policy = rows[1].model.purifier.noise
    assert policy.tau == setup.stats.std and policy.bias == 0
    assert f"tau={setup.stats.std:g}" in rows[1].model.describe()["noise"]  # in results.json


def test_save_adversarial_and_intervals_in_results(tmp_path):
    out = tmp_path / "adv"
    assert main(["evaluate", *SMALL, "--save-adversarial", "--out", str(out)]) == 0
    saved = torch.load(out / "adversarial" / "none-pgd.pt", weights_only=True)
    results = json.loads((out / "results.json").read_text())
    row = results["rows"][0]
    assert saved["x_adv"].shape == (4, 1, 8, 8) and saved["y"].shape == (4,)
    from art_ssni.data.digits import load_digits

    x, y = load_digits("test")
    index = json.loads((out / "config.json").read_text())["inputs"]["indices"]
    assert torch.equal(saved["y"], y[index])
    delta = float((saved["x_adv"] - x[index]).abs().max())
    assert delta == pytest.approx(row["max_delta_linf"]) and 0 < delta <= 0.2 + 1e-6
    hits = round(row["robust"]["vote"] * 4)
    assert row["robust_ci95"]["vote"] == list(wilson_interval(hits, 4))
    assert "95% confidence intervals" in (out / "results.md").read_text()


def test_version_and_help_list_choices(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("art-ssni ")
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("cifar10-linf", "imagenet-linf", "gns", "selector-aware", "autoattack"):
        assert name in text
