"""Every public entry point against every class of bad input, as tables.

An entry point is one row of a table; a class of bad input is one column. Each cell expects
either a clear error (the exception type and a message naming the offending argument and the
problem) or a correct result (checked against a property or a reference computed another
way). Adding an entry point is adding a row. A cell whose fix belongs to a module this suite
does not own is marked ``xfail(strict=True)`` with the reason, so it fails loudly once fixed.

Tables: images (non-finite, out of range, wrong rank / channels / size / dtype, empty, numpy
and list input) through the purifiers of ``METHODS``, the policies of ``NOISES``,
``DefendedClassifier``, the ART defence, the torchattacks and RobustBench adapters and both
evaluation functions; numeric parameters (NaN, inf, bools, strings, out of range) of the same
entry points; broken files through the loaders; and the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import art_ssni
from art_ssni import DefendedClassifier, DiffPure, DiffusionModel, EPSNorm, ReferenceStats
from art_ssni.cli import evaluate as cli_evaluate
from art_ssni.cli import main
from art_ssni.models.zoo import load_embedded_classifier, load_embedded_eps_net, zoo_root
from art_ssni.noise.registry import NOISES
from art_ssni.presets import get_preset
from art_ssni.purification.registry import METHODS

from tiny import TinyClassifier, TinyEpsNet

LEVEL = 6


# --- expectations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Raises:
    """The call raises ``error`` with a message matching ``pattern`` (a regular expression)."""

    error: type[BaseException]
    pattern: str


@dataclass(frozen=True)
class Returns:
    """The call returns a result that ``check(result, given)`` accepts."""

    check: Callable[[Any, Any], None]


Expect = Raises | Returns


def _run(call: Callable[[], Any], expect: Expect, given: Any = None) -> None:
    if isinstance(expect, Raises):
        with pytest.raises(expect.error, match=expect.pattern):
            call()
    else:
        expect.check(call(), given)


def _xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


# --- the models (shipped 8x8 digits models and the tiny test networks) --------------------


@pytest.fixture(scope="module")
def digits():
    diffusion = DiffusionModel(load_embedded_eps_net(), image_shape=(1, 8, 8), name="digits")
    stats = ReferenceStats.load(zoo_root() / "digits_stats.safetensors")
    return diffusion, load_embedded_classifier(), stats


def _settings(name: str):
    """The method's digits setting at level ``LEVEL`` with 2 steps (a stage schedule keeps its
    shape at small levels)."""
    spec = METHODS[name]
    preset = get_preset("digits")
    settings = preset.method(name) if name in preset.methods else spec.make_settings()
    if hasattr(settings, "stages"):
        return dataclasses.replace(
            settings, stages=((3, 1), (LEVEL, 2)), surrogate_stages=((LEVEL, 1),), t_star=None
        )
    return spec.retarget(settings, LEVEL, 2, 1)


def _purifier(name: str, digits, **changes):
    diffusion, classifier, _ = digits
    settings = dataclasses.replace(_settings(name), **changes)
    return METHODS[name].build(diffusion, settings, classifier=classifier, generator=0)


def _policy(noise: str, digits, **changes):
    diffusion, _, stats = digits
    options = {"bias": 0.0, "tau": stats.std, "bounds": "reference", **changes}
    level = options.pop("t_star", LEVEL)
    eps_norm = EPSNorm(diffusion, num_levels=stats.num_levels)
    return NOISES[noise].build(level, eps_norm=eps_norm, stats=stats, **options)


def _defended(digits) -> DefendedClassifier:
    diffusion, classifier, _ = digits
    return DefendedClassifier(DiffPure(diffusion, t_star=LEVEL, steps=2, generator=0), classifier)


def _labels(x: Any) -> torch.Tensor:
    try:
        count = len(x)
    except TypeError:
        count = 2
    return torch.arange(count) % 10


EVALUATE = dict(noises="fixed", attacks="pgd-eot", baseline=False, n_images=2, batch_size=2)
EVALUATE.update(iterations=1, eot=1, draws=1, steps=2, t_star=LEVEL, progress=False, runs=1)
EVALUATE.update(judge_draws=0)


# --- checks of a correct result ---------------------------------------------------------


def _same_as_float32(call: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Any, Any], None]:
    """The result of a float64 (or numpy) batch equals the float32 call's, within float32."""

    def check(result: Any, given: Any) -> None:
        reference = call(torch.as_tensor(given, dtype=torch.float32))
        assert torch.as_tensor(result).shape == reference.shape
        torch.testing.assert_close(
            torch.as_tensor(result).float(), reference.float(), rtol=0, atol=1e-4
        )

    return check


def _levels(result: Any, given: Any) -> None:
    assert result.dtype == torch.long and result.shape == (len(given),)
    assert bool(((result >= 0) & (result <= 1000)).all())


def _adversarial(eps: float) -> Callable[[Any, Any], None]:
    def check(result: Any, given: Any) -> None:
        x = torch.as_tensor(given, dtype=result.dtype)
        assert result.shape == x.shape and torch.isfinite(result).all()
        assert float((result - x).abs().max()) <= eps + 1e-6
        assert 0.0 <= float(result.min()) and float(result.max()) <= 1.0

    return check


def _accuracies(result: Any, given: Any) -> None:
    clean, robust = result
    assert 0.0 <= robust <= clean <= 1.0 or 0.0 <= clean <= 1.0


def _evaluated(result: Any, given: Any) -> None:
    (row,) = result["rows"]
    assert row["n"] == 2 and 0.0 <= row["robust"]["vote"] <= 1.0


# --- table 1: images ------------------------------------------------------------------------


def _nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    return x


def _inf(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[1, 0, 2, 3] = float("inf")
    return x


IMAGE_CASES: dict[str, Callable[[torch.Tensor], Any]] = {
    "nan": _nan,
    "inf": _inf,
    "0-255": lambda x: x * 255,
    "normalised": lambda x: (x - 0.5) / 0.25,
    "rank": lambda x: x[0],
    "channels": lambda x: x.repeat(1, 3, 1, 1),
    "size": lambda x: torch.nn.functional.interpolate(x, size=(16, 16)),
    "uint8": lambda x: (x * 255).to(torch.uint8),
    "empty": lambda x: x[:0],
    "float64": lambda x: x.double(),
    "numpy": lambda x: x.numpy(),
    "list": lambda x: x.tolist(),
}


def _image_errors(name: str) -> dict[str, Expect]:
    """What every image-taking entry point answers, for an argument called ``name``."""
    return {
        "nan": Raises(ValueError, rf"{name} contains 1 NaN and 0 Inf values"),
        "inf": Raises(ValueError, rf"{name} contains 0 NaN and 1 Inf values"),
        "0-255": Raises(ValueError, rf"{name} must have values in \[0, 1\].*\[0, 255\] pixels"),
        "normalised": Raises(ValueError, rf"{name} must have values in \[0, 1\].*normalised"),
        "rank": Raises(ValueError, rf"{name} must be a 4-D batch \(B, C, H, W\)"),
        "channels": Raises(ValueError, rf"{name} has 3 channels but the model expects 1"),
        "size": Raises(ValueError, rf"{name} has spatial size \(16, 16\).*expects \(8, 8\)"),
        "uint8": Raises(ValueError, rf"{name} must be a floating-point tensor.*torch.uint8"),
        "empty": Raises(ValueError, rf"{name} is an empty batch"),
        "numpy": Raises(TypeError, rf"{name} must be a torch.Tensor, got ndarray"),
        "list": Raises(TypeError, rf"{name} must be a torch.Tensor, got list"),
    }


@dataclass(frozen=True)
class ImageEntry:
    """An entry point taking images: ``make(digits, tmp_path)`` returns ``call(x)``; the
    argument is called ``name`` in its messages; ``correct`` checks a float64 result (and
    ``overrides`` replaces expectations: numpy accepted, or xfail reasons)."""

    make: Callable[[Any, Path], Callable[[Any], Any]]
    correct: Callable[[Callable[[Any], Any]], Callable[[Any, Any], None]]
    name: str = "x"
    overrides: dict[str, Expect] = dataclasses.field(default_factory=dict)
    xfails: dict[str, str] = dataclasses.field(default_factory=dict)


def _method_entry(method: str) -> ImageEntry:
    def make(digits, tmp_path):
        purifier = _purifier(method, digits)
        return lambda x: purifier(x, generator=0)  # the same seed for every call

    return ImageEntry(make, _same_as_float32)


def _noise_entry(noise: str) -> ImageEntry:
    def make(digits, tmp_path):
        policy = _policy(noise, digits)
        return lambda x: policy(x, generator=0)

    if noise == "fixed":
        # one level for any image shape: the purifier, not the policy, checks the shape
        shapeless = Returns(_levels)
        return ImageEntry(
            make, lambda call: _levels, overrides={"channels": shapeless, "size": shapeless}
        )
    shape = Raises(ValueError, r"image_shape: statistics were computed on \(1, 8, 8\)")
    return ImageEntry(
        make,
        lambda call: _levels,
        overrides={"channels": shape, "size": shape},
    )


def _defended_entry(digits, tmp_path):
    return lambda x: _defended(digits)(x)  # a fresh random stream for every call


def _art_entry(digits, tmp_path):
    from art_ssni.defences import DiffPurePyTorch

    def call(x):
        defence = DiffPurePyTorch(digits[0], t_star=LEVEL, steps=2, device_type="cpu", generator=0)
        return defence.forward(x)[0]

    return call


def _attack_entry(kind: str):
    def make(digits, tmp_path):
        from integrations import PGDEOT, EOTAttack, RegisteredAttack

        model = _defended(digits)
        pgd = PGDEOT(model, eps=0.1, alpha=0.05, steps=1, eot_iter=1, seed=0)
        attack = {
            "pgd": pgd,
            "registered": RegisteredAttack(
                model, "pgd-eot", eps=0.1, step=0.05, iterations=1, eot=1, seed=0
            ),
            "eot": EOTAttack(pgd, n_draws=1),
        }[kind]
        return lambda x: attack(x, _labels(x))

    return make


def _purified_entry(digits, tmp_path):
    from integrations import purified_model

    diffusion, classifier, _ = digits

    def call(x):
        purifier = DiffPure(diffusion, t_star=LEVEL, steps=2, generator=0)
        return purified_model(classifier, purifier)(x)

    return call


def _benchmark_entry(digits, tmp_path):
    from integrations import benchmark_purified

    model = _defended(digits)
    options = dict(n_examples=2, dataset="digits", eps=0.1, draws=1, eot_iter=1, n_iter=1)
    return lambda x: benchmark_purified(model, x=x, y=_labels(x), **options)


def _evaluate_entry(kind: str):
    def make(digits, tmp_path):
        diffusion, classifier, _ = digits
        out = iter(tmp_path / f"run{i}" for i in range(100))
        if kind == "library":
            return lambda x: art_ssni.evaluate(
                "digits", diffusion=diffusion, classifier=classifier, x=x, y=_labels(x),
                out=next(out), **EVALUATE,
            )  # fmt: skip
        return lambda x: cli_evaluate(
            diffusion, classifier, x, _labels(x), out=next(out), preset="digits", **EVALUATE
        )

    return make


EQUAL_RUNS = Returns(_evaluated)
ATTACK_KINDS = (("PGDEOT", "pgd"), ("RegisteredAttack", "registered"), ("EOTAttack", "eot"))
# torchattacks takes any model, so the model (the purifier inside) names a wrong shape
MODEL_SHAPE = {
    "channels": Raises(ValueError, r"x has 3 channels but the model expects 1"),
    "size": Raises(ValueError, r"x has spatial size \(16, 16\).*expects \(8, 8\)"),
}

IMAGE_ENTRIES: dict[str, ImageEntry] = {
    **{f"METHODS[{m}]": _method_entry(m) for m in METHODS},
    **{f"NOISES[{n}]": _noise_entry(n) for n in NOISES},
    "DefendedClassifier": ImageEntry(_defended_entry, _same_as_float32),
    "DiffPurePyTorch.forward": ImageEntry(_art_entry, _same_as_float32),
    **{
        f"integrations.{cls}": ImageEntry(
            _attack_entry(kind), lambda call: _adversarial(0.1), "images", MODEL_SHAPE
        )
        for cls, kind in (
            ("PGDEOT", "pgd"),
            ("RegisteredAttack", "registered"),
            ("EOTAttack", "eot"),
        )
    },
    "integrations.purified_model": ImageEntry(_purified_entry, _same_as_float32),
    "integrations.benchmark_purified": ImageEntry(_benchmark_entry, lambda call: _accuracies),
    "art_ssni.evaluate": ImageEntry(
        _evaluate_entry("library"),
        lambda call: _evaluated,
        overrides={"numpy": EQUAL_RUNS, "list": EQUAL_RUNS},
    ),
    "art_ssni.cli.evaluate": ImageEntry(
        _evaluate_entry("alias"),
        lambda call: _evaluated,
        overrides={"numpy": EQUAL_RUNS, "list": EQUAL_RUNS},
    ),
}


def _image_rows():
    for entry_name, entry in IMAGE_ENTRIES.items():
        for case in IMAGE_CASES:
            marks = [_xfail(entry.xfails[case])] if case in entry.xfails else []
            yield pytest.param(entry_name, case, id=f"{entry_name}-{case}", marks=marks)


@pytest.fixture(scope="module")
def clean_batch() -> torch.Tensor:
    from art_ssni.data import load_digits

    return load_digits("test")[0][:2].clone()


@pytest.mark.parametrize("entry_name, case", list(_image_rows()))
def test_images(entry_name, case, digits, clean_batch, tmp_path):
    entry = IMAGE_ENTRIES[entry_name]
    call = entry.make(digits, tmp_path)
    given = IMAGE_CASES[case](clean_batch)
    expected = {**_image_errors(entry.name), **entry.overrides}.get(case)
    if expected is None:
        expected = Returns(entry.correct(call))
    _run(lambda: call(given), expected, given)


# --- table 2: numeric parameters --------------------------------------------------------------

BAD_NUMBERS = {"nan": math.nan, "inf": math.inf, "bool": True, "string": "3", "negative": -1}


def _numeric_settings(method: str) -> list[str]:
    """The method's numeric settings (ints and floats, not bools) that it would run with."""
    settings = _settings(method)
    return [
        f.name
        for f in dataclasses.fields(settings)
        if isinstance(getattr(settings, f.name), (int, float))
        and not isinstance(getattr(settings, f.name), bool)
    ]


@dataclass(frozen=True)
class NumberEntry:
    """``build(digits, tmp_path, value)`` uses ``value`` for the parameter ``name``; every bad
    value must raise a ValueError (TypeError for a string where the library says so) whose
    message names the parameter."""

    build: Callable[[Any, Path, Any], Any]
    name: str
    allowed: tuple[str, ...] = ()
    xfails: dict[str, str] = dataclasses.field(default_factory=dict)


def _method_number(method: str, field: str) -> NumberEntry:
    def build(digits, tmp_path, value):
        return _purifier(method, digits, **{field: value})

    # a float setting may be 0 or negative only where the method says so (guidance scales...)
    return NumberEntry(build, field)


def _policy_number(noise: str, field: str) -> NumberEntry:
    def build(digits, tmp_path, value):
        return _policy(noise, digits, **{field: value})

    allowed = ("negative",) if field == "bias" else ()
    return NumberEntry(build, field, allowed)


def _defended_number(field: str) -> NumberEntry:
    def build(digits, tmp_path, value):
        diffusion, classifier, _ = digits
        purifier = DiffPure(diffusion, t_star=LEVEL, steps=2, generator=0)
        stats = {"mean": [0.5], "std": [0.25], field: [value]}
        return DefendedClassifier(purifier, classifier, **stats)

    allowed = ("negative",) if field == "mean" else ()
    return NumberEntry(build, field, allowed)


def _art_number(field: str) -> NumberEntry:
    def build(digits, tmp_path, value):
        from art_ssni.defences import DiffPurePyTorch

        return DiffPurePyTorch(
            digits[0], t_star=LEVEL, steps=2, device_type="cpu", **{field: value}
        )

    return NumberEntry(build, field)


def _attack_number(kind: str, field: str) -> NumberEntry:
    def build(digits, tmp_path, value):
        from integrations import PGDEOT, EOTAttack

        model = _defended(digits)
        if kind == "eot":
            return EOTAttack(PGDEOT(model, steps=1, eot_iter=1), **{field: value})
        return PGDEOT(model, **{field: value})

    return NumberEntry(build, field)


def _benchmark_number(field: str) -> NumberEntry:
    def build(digits, tmp_path, value):
        from integrations import benchmark_purified

        x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        options = dict(n_examples=2, dataset="digits", eps=0.1, draws=1, eot_iter=1, n_iter=1)
        options[field] = value
        return benchmark_purified(_defended(digits), x=x, y=_labels(x), **options)

    return NumberEntry(build, field)


def _evaluate_number(kind: str, field: str) -> NumberEntry:
    def build(digits, tmp_path, value):
        diffusion, classifier, _ = digits
        x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        options = {**EVALUATE, field: value}
        if kind == "library":
            return art_ssni.evaluate(
                "digits", diffusion=diffusion, classifier=classifier, x=x, y=_labels(x),
                out=tmp_path / "run", **options,
            )  # fmt: skip
        return cli_evaluate(
            diffusion, classifier, x, _labels(x), out=tmp_path / "run", preset="digits", **options
        )

    allowed = ("negative",) if field == "bias" else ()
    return NumberEntry(build, field, allowed)


NUMBER_ENTRIES: dict[str, NumberEntry] = {
    **{f"METHODS[{m}].{f}": _method_number(m, f) for m in METHODS for f in _numeric_settings(m)},
    **{f"NOISES[ssni-l].{f}": _policy_number("ssni-l", f) for f in ("t_star", "bias")},
    **{f"NOISES[ssni-n].{f}": _policy_number("ssni-n", f) for f in ("t_star", "bias", "tau")},
    **{f"DefendedClassifier.{f}": _defended_number(f) for f in ("mean", "std")},
    **{f"DiffPurePyTorch.{f}": _art_number(f) for f in ("eot_samples", "batch_size")},
    **{f"PGDEOT.{f}": _attack_number("pgd", f) for f in ("eps", "alpha", "steps", "eot_iter")},
    **{f"EOTAttack.{f}": _attack_number("eot", f) for f in ("n_draws", "batch_size")},
    **{
        f"benchmark_purified.{f}": _benchmark_number(f)
        for f in ("n_examples", "eps", "draws", "eot_iter", "n_iter")
    },
    **{
        f"{name}.{f}": _evaluate_number(kind, f)
        for name, kind in (("art_ssni.evaluate", "library"), ("art_ssni.cli.evaluate", "alias"))
        for f in ("eps", "iterations", "draws", "t_star", "tau", "bias", "seed")
    },
}


NUMBER_XFAILS: dict[str, dict[str, str]] = {}


def _number_rows():
    for entry_name, entry in NUMBER_ENTRIES.items():
        xfails = {**entry.xfails, **NUMBER_XFAILS.get(entry_name, {})}
        for case in BAD_NUMBERS:
            if case in entry.allowed:
                continue
            marks = [_xfail(xfails[case])] if case in xfails else []
            yield pytest.param(entry_name, case, id=f"{entry_name}-{case}", marks=marks)


@pytest.mark.parametrize("entry_name, case", list(_number_rows()))
def test_numbers(entry_name, case, digits, tmp_path):
    entry = NUMBER_ENTRIES[entry_name]
    name = entry.name.split(".")[-1]
    with pytest.raises(ValueError, match=rf"{name}"):
        entry.build(digits, tmp_path, BAD_NUMBERS[case])


# --- table 2b: options of the evaluation functions ---------------------------------------------

OPTION_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "device meta": ({"device": "meta"}, "device 'meta' cannot run the models"),
    "device cpu:5": ({"device": "cpu:5"}, "device 'cpu:5': there is one CPU device"),
    "noises twice": ({"noises": "fixed,fixed"}, "noises names fixed more than once"),
    "attacks twice": ({"attacks": ["pgd-eot", "pgd-eot"]}, "attacks names pgd-eot more than"),
    "out empty": ({"out": ""}, "out must name a folder"),
    "unknown option": ({"temperature": 2}, r"unknown options \['temperature'\]"),
}
OPTION_XFAILS: dict[str, str] = {}


def _option_rows():
    for name in ("art_ssni.evaluate", "art_ssni.cli.evaluate"):
        for case in OPTION_CASES:
            xfail = name == "art_ssni.evaluate" and case in OPTION_XFAILS
            marks = [_xfail(OPTION_XFAILS[case])] if xfail else []
            yield pytest.param(name, case, id=f"{name}-{case}", marks=marks)


@pytest.mark.parametrize("entry_name, case", list(_option_rows()))
def test_options(entry_name, case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    diffusion = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8), name="tiny")
    classifier = TinyClassifier()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    change, message = OPTION_CASES[case]
    options = {**EVALUATE, "eps": 0.1, "out": tmp_path / "run", **change}
    out = options.pop("out")
    with pytest.raises(ValueError, match=message):
        if entry_name == "art_ssni.evaluate":
            art_ssni.evaluate(
                "digits", diffusion=diffusion, classifier=classifier, x=x, y=_labels(x),
                out=out, **options,
            )  # fmt: skip
        else:
            cli_evaluate(diffusion, classifier, x, _labels(x), out=out, preset="digits", **options)
    assert next(diffusion.parameters()).device.type == "cpu"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- table 3: files through the loaders -------------------------------------------------------


def _write(kind: str, folder: Path, suffix: str) -> Path:
    """A broken file of ``kind`` (or a missing path, or a folder) with ``suffix``."""
    path = folder / f"{kind}{suffix}"
    if kind == "missing":
        return path
    if kind == "folder":
        path.mkdir()
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "html":
        path.write_text("\n<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    elif kind == "text":
        path.write_text("epoch,loss\n1,0.3\n")
    elif kind == "truncated":
        if suffix == ".npz":
            np.savez(path, x=np.random.default_rng(0).random((40, 1, 8, 8)), y=np.arange(40))
        else:
            torch.save({"w": torch.randn(4000)}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "code":
        if suffix == ".npz":
            np.savez(path, x=np.array([_Runs()], dtype=object), y=np.arange(1))
        else:
            torch.save({"w": torch.zeros(1), "hook": _Runs()}, path)
    return path


class _Runs:
    """Pickles as a call of os.system: loading it with weights_only=False would run it."""

    def __reduce__(self):
        return (os.system, ("true",))


FILE_CASES = ("missing", "folder", "empty", "html", "text", "truncated", "code")
FILE_ERRORS: dict[str, Expect] = {
    "missing": Raises(FileNotFoundError, r"missing\.\w+"),
    "folder": Raises(ValueError, r"folder\.\w+ is not a regular file"),
    "empty": Raises(ValueError, r"empty\.\w+ is empty \(0 bytes\)"),
    "html": Raises(ValueError, r"html\.\w+ is an HTML page"),
    "text": Raises(ValueError, r"text\.\w+ .*not a torch.save file"),
    "truncated": Raises(ValueError, r"truncated\.\w+ .*truncated or corrupt"),
    "code": Raises(ValueError, r"code\.\w+ .*pickles Python objects \(posix\.system\)"),
}


@dataclass(frozen=True)
class FileEntry:
    load: Callable[[Path], Any]
    suffix: str = ".pt"
    overrides: dict[str, Expect] = dataclasses.field(default_factory=dict)
    xfails: dict[str, str] = dataclasses.field(default_factory=dict)


def _read_checkpoint(path: Path) -> Any:
    from art_ssni.checkpoints import read_checkpoint

    return read_checkpoint(path, "classifier checkpoint")


def _score_sde(path: Path) -> Any:
    return DiffusionModel.from_score_sde(path)


def _wideresnet(path: Path) -> Any:
    from art_ssni.models.classifiers import load_cifar10_wideresnet

    return load_cifar10_wideresnet(path)


def _user_images(path: Path) -> Any:
    from art_ssni.data.user import load_user_images

    return load_user_images(path, (1, 8, 8))


def _stats(path: Path) -> Any:
    return ReferenceStats.load(path)


NPZ = {
    "missing": Raises(FileNotFoundError, r"no data at .*missing\.npz"),
    "folder": Raises(ValueError, r"folder\.npz has no class folders"),
    "empty": Raises(ValueError, r"empty\.npz is not an \.npz file"),
    "html": Raises(ValueError, r"html\.npz is an HTML page, not an \.npz of images"),
    "text": Raises(ValueError, r"text\.npz is not an \.npz file"),
    "truncated": Raises(ValueError, r"truncated\.npz is a truncated or corrupt \.npz file"),
    "code": Raises(ValueError, r"code\.npz holds Python objects .*never unpickled"),
}

FILE_ENTRIES: dict[str, FileEntry] = {
    "checkpoints.read_checkpoint": FileEntry(_read_checkpoint),
    "DiffusionModel.from_score_sde": FileEntry(
        _score_sde,
        ".pth",
        overrides={
            "missing": Raises(FileNotFoundError, r"missing\.pth"),
            "folder": Raises(ValueError, r"folder\.pth"),
        },
    ),
    "models.load_cifar10_wideresnet": FileEntry(
        _wideresnet, overrides={"folder": Raises((FileNotFoundError, ValueError), r"folder\.pt")}
    ),
    "data.user.load_user_images": FileEntry(_user_images, ".npz", overrides=NPZ),
    "ReferenceStats.load": FileEntry(
        _stats,
        ".safetensors",
        overrides={
            "missing": Raises(FileNotFoundError, r"missing\.safetensors"),
            "folder": Raises(FileNotFoundError, r"folder\.safetensors"),
            "text": Raises(ValueError, r"text\.safetensors is not a safetensors file"),
            "code": Raises(ValueError, r"code\.safetensors is a torch\.save or pickle file"),
            # the shared "truncated" file is half of a torch.save archive
            "truncated": Raises(ValueError, r"truncated\.safetensors is a torch\.save or pickle"),
        },
    ),
}


def _file_rows():
    for entry_name, entry in FILE_ENTRIES.items():
        for case in FILE_CASES:
            marks = [_xfail(entry.xfails[case])] if case in entry.xfails else []
            yield pytest.param(entry_name, case, id=f"{entry_name}-{case}", marks=marks)


@pytest.mark.parametrize("entry_name, case", list(_file_rows()))
def test_files(entry_name, case, tmp_path):
    entry = FILE_ENTRIES[entry_name]
    path = _write(case, tmp_path, entry.suffix)
    _run(lambda: entry.load(path), {**FILE_ERRORS, **entry.overrides}[case])


def _nan_diffusers_folder(folder: Path) -> Path:
    from art_ssni._compat import import_torchvision

    import_torchvision()
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
                       up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)  # fmt: skip
    with torch.no_grad():
        unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder


def _nan_zoo(folder: Path) -> Path:
    import hashlib

    from safetensors.torch import load_file, save_file

    shutil.copytree(zoo_root(), folder)
    manifest = json.loads((folder / "zoo.json").read_text())
    entry = manifest["classifier"]
    weights = load_file(folder / entry["file"])
    first = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[first] = torch.full_like(weights[first], float("inf"))
    save_file(weights, folder / entry["file"])
    entry["sha256"] = hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()
    (folder / "zoo.json").write_text(json.dumps(manifest))
    return folder


NON_FINITE_LOADERS = {
    "DiffusionModel.from_diffusers": (
        lambda tmp: DiffusionModel.from_diffusers(_nan_diffusers_folder(tmp / "ddpm")),
        r"diffusers UNet .*ddpm holds non-finite weights \(NaN or inf\) in 1 tensor\(s\), "
        r"first 'conv_in.weight'",
    ),
    "models.zoo.load_embedded_classifier": (
        lambda tmp: load_embedded_classifier(_nan_zoo(tmp / "zoo")),
        r"zoo entry 'classifier' .*holds non-finite weights",
    ),
}


@pytest.mark.parametrize("name", sorted(NON_FINITE_LOADERS))
def test_loaders_refuse_non_finite_weights(name, tmp_path):
    """A checkpoint with a NaN or inf weight is refused at load, naming the file and the
    tensor, before it can make every output NaN or a purifier useless."""
    load, message = NON_FINITE_LOADERS[name]
    with pytest.raises(ValueError, match=message):
        load(tmp_path)


def _no_network(monkeypatch) -> None:
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a loader tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_loaders_never_reach_the_network(tmp_path, monkeypatch):
    """A missing local diffusers folder is not looked up on the hub; ResNet-50 without a path
    and without a cached file is not downloaded."""
    from art_ssni.models.classifiers import load_imagenet_resnet50

    _no_network(monkeypatch)
    for missing in (tmp_path / "unet", str(tmp_path / "unet"), "./no/such/unet"):
        with pytest.raises(FileNotFoundError, match="does not exist.*nothing is looked up"):
            DiffusionModel.from_diffusers(missing)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"never downloads.*resnet50-0676ba61\.pth"):
        load_imagenet_resnet50()


def test_robustbench_loader_never_advises_unsafe_loading(tmp_path, monkeypatch):
    """A RobustBench file that pickles code is named as such; torch's advice to retry with
    weights_only=False is never relayed."""
    from integrations import load_classifier

    _no_network(monkeypatch)
    folder = tmp_path / "imagenet" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"model": _Runs()}, folder / "Salman2020Do_R18.pt")
    with pytest.raises(ValueError) as info:
        load_classifier("Salman2020Do_R18", "imagenet", "Linf", model_dir=tmp_path)
    assert "pickles Python objects (posix.system)" in str(info.value)
    assert "weights_only=False" not in str(info.value) and "False" not in str(info.value)


# --- table 4: the command line ----------------------------------------------------------------

CLI_SMALL = ["--preset", "digits", "--n-images", "2", "--batch-size", "2", "--iterations", "1"]
CLI_SMALL += ["--eot", "1", "--draws", "1", "--steps", "2", "--noise", "fixed", "--no-progress"]

CLI_ROWS: dict[str, tuple[list[str], str]] = {
    "eps nan": (["--eps", "nan"], "argument --eps: expected a number in (0, 1]"),
    "eps inf": (["--eps", "inf"], "argument --eps: expected a number in (0, 1]"),
    "eps 0-255": (["--eps", "8"], "argument --eps: expected a number in (0, 1]"),
    "iterations 0": (["--iterations", "0"], "argument --iterations: expected an integer >= 1"),
    "iterations 1.5": (["--iterations", "1.5"], "argument --iterations: expected an integer"),
    "draws bool": (["--draws", "true"], "argument --draws: expected an integer >= 1"),
    "tau nan": (["--tau", "nan"], "argument --tau: expected a positive number"),
    "bias inf": (["--bias", "inf"], "argument --bias: expected a finite number"),
    "seed huge": (["--seed", str(2**70)], "argument --seed: expected an integer in [0, 2**63)"),
    "out empty": (["--out", ""], "argument --out: expected a path"),
    "noise twice": (["--noise", "fixed,fixed"], "fixed given more than once"),
    "attack unknown": (["--attack", "fgsm"], "unknown fgsm"),
}
CLI_ERRORS: dict[str, tuple[list[str], str]] = {
    "device meta": (["--device", "meta"], "cannot run the models"),
    "device cpu:5": (["--device", "cpu:5"], "one CPU device"),
    "t-star too large": (["--t-star", "5000"], "t_star must lie in"),
    "stats missing": (["--stats", "nope.safetensors"], "--stats nope.safetensors: no such file"),
    "data html": (["--data", "{html}"], "is an HTML page"),
}


@pytest.mark.parametrize("row", list(CLI_ROWS))
def test_command_line_usage(row, capsys):
    flags, message = CLI_ROWS[row]
    with pytest.raises(SystemExit) as info:
        main(["evaluate", *CLI_SMALL, *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("row", list(CLI_ERRORS))
def test_command_line_errors(row, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "page.npz").write_text("<!DOCTYPE html><html></html>")
    flags, message = CLI_ERRORS[row]
    flags = [flag.replace("{html}", "page.npz") for flag in flags]
    assert main(["evaluate", *CLI_SMALL, *flags, "--out", "out"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("art-ssni: error: ")]
    assert "Traceback" not in err and len(lines) == 1 and message in lines[0]


def test_every_registered_entry_has_rows():
    """Adding a method or a noise policy adds its rows: the tables read the registries."""
    assert {f"METHODS[{m}]" for m in METHODS} <= set(IMAGE_ENTRIES)
    assert {f"NOISES[{n}]" for n in NOISES} <= set(IMAGE_ENTRIES)
    assert all(any(k.startswith(f"METHODS[{m}].") for k in NUMBER_ENTRIES) for m in METHODS)


def test_a_truncated_statistics_file_is_named(tmp_path) -> None:
    from art_ssni import ReferenceStats

    whole = tmp_path / "whole.safetensors"
    ReferenceStats(
        norms=torch.rand(16) + 1.0, model="m", schedule="s", num_levels=4, image_shape=(1, 8, 8)
    ).save(whole)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"cut\.safetensors is a truncated or corrupt"):
        ReferenceStats.load(cut)
