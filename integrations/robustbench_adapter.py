"""RobustBench faces: zoo classifiers offline, purified models, and a randomised-defence benchmark.

- :func:`load_classifier`: a RobustBench model-zoo classifier from the local file RobustBench
  itself would use (``model_dir/<dataset>/<threat_model>/<name>.pt``), downloading through
  robustbench's own loader only when the file is missing and the machine is online.
- :func:`purified_model`: a RobustBench-compatible model ([0, 1] NCHW in, logits out, eval).
- :func:`benchmark_purified`: ``robustbench.eval.benchmark`` for a randomised defence. RobustBench
  always runs standard AutoAttack and judges from one forward pass, which suits only
  deterministic models; this runs AutoAttack ``rand`` and re-judges over ``draws`` passes
  (:func:`~art_ssni.evaluation.autoattack.autoattack_rand`), and can write a RobustBench-format
  ``model_info`` JSON flagged ``unreliable`` with a footnote naming the protocol. Such a file
  is for side-by-side comparison, never a leaderboard entry.

robustbench 1.1.1 imports a module ``autoattack`` that is not on the package index;
importing ``integrations`` (or :func:`import_robustbench`) installs
:mod:`integrations.autoattack_compat` under that name (a real ``autoattack`` install wins): the
upstream constructor and ``run_standard_evaluation`` over ``pyautoattack``, so
``robustbench.eval.benchmark`` runs. It runs AutoAttack standard and judges from one pass, the
wrong protocol for a randomised defence; use :func:`benchmark_purified` for those.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import socket
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from art_ssni._compat import import_torchvision
from art_ssni.checkpoints import describe_load_error, read_checkpoint, without_unsafe_advice
from art_ssni.evaluation.autoattack import autoattack_rand, format_eps
from art_ssni.io import atomic_write_text, refuse_html
from art_ssni.leaderboard import ROBUSTBENCH_FIELDS
from art_ssni.models.classifiers import _as_state_dict, _freeze
from art_ssni.models.defended import DefendedClassifier
from art_ssni.validation import check_images, check_labels, check_number

from .autoattack_compat import install as install_autoattack

__all__ = [
    "BenchmarkResult",
    "MODEL_INFO_FIELDS",
    "benchmark_purified",
    "import_robustbench",
    "load_classifier",
    "purified_model",
    "write_model_info",
]

MODEL_INFO_FIELDS = ROBUSTBENCH_FIELDS
DESCRIPTIVE_FIELDS = {
    "link": str,
    "name": str,
    "authors": str,
    "additional_data": bool,
    "venue": str,
    "architecture": str,
    "reported": str,
    "footnote": str,
}
_ONLINE_PROBE = ("drive.google.com", 443)


def import_robustbench() -> types.ModuleType:
    """Import robustbench, with the torchvision shim and ``pyautoattack`` as ``autoattack``."""
    import_torchvision()
    install_autoattack()
    return importlib.import_module("robustbench")


def _online(timeout: float = 3.0) -> bool:
    """Whether the download host answers (robustbench fetches checkpoints from Google Drive)."""
    try:
        with socket.create_connection(_ONLINE_PROBE, timeout=timeout):
            return True
    except OSError:
        return False


def _enums(dataset: str, threat_model: str) -> tuple[Any, Any]:
    import_robustbench()
    enums = importlib.import_module("robustbench.model_zoo.enums")
    try:
        dataset_ = enums.BenchmarkDataset(dataset)
    except ValueError:
        choices = [d.value for d in enums.BenchmarkDataset]
        raise ValueError(f"dataset must be one of {choices}, got {dataset!r}") from None
    try:
        threat_ = enums.ThreatModel(threat_model)
    except ValueError:
        choices = [t.value for t in enums.ThreatModel]
        raise ValueError(f"threat_model must be one of {choices}, got {threat_model!r}") from None
    return dataset_, threat_


def _check_file(path: Path, what: str) -> None:
    """Raise a clear error for an HTML page, an empty file or a zip archive cut short."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{what} file {path} is empty (0 bytes): the download did not finish")
    refuse_html(path, what)
    with open(path, "rb") as handle:
        if handle.read(4) == b"PK\x03\x04":
            handle.seek(max(size - 65557, 0))
            if b"PK\x05\x06" not in handle.read():
                raise ValueError(
                    f"{what} file {path} ({size} bytes) is truncated: its zip directory is "
                    "missing; delete it and download the checkpoint again"
                )


def _load_state_dict_file(
    entry: Mapping[str, Any], name: str, dataset_: Any, path: Path, what: str
) -> nn.Module:
    """The zoo architecture with weights read by ``torch.load(weights_only=True)``."""
    _check_file(path, what)
    checkpoint = read_checkpoint(path, what)
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("last"), Mapping):
        checkpoint = checkpoint["last"]
    state_dict = _as_state_dict(checkpoint, path, what)
    utils = importlib.import_module("robustbench.utils")
    try:
        model = utils._safe_load_state_dict(entry["model"](), name, state_dict, dataset_)
    except RuntimeError as err:
        raise ValueError(f"{what} file {path} does not fit the architecture: {err}") from err
    return _freeze(model)


def load_classifier(
    name: str,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | os.PathLike = "./models",
    custom_checkpoint: str | os.PathLike | None = None,
) -> nn.Module:
    """A RobustBench model-zoo classifier in eval mode with frozen weights ([0, 1] input).

    The checkpoint is ``model_dir/<dataset>/<threat_model>/<name>.pt`` as RobustBench stores
    it, or ``custom_checkpoint`` (a file of weights for the same architecture). Single-file
    CIFAR-10/100 models are read here with ``torch.load(weights_only=True)`` (a raw state_dict
    or one under ``state_dict``/``last``, ``module.``/``model.`` prefixes removed) and loaded
    into the zoo architecture. ImageNet models, ensembles and timm-registered models go through
    ``robustbench.utils.load_model`` after their local files are checked. A missing file is
    downloaded by robustbench only when the download host answers; offline it is a
    ``FileNotFoundError`` naming the path. An HTML page or a truncated file is a ``ValueError``.
    """
    dataset_, threat_ = _enums(dataset, threat_model)
    zoo_threat = importlib.import_module("robustbench.model_zoo.enums").ThreatModel(
        threat_.value.replace("_3d", "")
    )
    utils = importlib.import_module("robustbench.utils")
    timm = importlib.import_module("timm")
    timm_name = f"{name.lower().replace('-', '_')}_{dataset_.value}_{zoo_threat.value.lower()}"
    if timm.is_model(timm_name):
        return _freeze(
            utils.load_model(
                name,
                model_dir=str(model_dir),
                dataset=dataset_,
                threat_model=zoo_threat,
                custom_checkpoint=str(custom_checkpoint or ""),
            )
        )
    models = importlib.import_module("robustbench.model_zoo").model_dicts[dataset_][zoo_threat]
    if name not in models:
        raise ValueError(
            f"{name!r} is not in RobustBench's {dataset_.value}/{zoo_threat.value} model zoo "
            f"(e.g. {list(models)[:5]})"
        )
    entry = models[name]
    what = f"RobustBench {dataset_.value}/{zoo_threat.value} {name!r}"
    ids = entry["gdrive_id"]
    ours = not isinstance(ids, list) and dataset_.value != "imagenet"
    if custom_checkpoint is not None:
        if not ours:
            raise ValueError(
                f"custom_checkpoint is supported for single-file CIFAR models only, not {what}"
            )
        path = Path(custom_checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"custom checkpoint {path} for {what} does not exist")
        return _load_state_dict_file(entry, name, dataset_, path, what)
    if ids is None:
        raise ValueError(f"{what} has no checkpoint in RobustBench's zoo (no gdrive_id)")
    path = Path(model_dir) / dataset_.value / zoo_threat.value / f"{name}.pt"
    files = [Path(f"{path}_m{i}.pt") for i in range(len(ids))] if isinstance(ids, list) else [path]
    if dataset_.value == "imagenet" and "Standard" in name:
        files = []  # torchvision's own weights, fetched by torchvision
    missing = [f for f in files if not f.is_file()]
    for file in files:
        if file not in missing:
            _check_file(file, what)
    if missing and not _online():
        raise FileNotFoundError(
            f"{what} checkpoint not found at {', '.join(map(str, missing))} and the download host "
            f"is unreachable; copy the file there (RobustBench's layout is "
            f"<model_dir>/{dataset_.value}/{zoo_threat.value}/{name}.pt)"
        )
    if ours and not missing:
        return _load_state_dict_file(entry, name, dataset_, path, what)
    try:
        model = utils.load_model(
            name, model_dir=str(model_dir), dataset=dataset_, threat_model=zoo_threat
        )
    except Exception as err:
        for file in files:
            if file.is_file():
                _check_file(file, what)
        text = str(err)
        loading = isinstance(err, pickle.UnpicklingError) or "Weights only" in text
        reason = (
            describe_load_error(err)
            if loading
            else f"{type(err).__name__}: {without_unsafe_advice(text)}"
        )
        raise ValueError(f"robustbench could not load {what}: {reason}") from err
    return _freeze(model)


def purified_model(
    classifier: nn.Module,
    purifier: nn.Module | None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DefendedClassifier:
    """A RobustBench-compatible model: [0, 1] NCHW in, ``classifier(normalise(purifier(x)))``
    logits out, frozen and in eval mode (a :class:`DefendedClassifier`)."""
    return DefendedClassifier(purifier, classifier, mean, std).eval()


class BenchmarkResult(tuple):
    """``(clean_acc, robust_acc)`` like RobustBench's ``benchmark``; ``details`` has the rest.

    Both numbers are the majority vote over the draws. ``details`` holds the full
    single / vote / mean / worst dicts (``"clean"``, ``"robust"``), the ``"protocol"``, the
    gradient mode and the settings; ``x_adv`` the final adversarial examples.
    """

    details: dict[str, Any]
    x_adv: torch.Tensor

    def __new__(
        cls, clean_acc: float, robust_acc: float, details: dict[str, Any], x_adv: torch.Tensor
    ) -> BenchmarkResult:
        result = super().__new__(cls, (clean_acc, robust_acc))
        result.details = details
        result.x_adv = x_adv
        return result

    @property
    def clean_acc(self) -> float:
        return self[0]

    @property
    def robust_acc(self) -> float:
        return self[1]


def _load_data(
    dataset_: Any,
    threat_: Any,
    n_examples: int,
    data_dir: str,
    preprocessing: Any,
    model_name: str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    import_robustbench()
    data = importlib.import_module("robustbench.data")
    if dataset_.value in ("cifar10", "cifar100"):
        datasets = import_torchvision().datasets
        cls = datasets.CIFAR10 if dataset_.value == "cifar10" else datasets.CIFAR100
        try:
            cls(root=data_dir, train=False, download=False)
        except RuntimeError as err:
            if not _online():
                raise FileNotFoundError(
                    f"{dataset_.value} test set not found under {data_dir} (torchvision's "
                    f"layout) and the machine is offline; copy it there or pass x and y"
                ) from err
    prepr = data.get_preprocessing(dataset_, threat_, model_name, preprocessing)
    try:
        return data.load_clean_dataset(dataset_, n_examples, data_dir, prepr)
    except (OSError, RuntimeError) as err:
        raise FileNotFoundError(
            f"could not load the {dataset_.value} test set from {data_dir}: {err}; pass x and y"
        ) from err


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def write_model_info(
    root: str | os.PathLike,
    dataset: str,
    threat_model: str,
    model_name: str,
    record: Mapping[str, Any],
) -> Path:
    """Write ``root/model_info/<dataset>/<threat_model>/<model_name>.json`` atomically.

    ``record`` must have exactly :data:`MODEL_INFO_FIELDS`. The file is written to a temporary
    name in the same folder and moved into place, so a crash never leaves half a file.
    """
    if set(record) != set(MODEL_INFO_FIELDS):
        extra = sorted(set(record) - set(MODEL_INFO_FIELDS))
        lacking = sorted(set(MODEL_INFO_FIELDS) - set(record))
        raise ValueError(
            f"model_info fields differ from RobustBench's: extra {extra}, missing {lacking}"
        )
    if not model_name or "/" in model_name or "\\" in model_name:
        raise ValueError(f"model_name must be a plain file name, got {model_name!r}")
    path = Path(root) / "model_info" / dataset / threat_model / f"{model_name}.json"
    ordered = {key: record[key] for key in MODEL_INFO_FIELDS}
    return atomic_write_text(path, json.dumps(ordered, indent=2) + "\n")


def _model_info_record(
    model: nn.Module,
    model_name: str,
    dataset: str,
    threat_model: str,
    eps: float,
    draws: int,
    details: Mapping[str, Any],
    info: Mapping[str, Any],
    existing: Mapping[str, Any],
) -> dict[str, Any]:
    if isinstance(model, DefendedClassifier):
        description = model.describe()
        parts = [p for p in (description["method"], description["classifier"]) if p]
    else:
        parts = [type(model).__name__]
    record: dict[str, Any] = {
        "link": "",
        "name": model_name,
        "authors": "",
        "additional_data": False,
        "venue": "N/A",
        "architecture": " + ".join(parts),
        "reported": "N/A",
    }
    record.update(
        {k: v for k, v in existing.items() if k in DESCRIPTIVE_FIELDS and k != "footnote"}
    )
    record.update({k: v for k, v in info.items() if k != "footnote"})
    clean, robust = details["clean"], details["robust"]
    footnote = (
        f"Randomised defence, not a RobustBench leaderboard entry: RobustBench's standard "
        f"AutoAttack assumes a deterministic model. Numbers from {details['protocol']}. "
        f"Accuracies are the majority vote over {draws} passes (worst of {draws}: clean "
        f"{_percent(clean['worst'])}%, robust {_percent(robust['worst'])}%; single pass: clean "
        f"{_percent(clean['single'])}%, robust {_percent(robust['single'])}%)."
    )
    if info.get("footnote"):
        footnote += "<br>" + info["footnote"]
    record.update(
        {
            "number_forward_passes": draws,
            "dataset": dataset,
            "eps": format_eps(eps, threat_model),
            "clean_acc": _percent(clean["vote"]),
            "autoattack_acc": _percent(robust["vote"]),
            "unreliable": True,
            "footnote": footnote,
        }
    )
    return record


def benchmark_purified(
    model: nn.Module,
    n_examples: int = 512,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    eps: float | None = None,
    draws: int = 10,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    data_dir: str = "./data",
    to_disk: bool = False,
    model_name: str | None = None,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    *,
    eot_iter: int = 20,
    n_iter: int = 100,
    seed: int = 0,
    preprocessing: Any = None,
    info: Mapping[str, Any] | None = None,
    info_root: str | os.PathLike = ".",
    verbose: bool = False,
) -> BenchmarkResult:
    """``robustbench.eval.benchmark`` for a randomised defence: AutoAttack rand, re-judged.

    Evaluates the first ``n_examples`` test images (or of ``x``, ``y`` when given) with
    :func:`~art_ssni.evaluation.autoattack.autoattack_rand` (``eot_iter`` EOT draws,
    ``n_iter`` iterations) and measures clean and robust accuracy over the same ``draws``
    passes of the defence; with ``x`` and ``y`` given, ``dataset`` may also name a data set
    RobustBench does not know (e.g. the embedded ``digits``). ``eps`` defaults to
    RobustBench's standard budget (8/255 CIFAR Linf, 4/255 ImageNet Linf, 0.5 L2). Data come
    from robustbench's loaders, which read a local torchvision copy under ``data_dir`` offline.

    Returns a :class:`BenchmarkResult`: it unpacks as ``clean_acc, robust_acc`` (both the
    majority vote over ``draws``), and ``.details`` holds the single / vote / mean / worst
    dicts and the protocol. ``to_disk=True`` writes RobustBench's model_info JSON under
    ``info_root`` (needs ``model_name``); ``info`` supplies its descriptive fields (link, name,
    authors, additional_data, venue, architecture, reported, footnote), kept from an existing
    file otherwise. The file is always marked ``unreliable`` with a footnote naming the protocol.
    """
    try:
        dataset_, threat_ = _enums(dataset, threat_model)
        dataset_name, threat_name = dataset_.value, threat_.value
    except ValueError:
        if x is None:
            raise
        dataset_name, threat_name = str(dataset), str(threat_model)
    if threat_name not in ("Linf", "L2"):
        raise ValueError(
            f"threat_model must be 'Linf' or 'L2' for AutoAttack, got {threat_model!r}"
        )
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
        raise ValueError(f"n_examples must be an integer >= 1, got {n_examples!r}")
    for name, value in (("draws", draws), ("batch_size", batch_size), ("eot_iter", eot_iter)):
        check_number(value, name, low=1, integer=True)
    check_number(n_iter, "n_iter", low=1, integer=True)
    if eps is not None:
        check_number(eps, "eps", low=0.0, low_open=True)
    if to_disk and not model_name:
        raise ValueError("to_disk=True needs model_name (the JSON file's name)")
    info = dict(info or {})
    unknown = sorted(set(info) - set(DESCRIPTIVE_FIELDS))
    if unknown:
        raise ValueError(
            f"info may set only {sorted(DESCRIPTIVE_FIELDS)}; the measured fields are written by "
            f"the benchmark, got {unknown}"
        )
    for key, value in info.items():
        if not isinstance(value, DESCRIPTIVE_FIELDS[key]):
            raise ValueError(
                f"info[{key!r}] must be a {DESCRIPTIVE_FIELDS[key].__name__}, got {value!r}"
            )
    if eps is None:
        eps = 0.5 if threat_name == "L2" else 4 / 255 if dataset_name == "imagenet" else 8 / 255
    if (x is None) != (y is None):
        raise ValueError("give both x and y, or neither")
    if x is None:
        x, y = _load_data(dataset_, threat_, n_examples, data_dir, preprocessing, model_name)
    check_images(x)
    check_labels(y, int(x.shape[0]))
    x, y = x[:n_examples].float(), y[:n_examples]
    if device is not None:
        model = model.to(device)
    if getattr(model, "training", False):
        model.eval()

    x_adv, details = autoattack_rand(
        model,
        x,
        y,
        norm=threat_name,
        eps=eps,
        eot_iter=eot_iter,
        n_iter=n_iter,
        judge_draws=draws,
        batch_size=batch_size,
        seed=seed,
        verbose=verbose,
    )
    details = {**details, "n_examples": int(x.shape[0]), "draws": draws, "eps": eps}
    details.update({"dataset": dataset_name, "threat_model": threat_name})
    if to_disk:
        model_name = str(model_name)
        folder = Path(info_root) / "model_info" / dataset_name / threat_name
        existing: dict[str, Any] = {}
        if (folder / f"{model_name}.json").is_file():
            existing = json.loads((folder / f"{model_name}.json").read_text(encoding="utf-8"))
        record = _model_info_record(
            model, model_name, dataset_name, threat_name, eps, draws, details, info, existing
        )
        details["model_info_path"] = str(
            write_model_info(info_root, dataset_name, threat_name, model_name, record)
        )
    return BenchmarkResult(details["clean"]["vote"], details["robust"]["vote"], details, x_adv)
