"""What a run writes into --out and what --overwrite removes: the run folder's marker holds the
run's identity and the list of every file the run wrote; --overwrite deletes exactly those
(and the folders left empty), never a file the run did not write; a run refuses a folder that
already holds other files; a killed run's temporary files are removed on the next start; files
are created with the mode the umask gives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from art_ssni.cli import main
from art_ssni.evaluation.rundir import RUN_MARKER, clear_run_dir, mark_run_dir
from art_ssni.io import atomic_write_text, read_manifest

SMALL = ["--preset", "digits", "--n-images", "2", "--batch-size", "2", "--iterations", "1"]
SMALL += ["--eot", "1", "--draws", "1", "--steps", "2", "--t-star", "5", "--no-progress"]
SMALL += ["--noise", "fixed", "--attack", "pgd-eot", "--judge-draws", "0"]


def _files(out: Path) -> set[str]:
    return {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != RUN_MARKER
    }


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("art-ssni: error: "), lines
    return lines[0]


def test_the_marker_lists_every_file_the_run_wrote(tmp_path):
    out = tmp_path / "run"
    assert main(["evaluate", *SMALL, "--out", str(out)]) == 0
    identity, listed = read_manifest(out)
    assert len(identity["id"]) == 32 and identity["created"]
    assert set(listed) == _files(out)
    assert {"config.json", "results.json", "results.md", "accuracy.png"} <= set(listed)
    assert any(name.startswith("parts/none-pgd/batch_") for name in listed)


def test_overwrite_deletes_exactly_the_run_s_files(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["evaluate", *SMALL, "--out", str(out)]
    assert main(args) == 0
    first, _ = read_manifest(out)
    notes = out / "parts" / "notes.txt"
    notes.write_text("mine")
    assert main([*args, "--overwrite"]) == 2
    assert "notes.txt" in _error(capsys) and notes.read_text() == "mine"
    assert (out / "results.json").is_file()  # nothing was deleted
    notes.unlink()
    stale = out / ".results.json.99999-0.tmp"  # a kill between creating and renaming
    stale.write_bytes(b"")
    old_part = out / "parts" / "none-pgd" / "batch_00000.pt"
    stamp = old_part.stat().st_mtime_ns
    assert main([*args, "--overwrite"]) == 0
    second, listed = read_manifest(out)
    assert second["id"] != first["id"]
    assert not stale.exists() and old_part.stat().st_mtime_ns != stamp
    assert set(listed) == _files(out)


def test_clearing_removes_listed_files_and_emptied_folders_only(tmp_path):
    out = tmp_path / "run"
    mark_run_dir(out)
    atomic_write_text(out / "parts" / "row" / "batch_00000.pt", "x")
    atomic_write_text(out / "results.json", "{}")
    (out / "kept").mkdir()  # an empty folder the manifest never mentions
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    with open(out / RUN_MARKER, "a") as handle:  # a tampered manifest naming a file outside
        handle.write(json.dumps("../outside.txt") + "\n")
    removed = clear_run_dir(out)
    assert sorted(p.relative_to(out).as_posix() for p in removed) == [
        "parts/row/batch_00000.pt",
        "results.json",
    ]
    assert outside.read_text() == "not ours"
    assert sorted(p.name for p in out.iterdir()) == ["kept"]  # no marker, no parts/


@pytest.mark.parametrize(
    "marker, message",
    [
        ("art-ssni evaluation output\n", "older art-ssni"),
        ('{"tool": "something else"}\n', "another tool"),
    ],
)
def test_overwrite_refuses_a_foreign_or_old_marker(tmp_path, capsys, marker, message):
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_MARKER).write_text(marker)
    (out / "results.json").write_text("{}")
    assert main(["evaluate", *SMALL, "--out", str(out), "--overwrite"]) == 2
    assert message in _error(capsys)
    assert (out / "results.json").read_text() == "{}"


def test_a_run_refuses_a_folder_holding_other_files(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert main(["evaluate", *SMALL, "--out", str(out)]) == 2
    line = _error(capsys)
    assert "thesis.tex" in line and "choose a new or empty --out folder" in line
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    with pytest.raises(ValueError, match="no art-ssni run wrote"):
        mark_run_dir(out)  # the library's runs refuse it too


def test_a_killed_run_s_temporary_files_are_removed_on_start(tmp_path):
    out = tmp_path / "run"
    args = ["evaluate", *SMALL, "--out", str(out)]
    assert main(args) == 0
    results = (out / "results.json").read_text()
    stale = [
        out / ".results.md.99999-3.tmp",
        out / "parts" / "none-pgd" / ".batch_00000.pt.1-2.tmp",
    ]
    for path in stale:
        path.write_bytes(b"")
    assert main(args) == 0
    assert not any(path.exists() for path in stale)
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(results)["rows"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        out = tmp_path / "run"
        assert main(["evaluate", *SMALL, "--out", str(out)]) == 0
        stats = tmp_path / "stats.safetensors"
        flags = ["--preset", "digits", "--n-images", "4", "--num-levels", "2"]
        assert (
            main(["stats", *flags, "--batch-size", "4", "--no-progress", "--out", str(stats)]) == 0
        )
    finally:
        os.umask(previous)
    written = [*(p for p in out.rglob("*") if p.is_file()), stats]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(mode)}
