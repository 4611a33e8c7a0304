"""The purification methods as data: one :class:`MethodSpec` per method in :data:`METHODS`.

A method's settings are its constructor's plain keyword arguments. ``MethodSpec.settings`` is
a frozen dataclass made from that signature, so every default lives once, in the
constructor, and a preset or the command line holds typed, hashable settings. Adding a
method is its class and one line here.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from .._rng import SeedLike
from ..diffusion.model import DiffusionModel
from ..diffusion.rounding import round_half_up
from ..validation import check_number
from .engine import NoisePolicy, Purifier
from .heterogeneous import DAC, MANIPure
from .methods import GDMP, GNS, DiffPure

ENGINE_ARGUMENTS = frozenset(
    {"self", "diffusion", "noise", "gradient", "generator", "sampler", "classifier", "mask"}
    | {"spectral"}
)
"""Constructor arguments that are not settings: the run supplies them (models, policy, gradient
mode, sampler, random stream) or they are objects built from plain settings."""

Settings = Any
"""An instance of a method's settings dataclass (``MethodSpec.settings``)."""


def settings_type(cls: type[Purifier]) -> type:
    """A frozen dataclass whose fields are ``cls``'s keyword-only plain arguments, with the
    constructor's annotations and defaults (``<Class>Settings``)."""
    fields = []
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in ENGINE_ARGUMENTS or param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        annotation = param.annotation if param.annotation is not param.empty else Any
        default = field() if param.default is param.empty else field(default=param.default)
        fields.append((name, annotation, default))
    return dataclasses.make_dataclass(f"{cls.__name__}Settings", fields, frozen=True)


def _retarget(
    settings: Settings, t_star: int | None, steps: int | None, surrogate_steps: int | None
) -> Settings:
    """The common knobs on a one-chain method: reference level, steps, surrogate steps."""
    changes = {"t_star": t_star, "steps": steps, "surrogate_steps": surrogate_steps}
    return dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})


def _retarget_dac(
    settings: Settings, t_star: int | None, steps: int | None, surrogate_steps: int | None
) -> Settings:
    """DAC's reference level is t_large; t_small keeps its published ratio, and ``steps``
    (``surrogate_steps``) become the grid stride ceil(t_large / steps) that gives that many
    network calls per image."""
    t_large = settings.t_large if t_star is None else t_star
    changes: dict[str, int] = {}
    if t_star is not None:
        t_small = max(
            1, int(round_half_up(torch.tensor(t_large * settings.t_small), settings.t_large))
        )
        changes.update(t_large=t_large, t_small=t_small)
    if steps is not None:
        changes["stride"] = math.ceil(t_large / steps)
    if surrogate_steps is not None:
        changes["surrogate_stride"] = math.ceil(t_large / surrogate_steps)
    return dataclasses.replace(settings, **changes)


def _retarget_schedule(
    settings: Settings, t_star: int | None, steps: int | None, surrogate_steps: int | None
) -> Settings:
    """GNS's stage schedule at another reference level: ``t_star`` becomes the largest stage
    and every stage's level and steps scale by t_star / largest (rounded half up, at least 1),
    so the schedule keeps its published shape (a noise policy's level scales it the same way);
    then ``steps`` (``surrogate_steps``) caps every stage's steps (surrogate stage's)."""
    top = max(int(t) for t, _ in settings.stages)

    def scaled(stages):
        if t_star is None:
            return stages
        check_number(t_star, "t_star", low=1, integer=True)

        def share(n: int) -> int:
            return max(1, (2 * int(n) * int(t_star) + top) // (2 * top))

        return tuple((share(t), share(k)) for t, k in stages)

    def capped(stages, cap):
        return stages if cap is None else tuple((t, min(k, cap)) for t, k in stages)

    changes = {
        "stages": capped(scaled(settings.stages), steps),
        "surrogate_stages": capped(scaled(settings.surrogate_stages), surrogate_steps),
    }
    if t_star is not None:
        changes["t_star"] = int(t_star)
    return dataclasses.replace(settings, **changes)


def _level(settings: Settings) -> int:
    return int(settings.t_star)


def _gns_level(settings: Settings) -> int:
    return int(settings.t_star or max(t for t, _ in settings.stages))


@dataclass(frozen=True)
class MethodSpec:
    """A purification method: its name on the command line, its label in tables, its class,
    how the common knobs (``t_star``, ``steps``, ``surrogate_steps``) map onto its settings,
    and which setting is its reference level (the level a noise policy replaces)."""

    name: str
    label: str
    cls: type[Purifier]
    retarget: Callable[[Settings, int | None, int | None, int | None], Settings] = _retarget
    level: Callable[[Settings], int] = _level

    @cached_property
    def settings(self) -> type:
        """The method's settings dataclass (see :func:`settings_type`)."""
        return settings_type(self.cls)

    def make_settings(self, **values: Any) -> Settings:
        """The settings with ``values`` replacing the constructor's defaults; an unknown name
        or a missing required one raises a ValueError naming it."""
        names = {f.name for f in dataclasses.fields(self.settings)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{self.name} has no setting {unknown}; its settings: {sorted(names)}")
        try:
            return self.settings(**values)
        except TypeError as err:
            raise ValueError(f"{self.name} settings: {err}") from None

    def build(
        self,
        diffusion: DiffusionModel,
        settings: Settings,
        *,
        classifier: Any = None,
        noise: NoisePolicy | None = None,
        gradient: str = "full",
        sampler: str | None = None,
        generator: SeedLike = None,
    ) -> Purifier:
        """The purifier of these settings around ``diffusion``; ``classifier`` reaches the
        methods that read it (DAC's attention mask), ``sampler`` every method that takes one."""
        accepted = inspect.signature(self.cls.__init__).parameters
        kwargs = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        if sampler is not None:
            if "sampler" not in accepted:
                raise ValueError(f"{self.name} takes no sampler (asked for {sampler!r})")
            kwargs["sampler"] = sampler
        if "classifier" in accepted:
            kwargs["classifier"] = classifier
        return self.cls(diffusion, noise=noise, gradient=gradient, generator=generator, **kwargs)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("diffpure", "DiffPure", DiffPure),
        MethodSpec("gdmp", "GDMP", GDMP),
        MethodSpec("gns", "GNS", GNS, _retarget_schedule, _gns_level),
        MethodSpec("dac", "DAC", DAC, _retarget_dac, lambda s: int(s.t_large)),
        MethodSpec("mani-pure", "MANI-Pure", MANIPure),
    )
}


def get_method(name: str) -> MethodSpec:
    """The method called ``name``; a ValueError lists the registered ones."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}") from None
