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

__all__ = ["read_checkpoint"]


def _describe(err: Exception) -> str:
    text = str(err)
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if match:
        return (
            f"it pickles Python objects ({match.group(1)}), not only tensors, and weights-only "
            "loading does not run them; re-save just its state_dict with "
            "torch.save(model.state_dict(), path) from a source you trust"
        )
    cause = f"{type(err).__name__}: {text.split('. ')[0].strip()[:80] or 'end of file'}"
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
            f"{_describe(err)}"
        ) from err
