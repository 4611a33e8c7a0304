"""``art-ssni --help`` is plain text (no reST markup), every flag of every command says what it
does, and the help shows each default: the value, or "the preset's" where the preset decides."""

from __future__ import annotations

import argparse

import pytest

from art_ssni.cli import COMMANDS, build_parser, main


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_is_plain_text(capsys):
    for argv in (["--help"], *([command, "--help"] for command in COMMANDS)):
        text = _help(capsys, argv)
        assert "``" not in text and ":func:" not in text and ":mod:" not in text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_has_help(command):
    flags = [a for a in _subparsers()[command]._actions if a.option_strings and a.dest != "help"]
    assert flags
    assert [a.option_strings[0] for a in flags if not (a.help or "").strip()] == []


def test_help_shows_the_defaults(capsys):
    text = _help(capsys, ["evaluate", "--help"])
    assert "output folder (resumable) (default: runs/evaluate)" in text
    assert "(default: cifar10-embedded)" in text and "(default: 0)" in text
    assert "attack budget, e.g. 8/255 or 0.5 (default: the preset's)" in text
    stats = _help(capsys, ["stats", "--help"])
    assert "clean training images (default: 5000)" in stats
