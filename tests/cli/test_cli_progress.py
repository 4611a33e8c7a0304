"""Every long command shows one progress bar for the whole run, with its time estimate: the
bars are read back from what tqdm wrote to stderr (one description per bar)."""

from __future__ import annotations

import re

import pytest

from art_ssni.cli import main
from art_ssni.pipeline import AnnouncedBar

BAR = re.compile(r"^(\S[^:\r\n]*): +\d+%\|.*?\| *(\d+)/(\d+) \[[^<\]]*<([^,\]]*)")


def bars(stderr: str) -> dict[str, list[tuple[int, int, str]]]:
    """Per bar description, its states (done, total, time left) in the order written."""
    found: dict[str, list[tuple[int, int, str]]] = {}
    for piece in re.split(r"[\r\n]", stderr):
        match = BAR.match(piece.strip())
        if match:
            name, done, total, left = match.groups()
            found.setdefault(name, []).append((int(done), int(total), left))
    return found


def _finished_with_an_estimate(states: list[tuple[int, int, str]], total: int) -> None:
    """The bar knows its total from its first state (so tqdm shows the time left whenever it
    redraws mid-run) and ends complete."""
    assert states[0][:2] == (0, total)
    assert all(whole == total for _, whole, _ in states)
    assert states[-1][:2] == (total, total)


def test_stats_shows_one_bar(tmp_path, capsys):
    out = tmp_path / "stats.safetensors"
    argv = ["stats", "--preset", "digits", "--n-images", "32", "--batch-size", "8"]
    assert main([*argv, "--out", str(out)]) == 0
    shown = bars(capsys.readouterr().err)
    assert list(shown) == ["reference EPS norms"]
    _finished_with_an_estimate(shown["reference EPS norms"], total=4)


def test_sanity_shows_one_bar_over_its_attacks(tmp_path, capsys):
    argv = ["sanity", "--preset", "digits", "--quick", "--noise", "fixed"]
    main([*argv, "--out", str(tmp_path)])
    shown = bars(capsys.readouterr().err)
    assert list(shown) == ["sanity"]
    _finished_with_an_estimate(shown["sanity"], total=13)  # 5 eps, 3 iterations, 2 restarts, 3


def test_evaluate_shows_one_bar(tmp_path, capsys):
    argv = ["evaluate", "--preset", "digits", "--quick", "--noise", "fixed,ssni-n"]
    assert main([*argv, "--attack", "pgd-eot", "--out", str(tmp_path / "run")]) == 0
    shown = bars(capsys.readouterr().err)
    assert list(shown) == ["evaluate"]
    _finished_with_an_estimate(shown["evaluate"], total=2 * 3)  # 2 images, 3 rows


def test_announced_bar_counts_the_steps_before_each_announcement(capsys):
    bar = AnnouncedBar("work", "step")
    bar.announce("step 1/3: first")
    assert bar.bar.n == 0 and bar.bar.total == 3
    bar.announce("step 3/3: last")
    assert bar.bar.n == 2
    bar.close()
    assert bar.bar.n == 3
    with pytest.raises(ValueError, match="k/total"):
        AnnouncedBar("work", "step").announce("no count here")
