"""Adapters to torchattacks and RobustBench.

``torchattacks_adapter``: the engine's adaptive attacks as ``torchattacks.Attack`` classes (every
registered attack through :class:`RegisteredAttack`) and
:class:`EOTAttack`, which judges success over several draws of a randomised defence.
``robustbench_adapter``: zoo classifiers from local files, purified models, and
``benchmark_purified`` (AutoAttack rand re-judged over draws, RobustBench-format results).
Module names differ from the libraries' so they never shadow them.
"""

from art_ssni._compat import import_torchvision

from .autoattack_compat import install as install_autoattack
from .robustbench_adapter import (
    MODEL_INFO_FIELDS,
    BenchmarkResult,
    benchmark_purified,
    import_robustbench,
    load_classifier,
    purified_model,
    write_model_info,
)
from .torchattacks_adapter import (
    BPDAEOT,
    JUDGES,
    PGDEOT,
    EOTAttack,
    RegisteredAttack,
    SelectorAwarePGD,
)

import_torchvision()  # robustbench imports torchvision, which needs the shim on a CPU torch
install_autoattack()

__all__ = [
    "BPDAEOT",
    "JUDGES",
    "MODEL_INFO_FIELDS",
    "PGDEOT",
    "BenchmarkResult",
    "EOTAttack",
    "RegisteredAttack",
    "SelectorAwarePGD",
    "benchmark_purified",
    "import_robustbench",
    "install_autoattack",
    "load_classifier",
    "purified_model",
    "write_model_info",
]
