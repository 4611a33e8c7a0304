"""Every user error of the command ends as one line naming its cause, ``art-ssni: error: ...``,
and exit status 2, never a traceback (bad devices, seeds, output paths and lists, broken data
files and images, classifiers that do not fit the labels, a damaged previous run, unwritable
folders and a full disk); the library alias ``art_ssni.cli.evaluate`` takes numpy arrays and
raises ``ValueError``/``TypeError`` naming the argument, never ``SystemExit``."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch

from art_ssni import DiffusionModel
from art_ssni.cli import evaluate, main
from art_ssni.data.digits import load_digits

from tiny import TinyClassifier, TinyEpsNet

SMALL = ["--preset", "digits", "--n-images", "2", "--batch-size", "2", "--iterations", "1"]
SMALL += ["--eot", "1", "--draws", "1", "--steps", "2", "--t-star", "5", "--no-progress"]
SMALL += ["--noise", "fixed", "--attack", "pgd-eot", "--judge-draws", "0"]


def _error(capsys) -> str:
    """The one error line of the last command (the run may print its device line before)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("art-ssni: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "device, message",
    [("meta", "cannot run the models"), ("cpu:5", "one CPU device"), ("cuda:99", "CUDA")],
)
def test_devices_that_cannot_run_are_refused(tmp_path, capsys, device, message):
    assert main(["evaluate", *SMALL, "--device", device, "--out", str(tmp_path / "o")]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--out", ""], "argument --out: expected a path, got an empty string"),
        (["--out", "  "], "argument --out: expected a path"),
        (["--noise", "fixed,ssni-n,fixed"], "fixed given more than once"),
        (["--attack", "pgd-eot,pgd-eot"], "pgd-eot given more than once"),
        (["--seed", str(2**70)], "argument --seed: expected an integer in [0, 2**63)"),
        (["--seed", "-1"], "argument --seed: expected an integer in [0, 2**63)"),
    ],
)
def test_bad_paths_lists_and_seeds_are_usage_errors(capsys, flags, message):
    assert message in _usage_error(capsys, ["evaluate", "--preset", "digits", *flags])


def _digits_npz(path, labels=None):
    x, y = load_digits("test")
    y = y[:4] if labels is None else torch.as_tensor(labels)
    np.savez(path, x=x[:4].numpy(), y=y.numpy())
    return path


def test_broken_data_files_are_named(tmp_path, capsys):
    good = _digits_npz(tmp_path / "good.npz")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    page = tmp_path / "page.npz"
    page.write_text("<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    text = tmp_path / "notes.npz"
    text.write_text("x,y\n0.1,3\n")
    cases = [(cut, "truncated or corrupt .npz"), (page, "HTML page"), (text, "not an .npz file")]
    for data, message in cases:
        out = str(tmp_path / f"out-{data.stem}")
        assert main(["evaluate", *SMALL, "--data", str(data), "--out", out]) == 2
        line = _error(capsys)
        assert message in line and str(data) in line and "pickled" not in line


def test_a_corrupt_image_in_an_image_folder_is_named(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "images"
    for label in ("0", "1"):
        (root / label).mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(root / "0" / "a.png")
    broken = root / "1" / "b.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    assert main(["evaluate", *SMALL, "--data", str(root), "--out", str(tmp_path / "o")]) == 2
    assert f"{broken} is not a readable image" in _error(capsys)


FACTORIES = """
import torch
from torch import nn


def three_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def per_pixel():
    return nn.Conv2d(1, 10, 1)


def wrong_size():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
"""


@pytest.mark.parametrize(
    "factory, labels, message",
    [
        ("three_classes", None, "but the classifier has 3 outputs"),
        ("per_pixel", None, "logits of shape (batch, classes)"),
        ("wrong_size", None, "the classifier fails on one image of shape (1, 8, 8)"),
        (None, [0, 1, 12, 3], "holds the label 12 but the classifier has 10 outputs"),
        (None, [0, -1, 2, 3], "holds a negative label"),
    ],
)
def test_classifiers_and_labels_that_do_not_fit_are_refused_before_work(
    tmp_path, capsys, factory, labels, message
):
    module = tmp_path / "factories.py"
    module.write_text(FACTORIES)
    args = ["evaluate", *SMALL, "--data", str(_digits_npz(tmp_path / "d.npz", labels))]
    if factory:
        args += ["--classifier", f"{module}:{factory}"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "o" / "parts").exists()


@pytest.mark.parametrize("damage", ["folder", "truncated"])
def test_a_damaged_config_json_is_named(tmp_path, capsys, damage):
    out = tmp_path / "run"
    args = ["evaluate", *SMALL, "--out", str(out)]
    assert main(args) == 0
    config = out / "config.json"
    text = config.read_text()
    config.unlink()
    if damage == "folder":
        config.mkdir()
    else:
        config.write_text(text[: len(text) // 2])
    assert main(args) == 2
    line = _error(capsys)
    assert str(config) in line and ("not a file" if damage == "folder" else "truncated") in line


def test_unwritable_folders_and_a_full_disk_are_one_line(tmp_path, capsys, monkeypatch):
    real_open = os.open

    def refusing(path, flags, *args, **kwargs):
        if "parts" in str(path) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    assert main(["evaluate", *SMALL, "--out", str(tmp_path / "ro")]) == 2
    line = _error(capsys)
    assert "parts" in line and "permission denied" in line and ".tmp" not in line
    monkeypatch.setattr(os, "open", real_open)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["evaluate", *SMALL, "--out", str(tmp_path / "full")]) == 2
    line = _error(capsys)
    assert "no space left on device" in line and str(tmp_path / "full") in line


# the library alias


def _own(classes: int = 10):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g)
    diffusion = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8), name="mine")
    return diffusion, TinyClassifier(classes=classes), x, torch.tensor([1, 2])


TINY = dict(n_images=2, batch_size=2, iterations=1, eot=1, draws=1, steps=2, eps=0.1, t_star=5)
TINY.update(noise="fixed", attack="pgd-eot", no_baseline=True, no_progress=True, runs=1)


def test_library_alias_takes_numpy_arrays(tmp_path):
    diffusion, classifier, x, y = _own()
    tensors = evaluate(diffusion, classifier, x, y, out=tmp_path / "t", **TINY)
    arrays = evaluate(diffusion, classifier, x.numpy(), y.numpy(), out=tmp_path / "n", **TINY)
    strip = [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in tensors["rows"]]
    assert strip == [
        {k: v for k, v in r.items() if k != "seconds_per_image"} for r in arrays["rows"]
    ]


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"bogus": 1}, ValueError, "unknown options \\['bogus'\\]"),
        ({"preset": "mnist"}, ValueError, "mnist"),
        ({"noise": "ssni-n"}, ValueError, "stats=ReferenceStats.load"),
        ({"noise": "fixed,fixed"}, ValueError, "noises names fixed more than once"),
        ({"attack": ["pgd-eot", "pgd-eot"]}, ValueError, "attacks names pgd-eot more than once"),
        ({"device": "meta"}, ValueError, "cannot run the models"),
        ({"seed": 2**70}, ValueError, "seed must lie in"),
        ({"seed": 1.5}, ValueError, "seed must be an integer"),
        ({"out": ""}, ValueError, "out must name a folder"),
        ({"y": torch.tensor([1, 12])}, ValueError, "label 12 but the classifier has 10 outputs"),
        ({"y": np.array([0.5, 1.0])}, ValueError, "y must hold integer class labels"),
        ({"x": np.zeros((2, 3, 8, 8)) + 255}, ValueError, "\\[0, 255\\] pixels"),
        ({"x": "images.npz"}, TypeError, "x must be a torch.Tensor"),
        ({"classifier": "resnet"}, TypeError, "classifier must be a torch.nn.Module"),
        ({"classifier": TinyClassifier(classes=1)}, ValueError, "at least 2 classes"),
    ],
)
def test_library_alias_raises_value_and_type_errors(tmp_path, change, error, message):
    diffusion, classifier, x, y = _own()
    given = {"classifier": classifier, "x": x, "y": y, "out": tmp_path / "o", **TINY}
    given.update(change)
    with pytest.raises(error, match=message):
        evaluate(diffusion, given.pop("classifier"), given.pop("x"), given.pop("y"), **given)
    assert next(diffusion.parameters()).device.type == "cpu"  # the caller's model untouched


def test_the_library_names_the_stats_keyword(tmp_path):
    """art_ssni.evaluate is a library call: SSNI without statistics names its stats= keyword
    (the command line's --stats alongside)."""
    import art_ssni

    diffusion, classifier, x, y = _own()
    options = {k: v for k, v in TINY.items() if k not in ("noise", "attack", "no_baseline")}
    options.pop("no_progress")
    with pytest.raises(ValueError, match=r"pass stats=ReferenceStats.load\(FILE\) to art_ssni"):
        art_ssni.evaluate(
            diffusion=diffusion, classifier=classifier, x=x, y=y, out=tmp_path / "o",
            noises="ssni-n", attacks="pgd-eot", baseline=False, progress=False, **options,
        )  # fmt: skip
