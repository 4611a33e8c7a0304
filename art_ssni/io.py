"""File input and output shared by the whole package: atomic writes, the manifest of a run
folder, the HTML-page refusal, and the content digests that fingerprint a run's inputs.

A file written here either keeps its old content or gets the whole new one, never half of
it: the bytes go to a temporary file in the target folder, are flushed to disk, and the
temporary file is renamed over the target (one ``os.replace``). A crash or a kill leaves
at most a hidden ``.<name>.<pid>-<n>.tmp`` behind, never a truncated result. Files are
created with mode 0o666 less the process's umask, as ``open`` creates them.

A folder holding a :data:`MANIFEST` file is a run folder: every file written here below it is
listed in that manifest (before its bytes are written), so that clearing the run later removes
exactly the files it wrote (:mod:`art_ssni.evaluation.rundir`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MANIFEST",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_with",
    "module_digest",
    "read_manifest",
    "refuse_html",
    "start_manifest",
    "tensor_digest",
    "temporary_target",
]

MANIFEST = ".art-ssni-run"
"""The file that marks a run folder: a JSON header line (the run's identity), then one JSON
string per line, the path (relative, POSIX) of each file written below the folder."""

_MANIFEST_KEY = "art-ssni-run"
_TMP = re.compile(r"^\.(?P<name>.+)\.\d+-\d+\.tmp$")
_counter = itertools.count()


def temporary_target(tmp: str | os.PathLike) -> Path | None:
    """The file a temporary file of :func:`atomic_write_bytes` was to become, or ``None`` when
    ``tmp`` is not named like one."""
    tmp = Path(tmp)
    match = _TMP.match(tmp.name)
    return tmp.with_name(match["name"]) if match else None


def start_manifest(folder: str | os.PathLike, identity: dict[str, Any]) -> Path:
    """Write a fresh manifest (``identity`` as its header, no files) into ``folder``."""
    header = json.dumps({_MANIFEST_KEY: 1, **identity}, sort_keys=True)
    return atomic_write_bytes(Path(folder) / MANIFEST, (header + "\n").encode())


def read_manifest(folder: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """The identity and the listed files (in order, once each) of ``folder``'s manifest.

    Raises ``FileNotFoundError`` without a manifest and ``ValueError`` for one that art-ssni
    did not write in this format (another tool's file, or an older art-ssni's, which kept no
    list of its files).
    """
    path = Path(folder) / MANIFEST
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get(_MANIFEST_KEY) != 1:
        raise ValueError(
            f"{path} is not a run manifest of this art-ssni version (written by another tool "
            "or an older art-ssni that kept no list of the files it wrote)"
        )
    files: dict[str, None] = {}
    for line in lines[1:]:
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(line)
            if isinstance(entry, str):
                files[entry] = None
    return header, list(files)


def _is_manifest(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            header = json.loads(handle.readline())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(header, dict) and header.get(_MANIFEST_KEY) == 1


def _record(path: Path) -> None:
    """List ``path`` in the manifest of every run folder above it."""
    target = Path(os.path.abspath(path))
    for folder in target.parents:
        manifest = folder / MANIFEST
        if manifest != target and manifest.is_file() and _is_manifest(manifest):
            line = json.dumps(target.relative_to(folder).as_posix()) + "\n"
            with open(manifest, "a", encoding="utf-8") as handle:
                handle.write(line)


def _create_temporary(path: Path) -> tuple[int, Path]:
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{next(_counter)}.tmp")
        with contextlib.suppress(FileExistsError):
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` with the target ``path`` as its file name (not the temporary file's)."""
    if err.errno is None:
        return err
    return type(err)(err.errno, err.strerror or os.strerror(err.errno), str(path))


def atomic_write_with(write: Callable[[str], Any], path: str | os.PathLike) -> Path:
    """Let ``write(name)`` write a file, then move it to ``path`` atomically (creating its
    folder; the mode follows the umask); return the path. For writers that take a file name,
    such as ``safetensors.torch.save_file``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _record(path)
        fd, tmp = _create_temporary(path)
    except OSError as err:
        raise _naming(err, path) from err
    try:
        os.close(fd)
        mode = os.stat(tmp).st_mode & 0o777
        write(str(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating its folder); return the path.

    The file's mode follows the umask (0o644 under the usual 022), like a file written with
    ``open``. An ``OSError`` (a full disk, no permission) names ``path``.
    """

    def write(name: str) -> None:
        with open(name, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write_with(write, path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def refuse_html(path: str | os.PathLike, what: str, kind: str = "weights") -> None:
    """Raise ``ValueError`` if the file at ``path`` is an HTML page (a failed download) instead
    of the ``kind`` of file a ``what`` is."""
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    if head.startswith((b"<!doctype", b"<html")):
        raise ValueError(
            f"{what} file {path} is an HTML page, not {kind}: the download saved an error or "
            "confirmation page (Google Drive does this when its quota is exceeded); delete it, "
            "download the file again and check its size"
        )


def _update(digest: Any, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of the tensors' shapes, dtypes and bytes, in order."""
    import hashlib

    digest = hashlib.sha256()
    for i, tensor in enumerate(tensors):
        _update(digest, str(i), torch.as_tensor(tensor))
    return digest.hexdigest()[:16]


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a module's state: every parameter and buffer by name,
    computed afresh on each call, so changed weights give another digest."""
    import hashlib

    digest = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        _update(digest, name, tensor)
    return digest.hexdigest()[:16]
