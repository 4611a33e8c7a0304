"""Import shims for the packaging defects of torch 2.13 CPU with torchvision 0.28.

The torchvision 0.28.0 wheel is a CUDA build: next to a CPU-only torch its compiled ops
are missing and ``import torchvision`` fails on registering fake kernels for
``torchvision::nms``/``qnms``. Declaring those two schemas first lets the pure-Python parts
(transforms, datasets, model definitions) load; the compiled ops stay unavailable. The shim
runs only after the real import failed with exactly that error, so it never hides another.
"""

from __future__ import annotations

import importlib
import sys
import types

_MISSING_OP = "operator torchvision::"
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None


def _drop_partial(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def import_torchvision() -> types.ModuleType:
    """Import torchvision, declaring its missing op schemas if the CUDA wheel needs them."""
    global _library
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if _MISSING_OP not in str(err):
            raise
    import torch

    _drop_partial("torchvision")
    if _library is None:
        _library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS.values():
            try:
                _library.define(schema)
            except RuntimeError:
                pass
    return importlib.import_module("torchvision")
