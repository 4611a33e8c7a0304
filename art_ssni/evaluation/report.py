"""Turn an evaluation results dict into a console table, Markdown, JSON and PNG plots.

The results schema (``{"config": {...}, "rows": [{...}, ...]}``) is described in
:mod:`.results`. Every file is written atomically (:mod:`art_ssni.io`). Levels are
summarised as mean ± population standard deviation over every image in every judging pass.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_bytes, atomic_write_text
from .results import combine_runs

__all__ = ["COLUMN_NOTES", "combine_runs", "format_table", "to_markdown", "write_report"]

COLUMN_NOTES: tuple[tuple[str, str], ...] = (
    ("method", "the defence (no defence, DiffPure at a fixed t*, or DiffPure with SSNI)."),
    ("attack", "the adaptive attack that produced the adversarial inputs."),
    (
        "in-loop N (Wor.Rob / MV.Rob)",
        "the attack judged every iterate over N fresh draws and kept, per sample, the one that "
        "fooled the criterion (worst: any draw wrong; vote: the majority label wrong), as "
        "DiffBreak names them, and among those (or, when none fooled it, among all) the one "
        "wrong in the most draws, then the one with the highest loss; read Wor.Rob in the "
        "worst-of-N column and MV.Rob in the vote column, beside the clean worst-of-N of the "
        "same draws. Rows without it are one-shot (the last iterate; APGD: its best-loss "
        "iterate). The final judging always uses the table's own N draws, independent of the "
        "attack's.",
    ),
    (
        "clean (vote)",
        "accuracy on clean inputs passed through the same defence, majority vote over N draws.",
    ),
    ("robust vote", "accuracy on adversarial inputs, majority vote of the labels over N draws."),
    (
        "clean worst-of-N",
        "a clean input counts only if it is classified correctly in every one of the same N "
        "draws: the ceiling a robust worst-of-N number is read against.",
    ),
    (
        "robust worst-of-N",
        "an adversarial input counts only if it is classified correctly in every one of N draws.",
    ),
    (
        "single / mean",
        "the first draw alone, and the mean of the per-draw accuracies; both are in "
        "results.json, not in this table.",
    ),
    ("gradient", "the purifier's gradient mode used by the attack (full, surrogate, bpda, n/a)."),
    (
        "levels clean / levels adv",
        "the noise level t the defence chose per sample in the judging passes, as mean ± "
        "standard deviation over the clean / adversarial inputs and the N draws; - where the "
        "defence chooses none.",
    ),
    ("s/img", "wall seconds per image for the attack plus the evaluation."),
)

_RIGHT = (False, False, True, True, True, True, False, True, True, True)


def _percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100.0 * float(value):.1f}"


def _flat(values: Sequence[Any]) -> np.ndarray:
    """Per-sample values (a list, or one list per draw) as one flat float array."""
    return np.asarray(values, dtype=float).ravel()


def _spread(values: Sequence[Any] | None) -> str:
    if values is None or len(values) == 0:
        return "-"
    array = _flat(values)
    return f"{array.mean():.1f}±{array.std():.1f}"


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _accuracy(row: Mapping[str, Any], split: str, aggregation: str) -> Any:
    return (row.get(split) or {}).get(aggregation)


def _headers(results: Mapping[str, Any]) -> list[str]:
    draws = (results.get("config") or {}).get("draws")
    n = draws if draws else "N"
    return [
        "method",
        "attack",
        "clean (vote)",
        "robust vote",
        f"clean worst-of-{n}",
        f"robust worst-of-{n}",
        "gradient",
        "levels clean",
        "levels adv",
        "s/img",
    ]


def _cells(row: Mapping[str, Any]) -> list[str]:
    return [
        str(row.get("method", "")),
        str(row.get("attack", "")),
        _percent(_accuracy(row, "clean", "vote")),
        _percent(_accuracy(row, "robust", "vote")),
        _percent(_accuracy(row, "clean", "worst")),
        _percent(_accuracy(row, "robust", "worst")),
        str(row.get("gradient", "n/a")),
        _spread(row.get("levels_clean")),
        _spread(row.get("levels_adv")),
        _seconds(row.get("seconds_per_image")),
    ]


def format_table(results: Mapping[str, Any]) -> str:
    """Aligned plain-text table of the results rows (accuracies in percent)."""
    headers = _headers(results)
    body = [_cells(row) for row in results.get("rows", [])]
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, _RIGHT)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(cells) for cells in body)])


def _fraction(value: Any) -> str:
    number = float(value)
    scaled = number * 255.0
    if number > 0 and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{number:g}"


def _attack_settings(attack: Mapping[str, Any]) -> str:
    norm = attack.get("norm", "?")
    size = _fraction if norm == "Linf" else (lambda v: f"{float(v):g}")
    parts = [str(norm)]
    if "eps" in attack:
        parts.append(f"eps = {size(attack['eps'])}")
    if "step" in attack:
        parts.append(f"step = {size(attack['step'])}")
    if "iterations" in attack:
        parts.append(f"{attack['iterations']} iterations")
    if "eot" in attack:
        parts.append(f"EOT over {attack['eot']} draws")
    parts.extend(
        f"{key} = {value}"
        for key, value in attack.items()
        if key not in {"norm", "eps", "step", "iterations", "eot"}
    )
    return ", ".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(results: Mapping[str, Any]) -> str:
    """Markdown report: configuration header, results table and column explanations."""
    config = results.get("config") or {}
    lines = ["# Adversarial purification results", ""]
    if config.get("smoke"):
        lines += [
            "> **Smoke run (`--quick`)**: few images, iterations and draws; it checks that the "
            "pipeline runs, and its accuracies are not results.",
            "",
        ]
    run = results.get("run") or {}
    known = [
        ("Dataset", config.get("dataset")),
        ("Preset", config.get("preset")),
        ("Images", config.get("n_images")),
        ("Draws (N)", config.get("draws")),
        ("Seed", run.get("seed", config.get("seed"))),
        ("Attack", _attack_settings(config["attack"]) if config.get("attack") else None),
        ("Machine", run.get("machine", config.get("machine"))),
    ]
    lines += [f"- **{name}:** {value}" for name, value in known if value is not None]
    lines.append(f"- **Convergence:** {_convergence(results.get('convergence'))}")
    shown = {"dataset", "preset", "n_images", "draws", "seed", "attack", "machine", "smoke"}
    lines += [f"- **{key}:** {value}" for key, value in config.items() if key not in shown]

    headers = _headers(results)
    lines += ["", "## Results", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
    lines.append("|" + "|".join("---:" if right else "---" for right in _RIGHT) + "|")
    for row in results.get("rows", []):
        lines.append("| " + " | ".join(_md_cell(c) for c in _cells(row)) + " |")

    lines += _interval_lines(results.get("rows", []))
    lines += _ensemble_lines(results.get("rows", []), config.get("draws"))
    lines += _runs_lines(results.get("rows", []), config.get("runs"))
    lines += ["", "## What each column means", ""]
    lines += [f"- **{name}**: {text}" for name, text in COLUMN_NOTES]
    lines.append(
        f"- Accuracies are percentages of the {config.get('n_images', 'evaluated')} images; "
        f"N = {config.get('draws', 'the number of')} draws of the randomised defence."
    )
    return "\n".join(lines) + "\n"


def _convergence(block: Mapping[str, Any] | None) -> str:
    """Whether the budget converged (:func:`art_ssni.evaluation.sanity.convergence`)."""
    if not block:
        return (
            "not checked in this run; `art-ssni sanity` with the same budget compares its "
            "robust accuracy with that at twice the iterations on the same images"
        )
    verdict = "converged" if block["converged"] else "NOT converged"
    return (
        f"{verdict}: robust vote {_percent(block['robust_vote'])} % at {block['iterations']} "
        f"iterations, {_percent(block['doubled_robust_vote'])} % at "
        f"{block['doubled_iterations']} on the same {block['images']} images (95 % interval "
        f"{_interval(block['ci95'])})"
    )


def _interval(bounds: Sequence[float] | None) -> str:
    if not bounds:
        return "-"
    return f"[{100.0 * float(bounds[0]):.1f}, {100.0 * float(bounds[1]):.1f}]"


def _interval_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """95 % Wilson intervals (over the images) of each row's vote and worst-of-N accuracy."""
    chosen = [row for row in rows if row.get("robust_ci95")]
    if not chosen:
        return []
    lines = ["", "## 95% confidence intervals (Wilson, over the images)", ""]
    lines.append(
        "| method | attack | clean (vote) | robust vote | clean worst-of-N | robust worst-of-N |"
    )
    lines.append("|---|---|---:|---:|---:|---:|")
    for row in chosen:
        clean = row.get("clean_ci95") or {}
        cells = [
            str(row.get("method", "")),
            str(row.get("attack", "")),
            _interval(clean.get("vote")),
            _interval(row["robust_ci95"].get("vote")),
            _interval(clean.get("worst")),
            _interval(row["robust_ci95"].get("worst")),
        ]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return lines


def _count(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _ensemble_lines(rows: Sequence[Mapping[str, Any]], draws: Any) -> list[str]:
    """Per ensemble row, what each attack did: the images it ran on, those it was the first
    to break under the vote and in at least one draw, and those whose kept example it made."""
    chosen = [row for row in rows if row.get("ensemble")]
    if not chosen:
        return []
    n = chosen[0]["ensemble"].get("judging_draws", draws or "N")
    lines = ["", "## Ensemble: the images each attack broke", ""]
    lines.append(
        f"Inside the ensemble every attack's candidates are judged over {n} fresh draws; an "
        "image leaves the ensemble once an attack breaks its majority vote, so later attacks "
        "run on fewer images. The robust columns above judge the kept examples again over the "
        "table's own draws."
        + (" Counts are means over the runs." if chosen[0]["ensemble"].get("runs") else "")
    )
    lines += ["", f"| method | attack | ran on | broke vote | broke worst-of-{n} | kept |"]
    lines.append("|---|---|---:|---:|---:|---:|")
    for row in chosen:
        for attack in row["ensemble"]["per_attack"]:
            cells = [str(row.get("method", "")), attack["attack"]]
            cells += [_count(attack[k]) for k in ("ran_on", "broke_vote", "broke_worst", "kept")]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    lines.append("")
    for row in chosen:
        record = row["ensemble"]
        lines.append(
            f"- {row.get('method', '')}: no attack broke {_count(record['unbroken_vote'])} of "
            f"{row.get('n', '?')} images under the vote, {_count(record['unbroken_worst'])} in "
            f"every one of the {n} draws."
        )
    return lines


def _runs_lines(rows: Sequence[Mapping[str, Any]], runs: Any) -> list[str]:
    """Mean ± sample standard deviation over repeated runs (the paper's protocol)."""
    chosen = [row for row in rows if row.get("runs_std")]
    if not chosen or not runs:
        return []
    lines = ["", f"## Mean ± standard deviation over {runs} runs", ""]
    lines.append("| method | attack | clean (vote) | robust vote | robust worst-of-N |")
    lines.append("|---|---|---:|---:|---:|")
    for row in chosen:
        std = row["runs_std"]
        cells = [str(row.get("method", "")), str(row.get("attack", ""))]
        for split, aggregation in (("clean", "vote"), ("robust", "vote"), ("robust", "worst")):
            mean = _accuracy(row, split, aggregation)
            spread = std.get(split, {}).get(aggregation)
            cells.append(f"{100.0 * mean:.1f}±{100.0 * spread:.1f}")
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return lines


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _has(row: Mapping[str, Any], *keys: str) -> bool:
    return any(row.get(key) is not None and len(row.get(key)) > 0 for key in keys)


def _title(row: Mapping[str, Any]) -> str:
    return f"{row.get('method', '')}\n{row.get('attack', '')}"


def _panels(count: int) -> Any:
    from matplotlib.figure import Figure

    cols = min(3, count)
    rows = math.ceil(count / cols)
    figure = Figure(figsize=(4.2 * cols, 3.3 * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return figure, axes


def _bins(values: np.ndarray, integer: bool) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if integer and high - low <= 60:
        return np.arange(low - 0.5, high + 1.5)
    if low == high:
        return np.linspace(low - 0.5, high + 0.5, 11)
    count = int(np.clip(2 * math.sqrt(values.size), 10, 40))
    return np.linspace(low, high, count + 1)


def _histograms(
    rows: Sequence[Mapping[str, Any]],
    clean: str,
    adv: str,
    xlabel: str,
    integer: bool,
    reference: Mapping[str, Any] | None = None,
) -> Any:
    """One panel per row: the clean and adversarial values; with ``reference`` (the mean and
    std of the clean reference statistics) a band of mean ± std and a line at the mean."""
    chosen = [row for row in rows if _has(row, clean, adv)]
    if not chosen:
        return None
    from matplotlib.ticker import MaxNLocator

    figure, axes = _panels(len(chosen))
    band = None
    if reference and reference.get("mean") is not None and reference.get("std") is not None:
        band = float(reference["mean"]), float(reference["std"])
    for ax, row in zip(axes, chosen):
        series = [
            (_flat(row[key]), label, colour)
            for key, label, colour in (
                (clean, "clean", "tab:blue"),
                (adv, "adversarial", "tab:red"),
            )
            if _has(row, key)
        ]
        values = np.concatenate([v for v, _, _ in series])
        if band is not None:
            values = np.concatenate([values, [band[0] - band[1], band[0] + band[1]]])
        bins = _bins(values, integer)
        if band is not None:
            mean, std = band
            ax.axvspan(mean - std, mean + std, color="0.85", label="reference mean ± std")
            ax.axvline(mean, color="0.4", linewidth=1.0, linestyle="--")
        for values, label, colour in series:
            ax.hist(values, bins=bins, alpha=0.45, color=colour, label=label)
            ax.hist(values, bins=bins, histtype="step", color=colour, linewidth=1.2)
        if integer and bins[-1] - bins[0] < 10:
            centre = 0.5 * (bins[0] + bins[-1])
            ax.set_xlim(centre - 5, centre + 5)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if integer:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(_title(row), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    return figure


def _error_bars(row: Mapping[str, Any], split: str, aggregation: str, value: float) -> Any:
    """(below, above) in percent: the 95 % Wilson interval of one accuracy, else its std over
    runs, else none."""
    bounds = (row.get(f"{split}_ci95") or {}).get(aggregation)
    if bounds:
        low, high = 100.0 * float(bounds[0]), 100.0 * float(bounds[1])
        return max(0.0, value - low), max(0.0, high - value)
    spread = ((row.get("runs_std") or {}).get(split) or {}).get(aggregation)
    return (100.0 * float(spread),) * 2 if spread is not None else (0.0, 0.0)


def _accuracy_figure(rows: Sequence[Mapping[str, Any]], draws: Any) -> Any:
    """Horizontal bars, one group per row (clean vote, robust vote, robust worst-of-N), each
    with its 95 % Wilson interval (mean ± std over runs for combined runs): the figure grows
    with the rows, so 16 rows stay readable."""
    if not rows:
        return None
    from matplotlib.figure import Figure

    labels = [f"{row.get('method', '')} | {row.get('attack', '')}" for row in rows]
    height = 0.62 * len(rows) + 1.6
    width = min(16.0, 6.5 + 0.055 * max(len(label) for label in labels))
    figure = Figure(figsize=(width, height), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(rows))[::-1].astype(float)
    bar = 0.26
    specs = (
        ("clean", "vote", "clean vote", "tab:blue"),
        ("robust", "vote", "robust vote", "tab:orange"),
        ("robust", "worst", f"robust worst-of-{draws or 'N'}", "tab:red"),
    )
    for index, (split, aggregation, label, colour) in enumerate(specs):
        values, errors = [], []
        for row in rows:
            value = _accuracy(row, split, aggregation)
            value = np.nan if value is None else 100.0 * float(value)
            values.append(value)
            unknown = np.isnan(value)
            errors.append((0.0, 0.0) if unknown else _error_bars(row, split, aggregation, value))
        offset = (1 - index) * bar
        ax.barh(
            positions + offset, values, bar, color=colour, label=label,
            xerr=np.array(errors).T, error_kw={"elinewidth": 0.9, "capsize": 2, "ecolor": "0.2"},
        )  # fmt: skip
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_xlabel("accuracy (%), with 95 % Wilson intervals")
    ax.set_xlim(0, 100)
    ax.set_ylim(positions.min() - 0.6, positions.max() + 0.6)
    ax.grid(axis="x", color="0.9")
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    return figure


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write results.json, results.md and the PNG plots to ``out_dir``; return what was written.

    Keys: ``json``, ``markdown``, and ``eps_norms``, ``levels``, ``accuracy`` for each plot
    that had data to show.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=_json_default) + "\n"
    markdown = to_markdown(results)

    written = {
        "json": atomic_write_text(out / "results.json", text),
        "markdown": atomic_write_text(out / "results.md", markdown),
    }
    rows = list(results.get("rows", []))
    draws = (results.get("config") or {}).get("draws")
    figures = {
        "eps_norms": _histograms(
            rows, "eps_clean", "eps_adv", "EPS norm", False, results.get("reference")
        ),
        "levels": _histograms(rows, "levels_clean", "levels_adv", "noise level t", integer=True),
        "accuracy": _accuracy_figure(rows, draws),
    }
    for name, figure in figures.items():
        if figure is None:
            continue
        image = io.BytesIO()
        figure.savefig(image, format="png", dpi=120)
        written[name] = atomic_write_bytes(out / f"{name}.png", image.getvalue())
    return written
