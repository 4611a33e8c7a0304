"""Report rendering: console table, Markdown, JSON and PNG plots (hand-made results, CPU)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from art_ssni.evaluation.report import combine_runs, format_table, to_markdown, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _accuracies(single: float, vote: float, mean: float, worst: float) -> dict[str, float]:
    return {"single": single, "vote": vote, "mean": mean, "worst": worst}


def _results() -> dict:
    return {
        "config": {
            "dataset": "cifar10",
            "preset": "smoke",
            "n_images": 8,
            "draws": 5,
            "seed": 0,
            "attack": {"norm": "Linf", "eps": 8 / 255, "iterations": 10, "eot": 4, "step": 2 / 255},
            "machine": "test-cpu",
            "extra": "kept",
        },
        "rows": [
            {
                "method": "No defence",
                "attack": "PGD-EOT",
                "gradient": "n/a",
                "n": 8,
                "clean": _accuracies(0.875, 0.875, 0.875, 0.875),
                "robust": _accuracies(0.0, 0.0, 0.0, 0.0),
                "levels_clean": None,
                "levels_adv": None,
                "eps_clean": None,
                "eps_adv": None,
                "seconds_per_image": 0.125,
            },
            {
                "method": "DiffPure + SSNI-N",
                "attack": "selector-aware PGD-EOT",
                "gradient": "surrogate",
                "n": 8,
                "clean": _accuracies(0.75, 0.5, 0.6, 0.25),
                "robust": _accuracies(0.5, 0.375, 0.4, 0.125),
                "levels_clean": [[10, 20, 30, 40], [10, 20, 30, 40]],  # draws x images
                "levels_adv": [[50, 50, 50, 50], [50, 50, 50, 50]],
                "eps_clean": [1.0, 1.5, 2.0, 2.5],
                "eps_adv": [3.0, 3.25, 3.5, 4.0],
                "seconds_per_image": 12.5,
            },
        ],
    }


def _line(text: str, method: str) -> str:
    return next(line for line in text.splitlines() if method in line)


def test_table_shows_percentages_levels_and_dashes():
    table = format_table(_results())
    header = table.splitlines()[0]
    for column in ("method", "attack", "clean (vote)", "robust vote", "robust worst-of-5"):
        assert column in header
    for column in ("gradient", "levels clean", "levels adv", "s/img"):
        assert column in header

    ssni = _line(table, "SSNI-N").split()
    assert "50.0" in ssni and "37.5" in ssni and "12.5" in ssni  # clean vote, robust vote/worst
    assert "25.0±11.2" in ssni  # mean 25, population std sqrt(125) = 11.18
    assert "50.0±0.0" in ssni
    assert "12.50" in ssni and "surrogate" in ssni

    plain = _line(table, "No defence")
    assert "87.5" in plain and "0.0" in plain
    assert plain.split()[-3:-1] == ["-", "-"]  # no levels, clean and adversarial

    widths = {len(line) for line in table.splitlines()[:2]}
    assert len(widths) == 1  # header and rule line up


def test_markdown_has_config_table_and_column_notes():
    md = to_markdown(_results())
    assert "cifar10" in md and "test-cpu" in md and "kept" in md
    assert "eps = 8/255" in md and "10 iterations" in md and "EOT over 4 draws" in md
    header = (
        "| method | attack | clean (vote) | robust vote | clean worst-of-5 | robust worst-of-5 "
        "| gradient | levels clean | levels adv | s/img |"
    )
    assert header in md
    assert "|---|---|---:|---:|---:|---:|---|---:|---:|---:|" in md
    row = _line(md, "SSNI-N")
    assert row.startswith("| DiffPure + SSNI-N |") and "| 25.0±11.2 |" in row
    assert "| 50.0 | 37.5 | 25.0 | 12.5 | surrogate |" in row  # clean worst beside robust worst
    assert "| - | - |" in _line(md, "No defence")
    assert "## What each column means" in md
    assert "- **Convergence:** not checked in this run; `art-ssni sanity`" in md
    checked = {
        "iterations": 10,
        "robust_vote": 0.5,
        "doubled_iterations": 20,
        "doubled_robust_vote": 0.375,
        "images": 8,
        "ci95": [0.2152, 0.7848],
        "converged": True,
    }
    md = to_markdown({**_results(), "convergence": checked})
    assert (
        "- **Convergence:** converged: robust vote 50.0 % at 10 iterations, 37.5 % at 20 on "
        "the same 8 images (95 % interval [21.5, 78.5])"
    ) in md
    for phrase in ("majority vote", "every one of N draws", "single / mean", "gradient mode"):
        assert phrase in md
    assert "noise level t" in md and "wall seconds per image" in md


def test_write_report_writes_valid_files_atomically(tmp_path: Path):
    results = _results()
    original = copy.deepcopy(results)
    written = write_report(results, tmp_path / "out")

    assert set(written) == {"json", "markdown", "eps_norms", "levels", "accuracy"}
    names = {"results.json", "results.md", "eps_norms.png", "levels.png", "accuracy.png"}
    assert {path.name for path in written.values()} == names
    assert set(os.listdir(tmp_path / "out")) == names  # no temp files left behind
    for key in ("eps_norms", "levels", "accuracy"):
        data = written[key].read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    assert json.loads(written["json"].read_text()) == original
    assert written["markdown"].read_text() == to_markdown(original)
    assert results == original


def test_write_report_skips_plots_without_data(tmp_path: Path):
    results = _results()
    results["rows"] = results["rows"][:1]
    written = write_report(results, tmp_path)
    assert set(written) == {"json", "markdown", "accuracy"}
    assert not (tmp_path / "levels.png").exists() and not (tmp_path / "eps_norms.png").exists()

    results["rows"] = []
    assert set(write_report(results, tmp_path / "empty")) == {"json", "markdown"}


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch):
    (tmp_path / "results.json").write_text("old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report(_results(), tmp_path)
    assert os.listdir(tmp_path) == ["results.json"]
    assert (tmp_path / "results.json").read_text() == "old"


def test_markdown_takes_seed_and_machine_from_the_run():
    results = _results()
    results["run"] = {"seed": 3, "processes": 2, "machine": "run-cpu"}
    md = to_markdown(results)
    assert "- **Seed:** 3" in md and "- **Machine:** run-cpu" in md
    assert "test-cpu" not in md


def test_combine_runs_mean_and_sample_std():
    def run(clean, robust):
        row = {"key": "r", "method": "m", "attack": "a", "seconds_per_image": 1.0}
        row["clean"] = {"vote": clean, "worst": clean}
        row["robust"] = {"vote": robust, "worst": robust}
        row["robust_ci95"] = {"vote": [0, 1]}
        return {"config": {"draws": 2}, "rows": [row]}

    combined = combine_runs([run(0.5, 0.25), run(0.75, 0.5), run(1.0, 0.75)])
    row = combined["rows"][0]
    assert combined["config"]["runs"] == 3
    assert row["clean"]["vote"] == pytest.approx(0.75)
    assert row["runs_std"]["robust"]["vote"] == pytest.approx(0.25)  # sample std of .25/.5/.75
    assert row["per_run"]["robust"]["worst"] == [0.25, 0.5, 0.75]
    assert "robust_ci95" not in row
    assert "75.0±25.0" in to_markdown(combined)
