"""The one safe checkpoint reader: ``torch.load(..., weights_only=True)`` behind checks that turn
every way a download or a save goes wrong into an error naming the file and the problem.

Every loader of a ``torch.save`` file (score_sde, guided-diffusion, RobustBench and torchvision
classifiers) reads through :func:`read_checkpoint`; safetensors files (the embedded zoo) need no
such care.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .io import refuse_html

__all__ = ["describe_load_error", "read_checkpoint", "without_unsafe_advice"]

_CODE = (
    re.compile(r"(?i)unsupported (?:global: )?GLOBAL ([\w.]+)"),
    re.compile(r"unrecognized function (\S+)"),
    re.compile(r"Can only (?:build|create new object)[^<]*<class '([\w.]+)'>"),
)
_ADVICE = re.compile(r"weights_only|safe_globals|pickle\.load|trust", re.IGNORECASE)


def without_unsafe_advice(text: str) -> str:
    """torch's loading message without its wrapper and without its advice to load unsafely
    (``weights_only=False`` runs whatever code the file carries: never suggested here)."""
    inner = re.search(r"WeightsUnpickler error: (.*)", text, flags=re.S)
    text = inner.group(1) if inner else text
    text = re.sub(r"Weights only load failed\.?", "", text)
    kept: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
        if not sentence or _ADVICE.search(sentence):
            continue
        if kept and len(" ".join([*kept, sentence])) > 160:
            break
        kept.append(sentence)
    return " ".join(kept)[:200]


def describe_load_error(err: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in words for the user: a file that
    pickles Python objects (code) or a truncated or corrupt one; never torch's advice to retry
    with ``weights_only=False``."""
    text = str(err)
    for pattern in _CODE:
        match = pattern.search(text)
        if match:
            return (
                f"it pickles Python objects ({match.group(1)}), not only tensors, and "
                "weights-only loading does not run them; re-save just its state_dict with "
                "torch.save(model.state_dict(), path) from a source you trust"
            )
    cause = f"{type(err).__name__}: {without_unsafe_advice(text) or 'end of file'}"
    if isinstance(err, (pickle.UnpicklingError, EOFError)) or re.search(
        r"PytorchStreamReader|corrupt|zip|magic number", text
    ):
        return f"the file is truncated or corrupt ({cause})"
    return f"the file is truncated or corrupt, or not a torch.save file ({cause})"


def read_checkpoint(
    path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)`` for a ``what`` file ("score_sde checkpoint", ...).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a folder, an empty file, an HTML page (a failed download), a truncated or
            corrupt file, or one that pickles Python objects, each said in the message.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(
            f"{what} file {path} is empty (0 bytes): truncated or corrupt, the download or save "
            "did not finish"
        )
    refuse_html(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"could not read {what} {path} ({size} bytes) with torch.load(weights_only=True): "
            f"{describe_load_error(err)}"
        ) from err


def check_finite_weights(model: torch.nn.Module, what: str, path: object) -> torch.nn.Module:
    """``model`` itself when every floating parameter and buffer is finite; a ValueError
    naming ``what``, ``path`` and the first bad tensor otherwise (NaN or inf weights make
    every output NaN, or a purifier silently useless)."""
    bad = [
        name
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise ValueError(
            f"{what} {path} holds non-finite weights (NaN or inf) in {len(bad)} tensor(s), "
            f"first {bad[0]!r}: the file is corrupt or its training diverged"
        )
    return model
