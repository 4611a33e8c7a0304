"""Helpers shared by the test folders (imported by module name; robustbench owns `tests`): the
repository's paths, tiny networks for the CPU tests, closed-form stand-ins, and a planner of
command lines."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAPER = ROOT / "benchmarks" / "PAPER.md"
SHARED_DATA = ROOT.parent / "shared" / "data"


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


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py``, imported as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def defended(diffusion, **kwargs):
    """A TinyClassifier behind a small seeded DiffPure (t* = 10, 3 steps, 1 surrogate step)."""
    from art_ssni import DiffPure
    from art_ssni.models.defended import DefendedClassifier

    purifier = DiffPure(diffusion, t_star=10, steps=3, surrogate_steps=1, generator=0, **kwargs)
    return DefendedClassifier(purifier, TinyClassifier())


def half_mask(x: torch.Tensor) -> torch.Tensor:
    """DAC's attention mask stand-in: the left half of every image."""
    mask = torch.zeros(x.shape[0], 1, *x.shape[-2:])
    mask[..., : x.shape[-1] // 2] = 1
    return mask


class Probe(nn.Module):
    """A classifier whose first block is the identity (its energy is sum_c x^2) and whose
    second block halves the resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Identity()
        self.second = nn.AvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
        self.head(torch.zeros(1, 3 * 4 * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.second(self.first(x)))


class LoudEpsNet(nn.Module):
    """A network whose eps is large enough that x0_hat leaves [-1, 1] (clipping matters)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.sin(2 * x + t.float()[:, None, None, None] / 100)


def loud_model():
    """A DiffusionModel around LoudEpsNet on 3x8x8 images."""
    from art_ssni import DiffusionModel

    return DiffusionModel(LoudEpsNet(), image_shape=(3, 8, 8), name="loud")


class GaussianOracle(nn.Module):
    """Exact eps of data x0 ~ N(m, sd^2) per pixel on the continuous VP marginal.

    p_t(x) = N(sqrt(a) m, a sd^2 + 1 - a), so eps* = sqrt(1 - a) (x - sqrt(a) m) / (a sd^2 + 1 - a).
    Its label is score_sde's 999 t / N.
    """

    def __init__(self, mean: float, std: float, schedule) -> None:
        super().__init__()
        self.mean, self.var, self.schedule = mean, std**2, schedule

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        u = label.double() / 999.0
        a = self.schedule.sde_abar(u).view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x.double() - a.sqrt() * self.mean) / (a * self.var + 1 - a)
        return eps.to(x.dtype)


def posterior(schedule, x_t, x0, t, s):
    """Closed-form mean and variance of q(x_s | x_t, x0) (Ho et al. 2020, eq. 7)."""
    a_t = schedule.abar(t).view(-1, 1, 1, 1)
    a_s = schedule.abar(s).view(-1, 1, 1, 1)
    alpha = a_t / a_s
    mean = (a_s.sqrt() * (1 - alpha) * x0 + alpha.sqrt() * (1 - a_s) * x_t) / (1 - a_t)
    return mean, (1 - a_s) / (1 - a_t) * (1 - alpha)


def saved_bytes(purifier, x, seed):
    """Bytes autograd keeps for the backward pass of one purification (recomputed regions
    excluded: their tensors are not kept)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        purifier(x.clone().requires_grad_(True), generator=seed)
    return total
