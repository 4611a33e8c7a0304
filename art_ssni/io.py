"""File input and output shared by the whole package: atomic writes, the HTML-page refusal, and
the content digests that fingerprint a run's inputs.

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

__all__ = [
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "module_digest",
    "refuse_html",
    "tensor_digest",
]


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
