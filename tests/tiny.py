"""Tiny networks for the CPU tests, and a planner of command lines (imported by module name;
robustbench owns `tests`)."""

from __future__ import annotations

import torch
from torch import nn


class TinyEpsNet(nn.Module):
    """A two-layer conv eps-network with a time input; enough to exercise every code path."""

    def __init__(self, channels: int = 3, hidden: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.time = nn.Linear(1, hidden)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.time(t.float()[:, None] / 1000)[:, :, None, None]
        return self.out(torch.tanh(h))


class RowCounter(nn.Module):
    """Wraps a network and counts the rows (samples) and calls that go through it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.rows = 0
        self.calls = 0
        self.labels: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        self.calls += 1
        self.labels.append(t.detach().clone())
        return self.net(x, t)


class TinyClassifier(nn.Module):
    def __init__(self, channels: int = 3, size: int = 8, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def plan(argv: list[str]):
    """What ``art-ssni <argv>`` would run, without running it: ``(config, setup)``."""
    from art_ssni.cli import build_parser, overrides_of, sources_of
    from art_ssni.pipeline import prepare

    args = build_parser().parse_args(argv)
    options = overrides_of(args).given()
    options.setdefault("seed", args.seed)
    return prepare(args.preset, sources=sources_of(args), quick=args.quick, **options)
