"""File input and output shared by the whole package: atomic writes and the HTML-page refusal.

A file written here either keeps its old content or gets the whole new one, never half of
it: the bytes go to a temporary file in the target folder, are flushed to disk, and the
temporary file is renamed over the target (one ``os.replace``). A crash or a kill leaves
at most a hidden ``.<name>.<random>.tmp`` behind, never a truncated result.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "refuse_html"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating its folder); return the path.

    The file is readable by everyone (mode 0o644), like a file written with ``open``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def refuse_html(path: str | os.PathLike, what: str) -> None:
    """Raise ``ValueError`` if the file at ``path`` is an HTML page (a failed download)."""
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    if head.startswith((b"<!doctype", b"<html")):
        raise ValueError(
            f"{what} file {path} is an HTML page, not weights: the download saved an error or "
            "confirmation page (Google Drive does this when its quota is exceeded); delete it, "
            "download the file again and check its size"
        )
