"""benchmarks/train_embedded.py shows one progress bar for the whole run (both trainings and
the evaluation), counted in steps that it finishes exactly."""

from __future__ import annotations

import functools
import re

from tiny import load_benchmark


def test_one_bar_counts_every_step_of_the_run(tmp_path, capsys, monkeypatch, one_thread):
    train = load_benchmark("train_embedded")
    load = train.load_digits

    def few_test_digits(split, seed):
        x, y = load(split, seed=seed)
        return (x, y) if split == "train" else (x[:40], y[:40])

    monkeypatch.setattr(train, "load_digits", few_test_digits)
    monkeypatch.setattr(train, "PURIFY_LEVELS", (1, 3))
    monkeypatch.setattr(train, "NOISE_SIZES", {"uniform_0.1": 0.1})
    monkeypatch.setattr(train, "EPS_LEVELS", 2)
    monkeypatch.setattr(
        train, "forward_time_ms", functools.partial(train.forward_time_ms, batch=8, repeats=1)
    )
    argv = ["--out", str(tmp_path), "--diffusion-steps", "3", "--classifier-epochs", "1"]
    manifest = train.main(argv)
    err = capsys.readouterr().err
    names = {m[1] for m in re.finditer(r"(?:^|[\r\n])([^:\r\n]+): +\d+%\|", err)}
    assert names == {"train_embedded"}
    classifier = -(-manifest["data"]["num_train"] // train.CLASSIFIER_BATCH)  # one epoch
    evaluation = 4 * 8 + (1 + 3) + 2 * 2  # eps-MSE bands, purification steps, EPS levels
    total = classifier + 3 + evaluation
    assert re.search(rf"{total}/{total} \[", err)
