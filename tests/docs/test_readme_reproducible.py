"""README.md's examples print the same numbers on every run: run twice in one process (so the
global random state moves on between the runs), the torchattacks and RobustBench examples print
the same lines, and the CIFAR-10 snippet runs on its own."""

from __future__ import annotations

import contextlib
import io
import re

from tiny import README


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _printed(blocks: list[str]) -> list[str]:
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    return out.getvalue().splitlines()


def test_attack_examples_print_the_same_numbers_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    last = next(i for i, block in enumerate(blocks) if "benchmark_purified(" in block)
    first, second = _printed(blocks[: last + 1]), _printed(blocks[: last + 1])
    shown = [line for line in first if line.startswith(("robust accuracy over", "AutoAttack"))]
    assert len(shown) == 2
    assert first == second


def test_the_cifar10_example_runs_on_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (block,) = [b for b in _blocks() if "load_embedded_cifar10_images" in b]
    (line,) = _printed([block])
    assert re.fullmatch(r"DiffPure t\*=100 on 8 CIFAR-10 test images: \d of 8 correct", line)
