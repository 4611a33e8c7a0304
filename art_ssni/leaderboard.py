"""A leaderboard of randomised defences, built from result files: ``art-ssni leaderboard``.

It reads any mix of art-ssni ``results.json`` files (single runs and ``--runs N`` folders) and
RobustBench-format ``model_info`` JSON files, and writes one self-contained HTML page (no
network access: inline CSS and a few lines of inline JavaScript that sort a table by the
clicked column), the same tables in Markdown, and one ``model_info`` file per row in
RobustBench's layout plus a ``protocol`` object with everything RobustBench does not record.

Four pure steps: :func:`load` (a file to :class:`Entry` rows), :func:`group` (sections by
data set, threat model and eps; one table per protocol inside a section, so rows measured
differently are never ranked against each other), :func:`render_html` /
:func:`render_markdown`, and :func:`model_info_record`. A value a file does not record is
``None`` and shown as "—", never filled in.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .evaluation.accuracy import wilson_interval
from .evaluation.autoattack import format_eps
from .io import atomic_write_text, refuse_html

__all__ = [
    "COLUMNS",
    "ROBUSTBENCH_FIELDS",
    "Built",
    "Entry",
    "add_parser",
    "build_leaderboard",
    "find_inputs",
    "group",
    "load",
    "main",
    "model_info_record",
    "render_html",
    "render_markdown",
    "run",
]

ROBUSTBENCH_FIELDS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "unreliable",
    "footnote",
)
"""A RobustBench ``model_info`` file's fields, in its order (its ``ModelInfo`` dataclass
without the corruption fields, plus ``unreliable`` as its leaderboard files carry it)."""
DESCRIPTIVE = ("link", "name", "authors", "additional_data", "venue", "architecture", "reported")
ROBUST_FIELDS = ("external", "autoattack_acc", "corruptions_acc")
THREAT_MODELS = ("Linf", "L2", "corruptions", "corruptions_3d")
ACCURACIES = ("clean_vote", "clean_worst", "robust_vote", "robust_worst")
MISSING = "—"

COLUMNS: tuple[tuple[str, str], ...] = (
    ("defence", "the defended model as the file names it (method and noise policy)."),
    ("attack", "the attack that made the adversarial inputs; an ensemble is one more name."),
    (
        "clean vote",
        "accuracy on clean inputs through the defence, majority vote of the labels over N "
        "draws, with its 95 % Wilson interval over the images.",
    ),
    ("clean worst-of-N", "a clean input counts only if all N draws classify it correctly."),
    ("robust vote", "accuracy on the adversarial inputs, majority vote over N draws."),
    ("robust worst-of-N", "an adversarial input counts only if all N draws get it right."),
    ("N", "judging draws: passes of the defence each input is judged over."),
    (
        "budget",
        "attack iterations, EOT draws per gradient, restarts, step size, and in-loop judging "
        "(in-loop N and criterion) or one-shot.",
    ),
    ("gradient", "the gradient the attack followed through the purifier: full, surrogate, bpda."),
    ("noise", "the noise policy that picks each input's diffusion level (n/a: no defence)."),
    ("levels clean", "mean ± standard deviation of the levels chosen for clean inputs."),
    ("levels adv", "the same for the adversarial inputs."),
    ("images", "number of evaluated images."),
    ("runs", "runs averaged (accuracies are then mean ± standard deviation over runs)."),
    ("dtype", "compute dtype of the diffusion network."),
    ("device", "where it ran."),
    ("s/img", "wall seconds per image for the attack plus the judging."),
    ("smoke", "a --quick smoke run: checks the pipeline, its numbers are not results."),
    (
        "unreliable",
        "RobustBench's flag: not a RobustBench leaderboard entry. Every art-ssni row has it: "
        "a randomised defence judged over draws, or an attack other than RobustBench's standard "
        "AutoAttack, is outside RobustBench's protocol.",
    ),
    ("source", "the file the row was read from."),
)


@dataclass(frozen=True)
class Entry:
    """One leaderboard row: a defence under one attack, with its protocol. ``None`` marks a
    value the source file does not record; ``"n/a"`` one that does not apply (no defence)."""

    source: str
    key: str
    name: str
    dataset: str | None = None
    threat_model: str | None = None
    eps: float | None = None
    attack: str | None = None
    iterations: int | None = None
    eot: int | None = None
    restarts: int | None = None
    step: float | None = None
    in_loop_draws: int | None = None
    criterion: str | None = None
    draws: int | None = None
    images: int | None = None
    runs: int | None = None
    accuracy: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(ACCURACIES))
    ci95: dict[str, list[float] | None] = field(default_factory=lambda: dict.fromkeys(ACCURACIES))
    runs_std: dict[str, float] | None = None
    gradient: str | None = None
    noise: str | None = None
    levels_clean: list[float] | str | None = None
    levels_adv: list[float] | str | None = None
    dtype: str | None = None
    device: str | None = None
    seconds_per_image: float | None = None
    smoke: bool | None = None
    unreliable: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Built:
    """What :func:`build_leaderboard` wrote and what it left out."""

    html: Path
    markdown: Path
    model_info: list[Path]
    entries: list[Entry]
    smoke_excluded: int
    skipped: list[str]


# ---------------------------------------------------------------- loading


def _search(folder: Path, skip: Path | None) -> list[Path]:
    """The result files in a folder: its results.json, else the topmost results.json of each
    branch below it (a ``--runs`` folder's combined file, not its run_k copies) and every
    JSON file under a ``model_info`` folder; the folder ``skip`` is not entered."""
    if (folder / "results.json").is_file():
        return [folder / "results.json"]
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() != skip)
        if "results.json" in filenames:
            found.append(here / "results.json")
            dirnames.clear()
        elif "model_info" in here.parts:
            found += [here / name for name in sorted(filenames) if name.endswith(".json")]
    return found


def find_inputs(
    paths: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None
) -> tuple[list[Path], list[str]]:
    """The files to read, in order without repeats, and what was skipped and why: a folder
    with no result files, anything inside ``out`` (a leaderboard's own model_info files are
    not inputs to itself)."""
    inputs: list[Path] = []
    skipped: list[str] = []
    seen: set[Path] = set()
    out_dir = Path(out).resolve() if out is not None else None
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise FileNotFoundError(f"result file or folder {path} does not exist")
        if out_dir is not None and path.resolve().is_relative_to(out_dir):
            skipped.append(f"{path}: inside the output folder")
            continue
        found = _search(path, out_dir) if path.is_dir() else [path]
        if not found:
            skipped.append(f"{path}: no results.json and no model_info/<dataset>/<threat>/*.json")
        for file in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                inputs.append(file)
    return inputs, skipped


def load(path: str | os.PathLike[str]) -> list[Entry]:
    """The rows of one results.json or RobustBench model_info file; any other file is a
    ``ValueError`` naming it."""
    path = Path(path)
    try:
        refuse_html(path, "results")
    except ValueError:
        raise ValueError(
            f"{path} is an HTML page (a saved web page or a failed download), not a "
            "results.json or model_info JSON"
        ) from None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a JSON file: {err}") from None
    if isinstance(data, dict) and "config" in data and "rows" in data:
        return _results_entries(data, path)
    if isinstance(data, dict) and {"dataset", "eps", "clean_acc"} <= set(data):
        if any(name in data for name in ROBUST_FIELDS):
            return [_model_info_entry(data, path)]
    raise ValueError(
        f"{path} is neither an art-ssni results.json (an object with 'config' and 'rows') nor "
        "a RobustBench model_info JSON (with dataset, eps, clean_acc and autoattack_acc)"
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _spread(levels: Any) -> list[float] | str | None:
    """Mean and population standard deviation of per-image levels over every pass."""
    flat = [float(v) for v in _flatten(levels)]
    if not flat:
        return None
    mean = sum(flat) / len(flat)
    return [mean, math.sqrt(sum((v - mean) ** 2 for v in flat) / len(flat))]


def _flatten(values: Any) -> Iterable[Any]:
    for value in values:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def _interval(row: Mapping[str, Any], split: str, aggregation: str, runs: int) -> Any:
    """The row's recorded 95 % Wilson interval, else the one of its count (accuracy x n) for a
    single run; None for a mean over runs (the images are shared, so no count exists)."""
    recorded = (row.get(f"{split}_ci95") or {}).get(aggregation)
    if recorded is not None:
        return [float(recorded[0]), float(recorded[1])]
    accuracy, n = (row.get(split) or {}).get(aggregation), row.get("n")
    if runs != 1 or accuracy is None or not n:
        return None
    count = float(accuracy) * int(n)
    if abs(count - round(count)) > 1e-6:
        return None
    return list(wilson_interval(round(count), int(n)))


def _results_entries(data: Mapping[str, Any], path: Path) -> list[Entry]:
    config = data.get("config") or {}
    if not isinstance(config, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"{path}: 'config' must be an object and 'rows' a list")
    entries = []
    for index, row in enumerate(data["rows"]):
        try:
            entries.append(_results_entry(row, config, path))
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: row {index} is not a results row ({err!r})") from None
    return entries


def _results_entry(row: Mapping[str, Any], config: Mapping[str, Any], path: Path) -> Entry:
    budget = config.get("attack") or {}
    settings = row.get("attack_settings") or {}
    judging = row.get("judging") or {}
    compute = config.get("compute") or {}

    def setting(name: str) -> Any:
        return settings.get(name, budget.get(name))

    runs = len(next(iter(row["per_run"]["clean"].values()))) if row.get("per_run") else 1
    accuracy = {
        f"{split}_{aggregation}": _float(row[split].get(aggregation))
        for split in ("clean", "robust")
        for aggregation in ("vote", "worst")
    }
    std = row.get("runs_std")
    has_defence = "defence" in row
    defence = row.get("defence") or {}
    return Entry(
        source=str(path),
        key=str(row.get("key") or row["method"]),
        name=str(row["method"]),
        dataset=config.get("dataset"),
        threat_model=setting("norm"),
        eps=_float(setting("eps")),
        attack=row.get("attack"),
        iterations=_int(setting("iterations")),
        eot=_int(setting("eot")),
        restarts=_int(setting("restarts")),
        step=_float(setting("step")),
        in_loop_draws=_int(judging.get("in_loop_draws")),
        criterion=judging.get("criterion") if judging else None,
        draws=_int((row.get("final_judging") or {}).get("draws", config.get("draws"))),
        images=_int(row.get("n", config.get("n_images"))),
        runs=runs,
        accuracy=accuracy,
        ci95={name: _interval(row, *name.split("_"), runs=runs) for name in ACCURACIES},
        runs_std={f"{s}_{a}": float(std[s][a]) for s, a in (n.split("_") for n in ACCURACIES)}
        if std
        else None,
        gradient=row.get("gradient"),
        noise=(defence.get("noise") or "n/a") if has_defence else None,
        levels_clean=_levels(row, "levels_clean"),
        levels_adv=_levels(row, "levels_adv"),
        dtype=compute.get("dtype"),
        device=compute.get("device"),
        seconds_per_image=_float(row.get("seconds_per_image")),
        smoke=config.get("smoke"),
        unreliable=True,
        info=_info_of(row, defence),
    )


def _levels(row: Mapping[str, Any], name: str) -> list[float] | str | None:
    if name not in row:
        return None
    return "n/a" if row[name] is None else _spread(row[name])


def _info_of(row: Mapping[str, Any], defence: Mapping[str, Any]) -> dict[str, Any]:
    """RobustBench's descriptive fields for one of our rows (nothing is known of authors,
    venue, link or extra training data; ``None`` where RobustBench allows it)."""
    parts = [defence.get("method"), defence.get("classifier")]
    architecture = " + ".join(str(p) for p in parts if p) or None
    attack = row.get("attack")
    return {
        "link": "",
        "name": f"{row['method']} under {attack}" if attack else str(row["method"]),
        "authors": "",
        "additional_data": None,
        "venue": "N/A",
        "architecture": architecture,
        "reported": "N/A",
    }


def _percent_value(value: Any, field: str, path: Path) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value) / 100.0
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {field} must be a percentage, got {value!r}") from None


def _parse_eps(value: Any, path: Path) -> float | None:
    if value is None:
        return None
    text = str(value).strip()
    try:
        if "/" in text:
            numerator, denominator = text.split("/")
            return float(numerator) / float(denominator)
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: eps must be a number or a fraction, got {value!r}") from None


def _model_info_entry(data: Mapping[str, Any], path: Path) -> Entry:
    """A model_info row: our own (with ``protocol``) whole, RobustBench's with what it has."""
    info = {name: data.get(name) for name in (*DESCRIPTIVE, "footnote")}
    protocol = data.get("protocol")
    if isinstance(protocol, dict):
        expected = {f.name for f in dataclasses.fields(Entry)} - {"source", "info"}
        if set(protocol) != expected | {"source"}:
            raise ValueError(
                f"{path}: its 'protocol' does not hold a leaderboard row's fields "
                f"(missing {sorted(expected - set(protocol))}, "
                f"extra {sorted(set(protocol) - expected - {'source'})})"
            )
        return Entry(**{**protocol, "source": str(path), "info": info})
    robust = next(data[name] for name in ROBUST_FIELDS if name in data)
    threat = path.parent.name if path.parent.name in THREAT_MODELS else None
    unreliable = data.get("unreliable")
    return Entry(
        source=str(path),
        key=path.stem,
        name=str(data.get("name") or path.stem),
        dataset=data.get("dataset"),
        threat_model=threat,
        eps=_parse_eps(data.get("eps"), path),
        draws=_int(data.get("number_forward_passes")),
        accuracy={
            **dict.fromkeys(ACCURACIES),
            "clean_vote": _percent_value(data.get("clean_acc"), "clean_acc", path),
            "robust_vote": _percent_value(robust, "robust accuracy", path),
        },
        unreliable=None if unreliable is None else bool(unreliable),
        info=info,
    )


# ---------------------------------------------------------------- grouping


def _eps_text(entry: Entry) -> str:
    return MISSING if entry.eps is None else format_eps(entry.eps, entry.threat_model or "")


def section_key(entry: Entry) -> tuple[str, str, str]:
    """The table family a row belongs to: data set, threat model, eps."""
    return (entry.dataset or MISSING, entry.threat_model or MISSING, _eps_text(entry))


def protocol_key(entry: Entry) -> tuple[Any, ...]:
    """What must be equal for two rows of one section to share a table: images, judging
    draws, attack budget, in-loop judging and whether it was a smoke run."""
    step = None if entry.step is None else format_eps(entry.step, entry.threat_model or "")
    return (
        entry.images,
        entry.draws,
        entry.iterations,
        entry.eot,
        entry.restarts,
        step,
        entry.in_loop_draws,
        entry.criterion,
        entry.smoke,
    )


def _known(value: Any) -> str:
    return MISSING if value is None else str(value)


def protocol_text(entry: Entry) -> str:
    """The protocol of a row's table in words; "—" for what its file does not record."""
    parts = [f"{_known(entry.images)} images", f"N = {_known(entry.draws)} judging draws"]
    budget = _budget(entry)
    parts.append("attack budget —" if budget == MISSING else budget)
    if entry.smoke:
        parts.append("smoke run")
    elif entry.smoke is None:
        parts.append("smoke run: —")
    return " · ".join(parts)


def _budget(entry: Entry) -> str:
    budget = (entry.iterations, entry.eot, entry.restarts, entry.step, entry.in_loop_draws)
    if all(value is None for value in budget):
        return MISSING
    step = MISSING if entry.step is None else format_eps(entry.step, entry.threat_model or "")
    if entry.in_loop_draws is None:
        judging = "judging —"
    elif entry.in_loop_draws == 0:
        judging = "one-shot"
    else:
        judging = f"in-loop N={entry.in_loop_draws} {entry.criterion}"
    return (
        f"iterations {_known(entry.iterations)}, EOT {_known(entry.eot)}, "
        f"restarts {_known(entry.restarts)}, step {step}, {judging}"
    )


def _order(entry: Entry) -> tuple[str, bool, float, str]:
    robust = entry.accuracy.get("robust_vote")
    return (entry.attack or MISSING, robust is None, -(robust or 0.0), entry.name)


def group(entries: Sequence[Entry]) -> list[tuple[str, list[tuple[str, list[Entry]]]]]:
    """Sections (data set · threat model · eps), each a list of tables, one per protocol;
    rows ordered by attack, then by robust vote accuracy, highest first."""
    sections: dict[tuple[str, str, str], dict[tuple[Any, ...], list[Entry]]] = {}
    for entry in entries:
        tables = sections.setdefault(section_key(entry), {})
        tables.setdefault(protocol_key(entry), []).append(entry)
    grouped = []
    for key in sorted(sections, key=lambda k: (k[0], k[1], _eps_order(k[2]), k[2])):
        tables = [
            (protocol_text(rows[0]), sorted(rows, key=_order))
            for _, rows in sorted(sections[key].items(), key=lambda item: repr(item[0]))
        ]
        grouped.append((f"{key[0]} · {key[1]} · eps = {key[2]}", tables))
    return grouped


def _eps_order(text: str) -> float:
    try:
        numerator, _, denominator = text.partition("/")
        return float(numerator) / float(denominator or 1)
    except ValueError:
        return math.inf


# ---------------------------------------------------------------- cells and rendering

Cell = tuple[str, float | None]


def _accuracy_cell(entry: Entry, name: str) -> Cell:
    value = entry.accuracy.get(name)
    if value is None:
        return MISSING, None
    text = f"{100 * value:.1f}"
    if entry.runs_std is not None and entry.runs_std.get(name) is not None:
        text += f" ± {100 * entry.runs_std[name]:.1f}"
    interval = entry.ci95.get(name)
    if interval is not None:
        text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return text, value


def _levels_cell(levels: list[float] | str | None) -> Cell:
    if levels is None or isinstance(levels, str):
        return levels or MISSING, None
    return f"{levels[0]:.1f} ± {levels[1]:.1f}", levels[0]


def _number(value: float | int | None, form: str = "{}") -> Cell:
    return (MISSING, None) if value is None else (form.format(value), float(value))


def _flag(value: bool | None) -> Cell:
    return MISSING if value is None else ("yes" if value else "no"), None


def cells(entry: Entry) -> list[Cell]:
    """A row's cells in :data:`COLUMNS` order: display text and, for numbers, the value a
    click on the header sorts by."""
    return [
        (entry.name, None),
        (entry.attack or MISSING, None),
        *(_accuracy_cell(entry, name) for name in ACCURACIES),
        _number(entry.draws),
        (_budget(entry), None),
        (entry.gradient or MISSING, None),
        (entry.noise or MISSING, None),
        _levels_cell(entry.levels_clean),
        _levels_cell(entry.levels_adv),
        _number(entry.images),
        _number(entry.runs),
        (entry.dtype or MISSING, None),
        (entry.device or MISSING, None),
        _number(entry.seconds_per_image, "{:.2f}"),
        _flag(entry.smoke),
        _flag(entry.unreliable),
        (entry.source, None),
    ]


def _footnotes(rows: Sequence[Entry]) -> list[str]:
    return [str(e.info["footnote"]).replace("<br>", " ") for e in rows if e.info.get("footnote")]


LEGEND = (
    "Each section holds one data set, threat model and eps. Inside it, each table holds one "
    "protocol: the same number of images, judging draws N, attack budget (iterations, EOT "
    "draws, restarts, step, in-loop judging) and smoke status; rows in different tables were "
    "measured differently and are not ranked against each other.",
    "Accuracies are percentages; rows are ordered by attack, then by robust vote (highest "
    "first); click a column header to sort by it. Brackets: 95 % Wilson interval over the "
    "images, from the file or computed from its count (accuracy × images). ± : standard "
    "deviation over runs (a mean over runs has no interval: the runs share their images).",
    "— : the source file does not record this value. n/a : it does not apply (no defence).",
    "Smoke runs (--quick) are left out unless --include-smoke is given.",
    "A RobustBench model_info file records its accuracies (shown in the vote columns), eps and "
    "number_forward_passes (shown as N); its footnote is listed under the table.",
)

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h2{margin-top:1.6em;border-bottom:1px solid #ccc}
details{max-width:110ch}
h3{font-size:14px;font-weight:normal;color:#444}
.wrap{overflow-x:auto}
table{border-collapse:collapse;font-size:12px;white-space:nowrap}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f0f0f0;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafafa}
.mark{background:#fff3cd;border:1px solid #e0c060;padding:4px 8px}
.notes{font-size:12px;color:#555}
"""

SORT_JS = """
document.querySelectorAll("table.lb th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], i = th.cellIndex;
    var up = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    function key(row) {
      var cell = row.cells[i];
      if (cell.dataset.v !== undefined) return Number(cell.dataset.v);
      var text = cell.textContent.trim();
      return text === "\u2014" ? null : text;
    }
    var rows = Array.prototype.slice.call(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null || y === null) return (x === null) - (y === null);
      var order = typeof x === "number" && typeof y === "number" ? x - y
        : String(x).localeCompare(String(y), undefined, {numeric: true});
      return up ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _html_table(rows: Sequence[Entry]) -> list[str]:
    escape = html.escape
    head = "".join(f'<th title="{escape(text)}">{escape(name)}</th>' for name, text in COLUMNS)
    lines = ['<div class="wrap"><table class="lb">', f"<thead><tr>{head}</tr></thead><tbody>"]
    for entry in rows:
        tds = "".join(
            f'<td class="n" data-v="{value!r}">{escape(text)}</td>'
            if value is not None
            else f"<td>{escape(text)}</td>"
            for text, value in cells(entry)
        )
        lines.append(f"<tr>{tds}</tr>")
    lines.append("</tbody></table></div>")
    notes = _footnotes(rows)
    if notes:
        lines.append('<ul class="notes">')
        lines += [f"<li>footnote: {escape(note)}</li>" for note in notes]
        lines.append("</ul>")
    return lines


def _separate_mark(count: int) -> str:
    return (
        f"{count} protocols in this section: its rows are in {count} separate tables and "
        "compare only within one table."
    )


def render_html(
    sections: Sequence[tuple[str, Sequence[tuple[str, Sequence[Entry]]]]],
    *,
    sources: Sequence[str],
    smoke_excluded: int = 0,
) -> str:
    """The leaderboard as one self-contained HTML page (inline CSS and sorting script)."""
    escape = html.escape
    lines = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>art-ssni leaderboard</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Leaderboard of randomised defences</h1>",
        f"<p>Built by <code>art-ssni leaderboard</code> from {len(sources)} file(s).</p>",
        "<details open><summary>Protocol</summary><ul>",
        *(f"<li>{escape(text)}</li>" for text in LEGEND),
        "</ul></details><details><summary>Columns</summary><ul>",
        *(f"<li><b>{escape(name)}</b>: {escape(text)}</li>" for name, text in COLUMNS),
        "</ul></details>",
    ]
    if smoke_excluded:
        lines.append(f'<p class="mark">{smoke_excluded} smoke-run row(s) left out.</p>')
    for title, tables in sections:
        lines.append(f"<section><h2>{escape(title)}</h2>")
        if len(tables) > 1:
            lines.append(f'<p class="mark">{escape(_separate_mark(len(tables)))}</p>')
        for protocol, rows in tables:
            lines.append(f"<h3>Protocol: {escape(protocol)}</h3>")
            lines += _html_table(rows)
        lines.append("</section>")
    lines += [f"<script>{SORT_JS}</script>", "</body></html>"]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(
    sections: Sequence[tuple[str, Sequence[tuple[str, Sequence[Entry]]]]],
    *,
    sources: Sequence[str],
    smoke_excluded: int = 0,
) -> str:
    """The same tables in Markdown, with the protocol legend and the column meanings."""
    lines = ["# Leaderboard of randomised defences", ""]
    lines += [f"Built by `art-ssni leaderboard` from {len(sources)} file(s).", ""]
    lines += [f"- {text}" for text in LEGEND]
    if smoke_excluded:
        lines += ["", f"**{smoke_excluded} smoke-run row(s) left out.**"]
    for title, tables in sections:
        lines += ["", f"## {title}", ""]
        if len(tables) > 1:
            lines += [f"**{_separate_mark(len(tables))}**", ""]
        for protocol, rows in tables:
            lines += [f"### Protocol: {protocol}", ""]
            lines.append("| " + " | ".join(_md(name) for name, _ in COLUMNS) + " |")
            lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
            for entry in rows:
                lines.append("| " + " | ".join(_md(text) for text, _ in cells(entry)) + " |")
            lines += [""] + [f"- footnote: {note}" for note in _footnotes(rows)]
    lines += ["", "## Columns", ""]
    lines += [f"- **{name}**: {text}" for name, text in COLUMNS]
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------- model_info files


def _percent_text(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}"


def _footnote(entry: Entry) -> str:
    worst = [_percent_text(entry.accuracy.get(n)) for n in ("clean_worst", "robust_worst")]
    return (
        "Randomised defence evaluated by art-ssni, not a RobustBench leaderboard entry: "
        f"autoattack_acc is the robust accuracy under {entry.attack or MISSING} "
        f"({_budget(entry)}), not AutoAttack standard. clean_acc and autoattack_acc are the "
        f"majority vote over {_known(entry.draws)} draws on {_known(entry.images)} images "
        f"(worst of {_known(entry.draws)}: clean {worst[0] or MISSING}%, robust "
        f"{worst[1] or MISSING}%); the full protocol is under 'protocol'."
    )


def model_info_record(entry: Entry) -> dict[str, Any]:
    """The row as a RobustBench model_info record (:data:`ROBUSTBENCH_FIELDS`, in order),
    plus ``protocol``: every field of the row, with the file it was measured in as source."""
    record = {
        **{name: entry.info.get(name) for name in DESCRIPTIVE},
        "number_forward_passes": entry.draws,
        "dataset": entry.dataset,
        "eps": None if entry.eps is None else _eps_text(entry),
        "clean_acc": _percent_text(entry.accuracy.get("clean_vote")),
        "autoattack_acc": _percent_text(entry.accuracy.get("robust_vote")),
        "unreliable": entry.unreliable,
        "footnote": entry.info.get("footnote") or _footnote(entry),
    }
    ordered = {name: record[name] for name in ROBUSTBENCH_FIELDS}
    protocol = dataclasses.asdict(entry)
    del protocol["info"]
    return {**ordered, "protocol": protocol}


def _file_name(entry: Entry) -> str:
    origin = Path(entry.source)
    stem = origin.parent.name if origin.name == "results.json" else ""
    name = f"{stem}--{entry.key}" if stem else entry.key
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "row"


def _clear_model_info(out: Path) -> None:
    """Remove the model_info files an earlier build wrote (those with our ``protocol``)."""
    for path in sorted((out / "model_info").glob("*/*/*.json")):
        try:
            ours = isinstance(json.loads(path.read_text(encoding="utf-8")).get("protocol"), dict)
        except (OSError, ValueError, AttributeError):
            ours = False
        if ours:
            path.unlink()


def write_model_info(entries: Sequence[Entry], out: Path) -> list[Path]:
    """One file per row at ``out/model_info/<dataset>/<threat_model>/<name>.json``."""
    _clear_model_info(out)
    written, used = [], set()
    for entry in entries:
        folder = out / "model_info" / (entry.dataset or "unknown")
        folder = folder / (entry.threat_model or "unknown")
        name, count = _file_name(entry), 1
        while (folder, name if count == 1 else f"{name}-{count}") in used:
            count += 1
        name = name if count == 1 else f"{name}-{count}"
        used.add((folder, name))
        text = json.dumps(model_info_record(entry), indent=2, ensure_ascii=False) + "\n"
        written.append(atomic_write_text(folder / f"{name}.json", text))
    return written


# ---------------------------------------------------------------- build and command line


def build_leaderboard(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    include_smoke: bool = False,
) -> Built:
    """Read the result files (or folders holding them) and write ``out/leaderboard.html``,
    ``out/leaderboard.md`` and ``out/model_info/...``; smoke runs only with ``include_smoke``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the leaderboard")
    inputs, skipped = find_inputs(paths, out)
    if not inputs:
        raise ValueError(f"no result files to read: {'; '.join(skipped) or 'no paths given'}")
    loaded = [entry for path in inputs for entry in load(path)]
    entries = [e for e in loaded if include_smoke or not e.smoke]
    if not entries:
        raise ValueError(
            f"every row of {', '.join(map(str, inputs))} is a smoke run (--quick); "
            "pass --include-smoke to show them"
        )
    sources = [str(path) for path in inputs]
    sections = group(entries)
    excluded = len(loaded) - len(entries)
    page = render_html(sections, sources=sources, smoke_excluded=excluded)
    markdown = render_markdown(sections, sources=sources, smoke_excluded=excluded)
    out.mkdir(parents=True, exist_ok=True)
    return Built(
        html=atomic_write_text(out / "leaderboard.html", page),
        markdown=atomic_write_text(out / "leaderboard.md", markdown),
        model_info=write_model_info(entries, out),
        entries=entries,
        smoke_excluded=excluded,
        skipped=skipped,
    )


def _arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "results",
        nargs="+",
        metavar="RESULT",
        help="results.json, a run folder (its results.json; a --runs folder's combined file), "
        "a folder of such folders, or a RobustBench model_info JSON",
    )
    parser.add_argument(
        "--out", required=True, help="folder for leaderboard.html, leaderboard.md, model_info/"
    )
    parser.add_argument(
        "--include-smoke", action="store_true", help="also show smoke runs (--quick)"
    )
    return parser


def add_parser(subparsers: Any) -> None:
    """Add the ``leaderboard`` subcommand to an ``add_subparsers()`` object."""
    _arguments(
        subparsers.add_parser(
            "leaderboard",
            help="one sortable HTML/Markdown leaderboard and model_info files from results",
            description=__doc__.splitlines()[0],
        )
    )


def run(args: argparse.Namespace) -> int:
    """Build the leaderboard the parsed arguments ask for; 0, or 2 with the error on stderr."""
    try:
        built = build_leaderboard(args.results, args.out, include_smoke=args.include_smoke)
    except (ValueError, FileNotFoundError) as err:
        print(f"art-ssni: error: {err}", file=sys.stderr)
        return 2
    for reason in built.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    print(
        f"{len(built.entries)} rows ({built.smoke_excluded} smoke-run rows left out); wrote "
        f"{built.html}, {built.markdown} and {len(built.model_info)} model_info files"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``art-ssni leaderboard`` on its own: ``main(["results.json", "--out", "lb"])``."""
    parser = _arguments(argparse.ArgumentParser(prog="art-ssni leaderboard"))
    return run(parser.parse_args(argv))
