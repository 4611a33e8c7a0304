"""The plots a command writes: accuracy.png draws each accuracy with its 95 % Wilson interval
(mean ± std over runs for combined runs) and stays readable at 16 rows (one band of bars per
row, the figure growing with them); eps_norms.png shows the clean reference statistics as a
mean ± std band; a run records those statistics in results.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from art_ssni.cli import main
from art_ssni.evaluation.accuracy import wilson_interval
from art_ssni.evaluation.report import _accuracy_figure, _histograms, write_report


def _row(index: int, n: int = 40) -> dict:
    rng = np.random.default_rng(index)
    clean, vote, worst = sorted(rng.integers(0, n + 1, 3).tolist(), reverse=True)
    interval = {"vote": list(wilson_interval(vote, n)), "worst": list(wilson_interval(worst, n))}
    return {
        "key": f"row-{index}",
        "method": f"DiffPure + policy {index}",
        "attack": "selector-aware PGD-EOT, in-loop N=8 worst (Wor.Rob)",
        "clean": {"vote": clean / n},
        "robust": {"vote": vote / n, "worst": worst / n},
        "clean_ci95": {"vote": list(wilson_interval(clean, n))},
        "robust_ci95": interval,
        "eps_clean": rng.normal(10, 1, n).tolist(),
        "eps_adv": rng.normal(14, 2, n).tolist(),
    }


def _error_segments(figure) -> list[np.ndarray]:
    """Per bar series, the (low, high) ends of its horizontal error bars, in row order."""
    from matplotlib.container import ErrorbarContainer

    (ax,) = figure.axes
    ends = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            segments = container.lines[2][0].get_segments()
            ends.append(np.array([[s[0][0], s[1][0]] for s in segments]))
    return ends


def test_accuracy_plot_has_wilson_intervals_and_room_for_16_rows():
    rows = [_row(i) for i in range(16)]
    figure = _accuracy_figure(rows, draws=8)
    clean, vote, worst = _error_segments(figure)
    for ends, split, aggregation in (
        (clean, "clean", "vote"),
        (vote, "robust", "vote"),
        (worst, "robust", "worst"),
    ):
        expected = [100 * np.array(r[f"{split}_ci95"][aggregation]) for r in rows]
        np.testing.assert_allclose(ends, expected, atol=1e-9)
    width, height = figure.get_size_inches()
    assert height / len(rows) >= 0.55 and width <= 16  # each row keeps its own band
    (ax,) = figure.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    top = labels[int(np.argmax(ax.get_yticks()))]
    assert top.startswith("DiffPure + policy 0 |") and len(labels) == 16  # first row on top
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 8


def test_accuracy_plot_of_combined_runs_shows_the_std_over_runs():
    row = _row(1)
    for key in ("clean_ci95", "robust_ci95"):
        row.pop(key)
    row["runs_std"] = {"clean": {"vote": 0.02}, "robust": {"vote": 0.05, "worst": 0.01}}
    clean, vote, worst = _error_segments(_accuracy_figure([row], draws=4))
    np.testing.assert_allclose(vote[0], 100 * row["robust"]["vote"] + np.array([-5.0, 5.0]))
    np.testing.assert_allclose(worst[0], 100 * row["robust"]["worst"] + np.array([-1.0, 1.0]))


def test_eps_norm_plot_shows_the_reference_band():
    reference = {"mean": 9.5, "std": 0.75}
    figure = _histograms([_row(0), _row(1)], "eps_clean", "eps_adv", "EPS norm", False, reference)
    for ax in figure.axes[:2]:
        handles, labels = ax.get_legend_handles_labels()
        band = handles[labels.index("reference mean ± std")]  # a Rectangle across the axes
        assert (band.get_x(), band.get_x() + band.get_width()) == pytest.approx((8.75, 10.25))
    without = _histograms([_row(0)], "eps_clean", "eps_adv", "EPS norm", False)
    assert "reference mean ± std" not in without.axes[0].get_legend_handles_labels()[1]


def test_a_run_records_the_reference_statistics_and_plots_them(tmp_path):
    from art_ssni.models.zoo import zoo_root
    from art_ssni.noise import ReferenceStats

    out = tmp_path / "run"
    args = ["evaluate", "--preset", "digits", "--n-images", "2", "--batch-size", "2"]
    args += ["--iterations", "1", "--eot", "1", "--draws", "1", "--steps", "2", "--t-star", "5"]
    args += ["--noise", "ssni-n", "--attack", "pgd-eot", "--judge-draws", "0", "--no-progress"]
    assert main([*args, "--no-baseline", "--out", str(out)]) == 0
    recorded = json.loads((out / "results.json").read_text())["reference"]
    stats = ReferenceStats.load(zoo_root() / "digits_stats.safetensors")
    assert recorded["mean"] == pytest.approx(stats.mean) and recorded["std"] == pytest.approx(
        stats.std
    )
    assert (out / "eps_norms.png").stat().st_size > 0
    written = write_report(json.loads((out / "results.json").read_text()), tmp_path / "again")
    assert {"eps_norms", "accuracy"} <= set(written)
