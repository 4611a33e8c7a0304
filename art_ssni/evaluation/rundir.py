"""Run folders: marked with the run's identity and a manifest of the files it wrote.

:func:`mark_run_dir` starts a run folder (refusing one that already holds files no run of
ours wrote); every atomic write below it is listed in its manifest (:mod:`art_ssni.io`);
:func:`clear_run_dir` (``--overwrite``) removes exactly the listed files, then the folders
that held them once empty, and refuses anything it cannot prove is ours;
:func:`clean_stale_tmp` removes the temporary files a killed run left behind.
"""

from __future__ import annotations

import datetime
import os
import uuid
from pathlib import Path

from ..io import MANIFEST, read_manifest, start_manifest, temporary_target

RUN_MARKER = MANIFEST
_PROBE = ".art-ssni-write-test-"

__all__ = [
    "RUN_MARKER",
    "check_clearable",
    "check_run_dir",
    "clean_stale_tmp",
    "clear_run_dir",
    "mark_run_dir",
]


def _entries(out: Path) -> list[str]:
    """The names in ``out`` other than the marker and a write probe of the command line."""
    return sorted(
        p.name for p in out.iterdir() if p.name != RUN_MARKER and not p.name.startswith(_PROBE)
    )


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _foreign_files(out: Path, listed: set[str]) -> list[str]:
    """Files below ``out`` that its manifest does not list (temporary files of listed files
    and the marker excepted), as paths relative to ``out``."""
    foreign = []
    for path in sorted(out.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        relative = path.relative_to(out).as_posix()
        target = temporary_target(path)
        pending = target is not None and target.relative_to(out).as_posix() in listed
        if relative != RUN_MARKER and relative not in listed and not pending:
            if not (path.parent == out and path.name.startswith(_PROBE)):
                foreign.append(relative)
    return foreign


def check_run_dir(out_dir: str | os.PathLike) -> None:
    """Refuse to write a run into ``out_dir`` when it holds files but no run marker of ours,
    or a marker another tool (or an older art-ssni) wrote; an absent or empty folder and a
    previous run's folder (to resume) are fine."""
    out = Path(out_dir)
    if not out.is_dir():
        return
    if (out / RUN_MARKER).exists():
        try:
            read_manifest(out)
        except (ValueError, OSError) as err:
            raise ValueError(
                f"--out {out} holds a run marker this art-ssni cannot read ({err}); choose a new "
                "or empty --out folder"
            ) from None
        return
    names = _entries(out)
    if names:
        raise ValueError(
            f"--out {out} already holds files that no art-ssni run wrote ({_listing(names)}); "
            "choose a new or empty --out folder, or the folder of an earlier run to resume it"
        )


def mark_run_dir(out_dir: str | os.PathLike) -> None:
    """Make ``out_dir`` a run folder: a marker with a fresh identity and an empty manifest,
    or, when the folder already is one, keep its marker (see :func:`check_run_dir` for what
    is refused)."""
    out = Path(out_dir)
    check_run_dir(out)
    if (out / RUN_MARKER).exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start_manifest(out, {"id": uuid.uuid4().hex, "created": created})


def check_clearable(out_dir: str | os.PathLike) -> bool:
    """Whether ``out_dir`` holds a previous run of ours (``False``: nothing to clear); raise
    ``ValueError`` for a file, a symbolic link, the working directory or a folder above it,
    a folder that holds files without our marker, a foreign or unreadable marker, and a run
    folder holding files its manifest does not list (they are not ours to delete)."""
    out = Path(out_dir)
    if out.is_symlink():
        raise ValueError(f"--overwrite refuses to delete {out}: it is a symbolic link")
    if not out.exists():
        return False
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a folder for the results")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ValueError(
            f"--overwrite refuses to delete {out}: it is the working directory or holds it; "
            "choose a folder of its own for the results"
        )
    if not (out / RUN_MARKER).exists():
        if _entries(out):
            raise ValueError(
                f"--overwrite refuses to delete {out}: it holds files that no art-ssni "
                f"evaluation wrote (no {RUN_MARKER} marker); choose another --out folder"
            )
        return False
    try:
        _, files = read_manifest(out)
    except (ValueError, OSError) as err:
        raise ValueError(f"--overwrite refuses to delete {out}: {err}") from None
    foreign = _foreign_files(out, set(files))
    if foreign:
        raise ValueError(
            f"--overwrite refuses to clear {out}: it holds files the previous run did not "
            f"write ({_listing(foreign)}); move them away or choose another --out folder"
        )
    return True


def _inside(out: Path, relative: str) -> Path | None:
    """``out / relative`` when that names a path inside ``out`` (no escape by ``..``, an
    absolute name or a symbolic link on the way), else ``None``."""
    if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        return None
    path = out / relative
    try:
        path.parent.resolve().relative_to(out.resolve())
    except ValueError:
        return None
    return path


def clear_run_dir(out_dir: str | os.PathLike) -> list[Path]:
    """Delete what a previous run wrote in ``out_dir``: the files its manifest lists, their
    stale temporary files, the folders that held them once empty, and the marker; the folder
    itself stays. Refuses whatever :func:`check_clearable` refuses. Returns the removed
    files."""
    out = Path(out_dir)
    if not check_clearable(out):
        return []
    _, files = read_manifest(out)
    clean_stale_tmp(out)
    removed, folders = [], set()
    for relative in files:
        path = _inside(out, relative)
        if path is None:
            continue
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(path)
        folders.update(p for p in path.parents if p != out and out in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()
    (out / RUN_MARKER).unlink()
    return removed


def clean_stale_tmp(out_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that interrupted writes of listed files left in a run
    folder (a kill between creating and renaming one); returns them. Call it only while no
    other process writes into the folder."""
    out = Path(out_dir)
    if not (out / RUN_MARKER).is_file():
        return []
    try:
        _, files = read_manifest(out)
    except (ValueError, OSError):
        return []
    listed = set(files)
    stale = []
    for path in out.rglob(".*.tmp"):
        target = temporary_target(path)
        if target is not None and path.is_file() and target.relative_to(out).as_posix() in listed:
            path.unlink()
            stale.append(path)
    return stale
