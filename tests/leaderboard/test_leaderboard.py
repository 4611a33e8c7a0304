"""art_ssni.leaderboard without a browser: reading results.json and model_info files, grouping
by data set, threat model and eps, one table per protocol, smoke runs, sources, Wilson
intervals, bad input, the model_info files it writes, and the README's command."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import html
import json
import re
import shlex
from pathlib import Path

import pytest

from art_ssni.evaluation.accuracy import wilson_interval
from art_ssni.leaderboard import (
    COLUMNS,
    ROBUSTBENCH_FIELDS,
    build_leaderboard,
    cells,
    find_inputs,
    group,
    load,
    main,
    model_info_record,
)

from results_files import make_row, write_results
from tiny import README, ROOT

RECORDED = ROOT / "benchmarks" / "results" / "leaderboard"


def table_rows(page: str) -> list[list[str]]:
    """The cells of every body row of the HTML page, as text."""
    bodies = re.findall(r"<tbody>(.*?)</tbody>", page, flags=re.S)
    rows = [r for body in bodies for r in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)]
    return [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in rows]


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory) -> Path:
    """A real two-run smoke evaluation of the digits preset (a ``--runs 2`` folder)."""
    from art_ssni import evaluate

    out = tmp_path_factory.mktemp("digits") / "two"
    evaluate("digits", out=out, quick=True, runs=2, progress=False)
    return out


def test_reads_a_runs_folder_of_the_pipeline(digits_runs, tmp_path):
    combined = json.loads((digits_runs / "results.json").read_text())
    inputs, skipped = find_inputs([digits_runs])
    assert inputs == [digits_runs / "results.json"] and skipped == []
    entries = load(inputs[0])
    assert [e.key for e in entries] == [r["key"] for r in combined["rows"]]
    for entry, row in zip(entries, combined["rows"]):
        assert entry.runs == 2 and entry.smoke is True
        assert entry.accuracy["robust_vote"] == row["robust"]["vote"]
        assert entry.runs_std["robust_vote"] == row["runs_std"]["robust"]["vote"]
        assert entry.ci95 == dict.fromkeys(entry.ci95)  # a mean over runs has no interval
        assert entry.dataset == "digits" and entry.threat_model == "Linf"
        assert entry.dtype == "float32" and entry.device == "cpu"
    single = load(digits_runs / "run_0" / "results.json")
    first = json.loads((digits_runs / "run_0" / "results.json").read_text())["rows"][0]
    assert single[0].runs == 1
    assert single[0].ci95["clean_vote"] == first["clean_ci95"]["vote"]

    with pytest.raises(ValueError, match="smoke run.*--include-smoke"):
        build_leaderboard([digits_runs], tmp_path / "lb")
    built = build_leaderboard([digits_runs], tmp_path / "lb", include_smoke=True)
    assert len(built.entries) == len(combined["rows"])
    assert "smoke run" in built.markdown.read_text()


def test_reads_a_model_info_file_of_the_robustbench_adapter(tmp_path):
    from integrations.robustbench_adapter import MODEL_INFO_FIELDS, write_model_info

    record = dict.fromkeys(MODEL_INFO_FIELDS, "")
    record.update(name="DiffPure-SSNI-N", additional_data=False, number_forward_passes=8,
                  dataset="cifar10", eps="8/255", clean_acc="81.25", autoattack_acc="40.62",
                  unreliable=True, footnote="AutoAttack rand, re-judged")  # fmt: skip
    path = write_model_info(tmp_path, "cifar10", "L2", "ours", record)
    (entry,) = load(path)
    assert (entry.dataset, entry.threat_model, entry.eps) == ("cifar10", "L2", 8 / 255)
    robust = pytest.approx(0.4062)
    assert entry.accuracy == {"clean_vote": 0.8125, "clean_worst": None,
                              "robust_vote": robust, "robust_worst": None}  # fmt: skip
    assert entry.draws == 8 and entry.unreliable is True and entry.source == str(path)
    text = dict(zip((name for name, _ in COLUMNS), (t for t, _ in cells(entry))))
    for column in ("attack", "budget", "gradient", "noise", "images", "dtype", "smoke"):
        assert text[column] == "—"
    assert text["robust vote"] == "40.6" and text["N"] == "8"
    built = build_leaderboard([tmp_path / "model_info"], tmp_path / "lb")
    assert "footnote: AutoAttack rand, re-judged" in built.html.read_text()


def test_sections_by_dataset_threat_model_and_eps(tmp_path):
    write_results(tmp_path / "a", [make_row("r1"), make_row("r2", eps=4 / 255)])
    write_results(tmp_path / "b", [make_row("r3")], dataset="digits")
    l2 = make_row("r4")
    l2["attack_settings"] = {**l2["attack_settings"], "norm": "L2", "eps": 0.5}
    write_results(tmp_path / "c", [l2])
    entries = [e for name in "abc" for e in load(tmp_path / name / "results.json")]
    sections = group(entries)
    titles = [title for title, _ in sections]
    assert titles == [
        "cifar10 · L2 · eps = 0.5",
        "cifar10 · Linf · eps = 4/255",
        "cifar10 · Linf · eps = 8/255",
        "digits · Linf · eps = 8/255",
    ]
    keys = [[e.key for _, rows in tables for e in rows] for _, tables in sections]
    assert keys == [["r4"], ["r2"], ["r1"], ["r3"]]


def test_rows_of_different_protocols_are_never_in_one_table(tmp_path):
    rows = [
        make_row("same-a", robust=(0.5, 0.25)),
        make_row("fewer-images", n=64, robust=(0.9, 0.9)),
        make_row("more-draws", draws=10),
        make_row("longer-attack", iterations=200),
        make_row("in-loop", in_loop=8, criterion="worst"),
    ]
    write_results(tmp_path / "one", rows)
    write_results(tmp_path / "two", [make_row("same-b", robust=(0.3, 0.1))])
    built = build_leaderboard([tmp_path / "one", tmp_path / "two"], tmp_path / "lb")
    ((title, tables),) = group(built.entries)
    assert len(tables) == 5
    together = [sorted(e.key for e in table) for _, table in tables]
    assert ["same-a", "same-b"] in together
    assert sorted(map(len, together)) == [1, 1, 1, 1, 2]
    protocols = [protocol for protocol, _ in tables]
    assert len(set(protocols)) == 5
    assert any("64 images" in p for p in protocols)
    assert any("in-loop N=8 worst" in p for p in protocols)
    for page in (built.html.read_text(), built.markdown.read_text()):
        assert "5 protocols in this section" in page
        assert page.count("Protocol: ") == 5
    # inside one table, rows are ordered by robust vote, highest first
    (same,) = [table for _, table in tables if len(table) == 2]
    assert [e.key for e in same] == ["same-a", "same-b"]


def test_smoke_runs_are_left_out_unless_asked(tmp_path):
    write_results(tmp_path / "real", [make_row("real")])
    write_results(tmp_path / "smoke", [make_row("quick"), make_row("quick2")], smoke=True)
    paths = [tmp_path / "real", tmp_path / "smoke"]
    built = build_leaderboard(paths, tmp_path / "lb")
    assert [e.key for e in built.entries] == ["real"] and built.smoke_excluded == 2
    assert "2 smoke-run row(s) left out" in built.html.read_text()
    assert len(list((tmp_path / "lb" / "model_info").rglob("*.json"))) == 1
    shown = build_leaderboard(paths, tmp_path / "lb", include_smoke=True)
    assert sorted(e.key for e in shown.entries) == ["quick", "quick2", "real"]
    ((_, tables),) = group(shown.entries)
    assert [sorted(e.key for e in rows) for _, rows in tables if "smoke run" in _] == [
        ["quick", "quick2"]
    ]
    # the earlier build's model_info files are replaced, not left behind
    assert len(list((tmp_path / "lb" / "model_info").rglob("*.json"))) == 3


def test_every_row_names_its_source_file(tmp_path):
    first = write_results(tmp_path / "a", [make_row("x"), make_row("y", attack="APGD-EOT")])
    second = write_results(tmp_path / "b", [make_row("z")])
    built = build_leaderboard([first, tmp_path / "b"], tmp_path / "lb")
    sources = sorted(row[-1] for row in table_rows(built.html.read_text()))
    assert sources == sorted([str(first), str(first), str(second)])
    markdown = built.markdown.read_text()
    assert markdown.count(f"| {first} |") == 2 and markdown.count(f"| {second} |") == 1


def test_wilson_intervals_are_those_of_the_accuracy_module(tmp_path):
    recorded = {"single": [0.1, 0.2], "vote": [0.11, 0.22], "mean": [0.1, 0.2], "worst": [0.0, 0.1]}
    rows = [
        make_row("counted", clean=(0.75, 0.5), robust=(0.25, 0.125), n=128),
        make_row("recorded", robust_ci95=recorded),
        make_row("fraction", robust=(0.3, 0.1), n=128),  # 0.3 x 128 is no count
    ]
    entries = load(write_results(tmp_path / "a", rows))
    counted = entries[0].ci95
    assert counted["clean_vote"] == list(wilson_interval(96, 128))
    assert counted["clean_worst"] == list(wilson_interval(64, 128))
    assert counted["robust_vote"] == list(wilson_interval(32, 128))
    assert counted["robust_worst"] == list(wilson_interval(16, 128))
    assert entries[1].ci95["robust_vote"] == [0.11, 0.22]
    assert entries[1].ci95["robust_worst"] == [0.0, 0.1]
    assert entries[2].ci95["robust_vote"] is None
    low, high = wilson_interval(32, 128)
    text = dict(zip((name for name, _ in COLUMNS), cells(entries[0])))
    assert text["robust vote"] == (f"25.0 [{100 * low:.1f}, {100 * high:.1f}]", 0.25)
    assert text["levels clean"] == ("25.0 ± 11.2", 25.0)  # 10, 20, 30, 40


def test_values_a_file_lacks_are_shown_as_missing(tmp_path):
    row = make_row("old")
    for name in ("defence", "levels_clean"):
        del row[name]
    path = tmp_path / "old" / "results.json"
    write_results(tmp_path / "old", [row])
    data = json.loads(path.read_text())
    del data["config"]["compute"], data["config"]["smoke"]
    path.write_text(json.dumps(data))
    text = dict(zip((name for name, _ in COLUMNS), (t for t, _ in cells(load(path)[0]))))
    assert text["noise"] == text["levels clean"] == text["dtype"] == text["device"] == "—"
    assert text["smoke"] == "—" and text["levels adv"] == "90.0 ± 0.0"
    undefended = make_row("none", defence=None, levels_clean=None, levels_adv=None)
    text = dict(zip((n for n, _ in COLUMNS), (t for t, _ in cells(load(write_results(
        tmp_path / "u", [undefended]))[0]))))  # fmt: skip
    assert text["noise"] == text["levels clean"] == "n/a"


def test_bad_input_is_refused_with_the_file_named(tmp_path, capsys):
    page = tmp_path / "results.json"
    page.write_text("<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    with pytest.raises(ValueError, match=re.escape(f"{page} is an HTML page")):
        load(page)
    text = tmp_path / "notes.txt"
    text.write_text("robust accuracy 30 %")
    with pytest.raises(ValueError, match=re.escape(f"{text} is not a JSON file")):
        load(text)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"accuracy": 0.3}))
    with pytest.raises(ValueError, match=re.escape(f"{other} is neither an art-ssni results")):
        load(other)
    broken = write_results(tmp_path / "broken", [{"method": "x", "key": "x"}])
    with pytest.raises(ValueError, match=re.escape(f"{broken}: row 0 is not a results row")):
        load(broken)
    info = tmp_path / "model_info" / "cifar10" / "Linf" / "m.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"dataset": "cifar10", "eps": "8/255", "clean_acc": "high",
                                "autoattack_acc": "50"}))  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(f"{info}: clean_acc must be a percentage")):
        load(info)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_inputs([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "lb")]) == 2
    assert "no result files to read" in capsys.readouterr().err
    assert main([str(page), "--out", str(tmp_path / "lb")]) == 2
    assert f"{page} is an HTML page" in capsys.readouterr().err
    assert not (tmp_path / "lb" / "leaderboard.html").exists()


def test_model_info_files_have_robustbench_fields_and_read_back(tmp_path):
    from integrations import robustbench_adapter
    from integrations.robustbench_adapter import import_robustbench

    import_robustbench()
    from robustbench.utils import ModelInfo

    assert ROBUSTBENCH_FIELDS == robustbench_adapter.MODEL_INFO_FIELDS
    theirs = {f.name for f in dataclasses.fields(ModelInfo)}
    assert theirs - set(ROBUSTBENCH_FIELDS) == {
        "corruptions_acc", "corruptions_acc_3d", "corruptions_mce", "corruptions_mce_3d"
    }  # fmt: skip
    source = write_results(tmp_path / "run", [make_row("a"), make_row("b", attack="APGD-EOT")])
    built = build_leaderboard([source], tmp_path / "lb")
    folder = tmp_path / "lb" / "model_info" / "cifar10" / "Linf"
    assert sorted(built.model_info) == [folder / "run--a.json", folder / "run--b.json"]
    for path, entry in zip(built.model_info, built.entries):
        record = json.loads(path.read_text())
        assert list(record) == [*ROBUSTBENCH_FIELDS, "protocol"]
        info = ModelInfo(**{k: v for k, v in record.items() if k in theirs})
        assert info.clean_acc == "75.00" and info.autoattack_acc == "25.00"
        assert info.eps == "8/255" and info.number_forward_passes == 5
        assert record["unreliable"] is True and entry.attack in record["footnote"]
        assert record["protocol"]["source"] == str(source)
        (again,) = load(path)
        assert again == dataclasses.replace(entry, source=str(path), info=again.info)
        assert again.info["footnote"] == record["footnote"]
    assert model_info_record(built.entries[0])["protocol"]["accuracy"]["robust_worst"] == 0.125
    # the output folder is never read as input: a second build shows the same rows
    again = build_leaderboard([tmp_path / "run", tmp_path / "lb"], tmp_path / "lb")
    assert len(again.entries) == 2
    assert again.skipped == [f"{tmp_path / 'lb'}: inside the output folder"]
    around = build_leaderboard([tmp_path], tmp_path / "lb")  # a folder holding --out
    assert [e.source for e in around.entries] == [str(source)] * 2


def test_command_line_face(tmp_path, capsys):
    from art_ssni import leaderboard

    write_results(tmp_path / "run", [make_row("a")])
    parser = argparse.ArgumentParser(prog="art-ssni")
    leaderboard.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["leaderboard", str(tmp_path / "run"), "--out", str(tmp_path / "o")])
    assert args.command == "leaderboard" and args.include_smoke is False
    assert leaderboard.run(args) == 0
    assert "1 rows (0 smoke-run rows left out)" in capsys.readouterr().out
    assert (tmp_path / "o" / "leaderboard.html").is_file()


def readme_command() -> list[str]:
    """The README's art-ssni leaderboard command, words after the program name."""
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if len(words) > 1 and words[0].endswith("art-ssni") and words[1] == "leaderboard":
                return words[2:]
    raise AssertionError("README.md has no art-ssni leaderboard command")


def test_readme_command_rebuilds_the_recorded_leaderboard(tmp_path, monkeypatch):
    words = readme_command()
    out = words[words.index("--out") + 1]
    assert out == "benchmarks/results/leaderboard"
    monkeypatch.chdir(ROOT)
    inputs = [p for w in words[: words.index("--out")] for p in sorted(glob.glob(w))]
    # what the command skips as lying inside its --out folder
    inputs = [p for p in inputs if not (ROOT / p).resolve().is_relative_to(RECORDED.resolve())]
    assert main([*inputs, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "leaderboard.md").read_text() == (RECORDED / "leaderboard.md").read_text()
    assert (tmp_path / "leaderboard.html").read_text() == (
        RECORDED / "leaderboard.html"
    ).read_text()
    ours = sorted(p.relative_to(tmp_path) for p in (tmp_path / "model_info").rglob("*.json"))
    recorded = sorted(p.relative_to(RECORDED) for p in (RECORDED / "model_info").rglob("*.json"))
    assert ours == recorded and ours


def test_readme_explains_every_column():
    text = README.read_text()
    section = text.split("\n## Leaderboard\n")[1].split("\n## ")[0]
    assert "benchmarks/results/leaderboard.png" in section
    for name, _ in COLUMNS:
        assert f"| {name} |" in section, name
