"""benchmarks/train_cifar10.py: an interrupted training resumes to the same weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tiny import SHARED_DATA, load_benchmark


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg-train.zip").is_file(), reason="no shared data")
@pytest.mark.parametrize("part", ["eps", "classifier"])
def test_training_resumes_to_the_same_weights(part, tmp_path, monkeypatch) -> None:
    trainer = load_benchmark("train_cifar10")
    flags = ["--part", part, "--train-images", "32", "--checkpoint-every", "2",
             "--classifier-widths", "24", "8", "8", "8", "--classifier-batch", "8",
             "--classifier-epochs", "1", "--unet-base", "8", "--eps-steps", "4",
             "--eps-batch", "4"]  # fmt: skip
    key = "eps_net" if part == "eps" else "classifier"
    trainer.main([*flags, "--out", str(tmp_path / "a"), "--work", str(tmp_path / "wa")])
    straight = load_file(str(tmp_path / "wa" / f"{key}_fp32.safetensors"))

    save = trainer.Checkpoint.save

    def interrupted(self, step, elapsed):
        save(self, step, elapsed)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Checkpoint, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.main([*flags, "--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb")])
    monkeypatch.setattr(trainer.Checkpoint, "save", save)
    assert (
        torch.load(
            tmp_path / "wb" / f"{'eps' if part == 'eps' else 'classifier'}.pt", weights_only=True
        )["step"]
        == 2
    )
    trainer.main([*flags, "--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb")])
    resumed = load_file(str(tmp_path / "wb" / f"{key}_fp32.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    meta = json.loads((tmp_path / "wb" / f"{key}.json").read_text())
    assert meta["config"] == (
        trainer.unet_config(8, 300)
        if part == "eps"
        else {**meta["config"], "widths": [24, 8, 8, 8]}
    )


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg-train.zip").is_file(), reason="no shared data")
def test_a_whole_training_run_shows_one_bar(tmp_path, capsys) -> None:
    """Both models train under one bar whose total is both parts' steps, with its estimate."""
    from cli.test_cli_progress import bars

    trainer = load_benchmark("train_cifar10")
    trainer.main(["--part", "all", "--train-images", "32", "--classifier-widths", "24", "8",
                  "8", "8", "--classifier-batch", "8", "--classifier-epochs", "1",
                  "--unet-base", "8", "--eps-steps", "3", "--eps-batch", "4",
                  "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])  # fmt: skip
    shown = bars(capsys.readouterr().err)
    assert list(shown) == ["training classifier + eps"]
    states = shown["training classifier + eps"]
    assert states[0][:2] == (0, 4 + 3) and states[-1][:2] == (7, 7)
