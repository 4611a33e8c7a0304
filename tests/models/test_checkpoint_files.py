"""Checkpoint and weight files: every loader reads through the one safe reader
(art_ssni.checkpoints), writes are atomic and HTML pages or text are refused with a clear
message (art_ssni.io), by the diffusion and the classifier loaders alike."""

import pytest
import torch

from tiny import ROOT


def test_every_torch_save_loader_reads_through_the_one_safe_reader() -> None:
    """No module but art_ssni.checkpoints calls torch.load on a checkpoint file."""
    import re

    root = ROOT
    callers = {
        str(path.relative_to(root))
        for folder in ("art_ssni", "integrations")
        for path in (root / folder).rglob("*.py")
        if re.search(r"(?<!`)torch\.load\(", path.read_text())
    }
    # runner.py reads back its own result units (also weights_only=True).
    assert callers == {"art_ssni/checkpoints.py", "art_ssni/evaluation/runner.py"}


def test_atomic_writes_replace_the_whole_file_or_nothing(tmp_path, monkeypatch):
    import os

    from art_ssni.io import atomic_torch_save, atomic_write_text

    target = tmp_path / "deep" / "state.pt"
    assert atomic_torch_save({"w": torch.arange(3)}, target) == target
    assert torch.load(target, weights_only=True)["w"].tolist() == [0, 1, 2]
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    text = tmp_path / "notes.json"
    atomic_write_text(text, "old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(text, "new")
    assert text.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["deep", "notes.json"]


def test_html_pages_are_refused_as_weights(tmp_path):
    from art_ssni.io import refuse_html

    page = tmp_path / "model.pt"
    page.write_text("\n  <!DOCTYPE html><html><body>Quota exceeded</body></html>")
    with pytest.raises(ValueError, match="model.pt is an HTML page"):
        refuse_html(page, "classifier")
    torch.save({"w": torch.zeros(1)}, page)
    assert refuse_html(page, "classifier") is None


def test_atomic_writes_and_the_html_check_live_in_one_module() -> None:
    """Only art_ssni/io.py renames temporary files into place or sniffs for HTML pages."""
    import re

    root = ROOT
    owners = {
        str(path.relative_to(root))
        for folder in ("art_ssni", "integrations", "benchmarks")
        for path in (root / folder).rglob("*.py")
        if re.search(r"os\.replace\(|mkstemp\(|b\"<html|b\"<!doctype", path.read_text())
    }
    assert owners == {"art_ssni/io.py"}


def test_loaders_recognise_html_and_text(tmp_path):
    from art_ssni.diffusion.networks.adm import load_guided_diffusion_checkpoint
    from art_ssni.diffusion.networks.ncsnpp import load_score_sde_checkpoint
    from art_ssni.models.classifiers import load_cifar10_wideresnet, load_imagenet_resnet50

    html = tmp_path / "page.pth"
    html.write_text("<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    text = tmp_path / "notes.pth"
    text.write_text("hello world\nthis is text\n")
    for loader in (load_score_sde_checkpoint, load_guided_diffusion_checkpoint):
        with pytest.raises(ValueError, match="HTML page"):
            loader(html)
    for loader in (load_cifar10_wideresnet, load_imagenet_resnet50):
        with pytest.raises(ValueError, match="not a torch.save file"):
            loader(text)
