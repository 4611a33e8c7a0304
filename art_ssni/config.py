"""One typed run configuration, merged and validated once by :func:`resolve`.

A :class:`RunConfig` says everything an evaluation does: the defence (method, its typed
settings, noise policies, gradient mode, sampler, query convention), the attack budget, SSNI's
settings, how many images and judging draws, the seed. Every preset holds a complete one
(:mod:`art_ssni.presets`); :func:`resolve` applies the smoke-run sizes and the user's
:class:`Overrides` on top, in that order, and checks the result. ``dataclasses.asdict`` of a
resolved config is both the resume fingerprint and the ``config`` of ``results.json``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from .diffusion.model import CONVENTIONS
from .diffusion.sampler import SAMPLERS
from .evaluation.attacks import NORMS
from .evaluation.eot import CRITERIA
from .evaluation.registry import ATTACKS, get_attack
from .hardware import pick_device, pick_dtype, pick_rows
from .noise.registry import NOISES, get_noise
from .purification.engine import GRADIENT_MODES
from .purification.registry import Settings, get_method
from .validation import check_number, check_seed, check_unique

if TYPE_CHECKING:
    from .presets import Preset


@dataclass(frozen=True)
class AttackConfig:
    """The attacks and their budget. Defaults are the SSNI paper's PGD-EOT (Linf 8/255, 200
    iterations of 0.007, 20 EOT draws); ``judge_draws`` N > 0 adds in-loop rows (one per
    criterion) judged over N draws per iterate; ``selector_weight`` is the selector-aware
    attack's weight on the EPS-norm term."""

    attacks: tuple[str, ...] = ("pgd-eot", "selector-aware")
    norm: str = "Linf"
    eps: float = 8 / 255
    step: float = 0.007
    iterations: int = 200
    eot: int = 20
    restarts: int = 1
    judge_draws: int = 0
    criteria: tuple[str, ...] = ("worst", "vote")
    max_rows: int = 256
    selector_weight: float = 0.5

    def budget(self, attack: str) -> dict[str, Any]:
        """The keywords the attack ``attack`` takes, from this budget."""
        names = {"selector_weight": "weight"}
        return {names.get(k, k): getattr(self, k) for k in get_attack(attack).takes}


@dataclass(frozen=True)
class SSNIConfig:
    """SSNI's EPS measure (T' levels) and reweighting: bias b (per policy in ``biases``, else
    ``bias``), SSNI-N's temperature ``tau`` (None: the reference statistics' standard
    deviation), SSNI-L's bounds, and the reference images its statistics need.

    ``smoke_statistics`` (smoke runs only) makes the run compute its own statistics at its
    T' from ``reference_images`` of its images instead of reading a file: they let SSNI run
    at a smoke run's few levels, and they are no reference."""

    num_levels: int = 20
    tau: float | None = None
    bias: float = 0.0
    biases: tuple[tuple[str, float], ...] = ()
    bounds: str = "reference"
    reference_images: int = 5000
    smoke_statistics: bool = False

    def bias_for(self, noise: str) -> float:
        """The bias of the policy ``noise``."""
        return dict(self.biases).get(noise, self.bias)


@dataclass(frozen=True)
class DefenceConfig:
    """The defence: a registered method with its typed settings, the noise policies to
    compare, the purifier's gradient mode for attacks, the reverse sampler (None: the
    method's own) and how the diffusion network is queried."""

    method: str
    settings: Settings
    noises: tuple[str, ...] = tuple(NOISES)
    gradient: str = "surrogate"
    sampler: str | None = None
    convention: str = "as-trained"


@dataclass(frozen=True)
class ComputeConfig:
    """Where and how the diffusion network runs: the device ("auto": cuda if available, else
    cpu), its compute dtype ("auto": bfloat16 where the hardware runs it natively, else
    float32; see :mod:`art_ssni.hardware`), channels-last memory order, ``torch.compile``,
    and the most rows one network call takes when SSNI's EPS measure batches its levels
    (None: :func:`~art_ssni.hardware.pick_rows` for the device and image size). A resolved
    configuration holds the concrete device, dtype (and why) and rows."""

    device: str = "auto"
    dtype: str = "float32"
    channels_last: bool = False
    compile: bool = False
    network_rows: int | None = None
    dtype_reason: str = ""


@dataclass(frozen=True)
class RunConfig:
    """One evaluation: preset and data set names, defence, attack, SSNI, sizes, seed."""

    preset: str
    dataset: str
    defence: DefenceConfig
    attack: AttackConfig = AttackConfig()
    ssni: SSNIConfig = SSNIConfig()
    compute: ComputeConfig = ComputeConfig()
    n_images: int = 512
    draws: int = 10
    batch_size: int = 64
    seed: int = 0
    runs: int = 1
    baseline: bool = True
    smoke: bool = False
    save_adversarial: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The JSON-friendly record of this configuration (tuples become lists)."""
        return _plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class Overrides:
    """Changes to a preset's configuration; ``None`` leaves a value as the preset has it.

    ``t_star``, ``steps`` and ``surrogate_steps`` reach the method through its registry entry
    (DAC: t_large and grid strides; GNS refuses them); ``bias`` replaces every per-policy bias.
    """

    method: str | None = None
    noises: tuple[str, ...] | None = None
    attacks: tuple[str, ...] | None = None
    norm: str | None = None
    eps: float | None = None
    step: float | None = None
    iterations: int | None = None
    eot: int | None = None
    restarts: int | None = None
    judge_draws: int | None = None
    criteria: tuple[str, ...] | None = None
    max_rows: int | None = None
    selector_weight: float | None = None
    gradient: str | None = None
    t_star: int | None = None
    steps: int | None = None
    surrogate_steps: int | None = None
    sampler: str | None = None
    convention: str | None = None
    num_levels: int | None = None
    tau: float | None = None
    bias: float | None = None
    n_images: int | None = None
    draws: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    runs: int | None = None
    baseline: bool | None = None
    save_adversarial: bool | None = None
    device: str | None = None
    dtype: str | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    network_rows: int | None = None

    @classmethod
    def from_options(cls, **options: Any) -> Overrides:
        """Overrides from keyword options (a ValueError names an unknown one); lists and
        comma-separated strings become tuples for the tuple-valued fields."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown options {unknown}; known: {sorted(names)}")
        for name in ("noises", "attacks", "criteria"):
            value = options.get(name)
            if isinstance(value, str):
                options[name] = tuple(v.strip() for v in value.split(",") if v.strip())
            elif value is not None:
                options[name] = tuple(value)
        hints = typing.get_type_hints(cls)
        for name, value in options.items():
            if value is not None and hints[name] in (int | None, float | None):
                check_number(value, name, integer=hints[name] == int | None)
        if options.get("seed") is not None:
            check_seed(options["seed"])
        return cls(**options)

    def given(self) -> dict[str, Any]:
        """The values set (not None)."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


SMOKE = Overrides(
    n_images=2, batch_size=2, iterations=1, eot=1, restarts=1, draws=1, judge_draws=0,
    steps=2, surrogate_steps=1, runs=1, num_levels=1,
)  # fmt: skip
"""The smoke run every preset starts from under ``quick``: it checks that the pipeline runs
(2 images, 2 reverse steps, 1 iteration, 1 draw, no in-loop rows), not a result. SSNI's EPS
measure takes T' = 1 level, with statistics the run computes at that T' from
``SMOKE_REFERENCE_IMAGES`` of its own images (``SSNIConfig.smoke_statistics``): at T' = 20
the EPS passes cost 20 network rows per image each and dominate a smoke run on a full-size
network. A preset's own ``quick`` overrides are applied after these (the paper presets:
1 image)."""
SMOKE_REFERENCE_IMAGES = 2

_ATTACK_FIELDS = {f.name for f in fields(AttackConfig)}
_SSNI_FIELDS = {"num_levels", "tau"}
_DEFENCE_FIELDS = {"noises", "gradient", "sampler", "convention"}
_COMPUTE_FIELDS = {f.name for f in fields(ComputeConfig)} - {"dtype_reason"}
_RUN_FIELDS = {"n_images", "draws", "batch_size", "seed", "runs", "baseline", "save_adversarial"}
_METHOD_KNOBS = ("t_star", "steps", "surrogate_steps")


def smoke_step(eps: float, iterations: int) -> float:
    """A step with which ``iterations`` steps can cross the ball: 2.5 eps / iterations
    (Madry et al. 2018), so a smoke run's attack reaches the budget."""
    return 2.5 * eps / iterations


def resolve(
    preset: Preset | str,
    overrides: Overrides | None = None,
    *,
    quick: bool = False,
    available: int | None = None,
    reference_std: float | None = None,
) -> RunConfig:
    """The preset's configuration with the smoke sizes (``quick``) and ``overrides`` applied,
    validated. ``reference_std``, the standard deviation of the reference statistics'
    EPS norms, becomes SSNI-N's tau where neither the preset nor the user sets one, so the
    record holds the tau that runs. ``available`` is the number of images the data holds: the
    preset's image count
    is capped to it unless ``n_images`` is given (then more than available is an error)."""
    from .presets import get_preset

    preset = get_preset(preset) if isinstance(preset, str) else preset
    overrides = overrides or Overrides()
    config = preset.run
    method = overrides.method or config.defence.method
    if method != config.defence.method:
        get_method(method)
        config = replace(config, defence=preset.defence(method))
    for layer in [SMOKE, preset.quick, overrides] if quick else [overrides]:
        config = _apply(config, layer)
    if quick:
        ssni = replace(config.ssni, smoke_statistics=True, reference_images=SMOKE_REFERENCE_IMAGES)
        config = replace(config, smoke=True, ssni=ssni)
        if overrides.step is None:
            attack = config.attack
            step = max(attack.step, smoke_step(attack.eps, attack.iterations))
            config = replace(config, attack=replace(attack, step=step))
    device = pick_device(config.compute.device)
    dtype, why = pick_dtype(config.compute.dtype, device)
    rows = pick_rows(config.compute.network_rows, device, preset.image_size)
    compute = replace(
        config.compute, device=device, dtype=dtype, dtype_reason=why, network_rows=rows
    )
    config = replace(config, compute=compute)
    if config.ssni.tau is None and reference_std is not None:
        config = replace(config, ssni=replace(config.ssni, tau=float(reference_std)))
    if available is not None and overrides.n_images is None:
        config = replace(config, n_images=min(config.n_images, available))
    check(config, available)
    return config


def _apply(config: RunConfig, layer: Overrides) -> RunConfig:
    """One layer of overrides."""
    given = layer.given()
    attack = replace(config.attack, **{k: v for k, v in given.items() if k in _ATTACK_FIELDS})
    ssni = replace(config.ssni, **{k: v for k, v in given.items() if k in _SSNI_FIELDS})
    if "bias" in given:
        ssni = replace(ssni, bias=given["bias"], biases=())
    defence = replace(config.defence, **{k: v for k, v in given.items() if k in _DEFENCE_FIELDS})
    knobs = [given.get(k) for k in _METHOD_KNOBS]
    if any(v is not None for v in knobs):
        spec = get_method(defence.method)
        defence = replace(defence, settings=spec.retarget(defence.settings, *knobs))
    compute = replace(config.compute, **{k: v for k, v in given.items() if k in _COMPUTE_FIELDS})
    run = {k: v for k, v in given.items() if k in _RUN_FIELDS}
    return replace(config, attack=attack, ssni=ssni, defence=defence, compute=compute, **run)


def _positive(value: Any, name: str, *, zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        raise ValueError(f"{name} must be an integer >= {0 if zero else 1}, got {value!r}")


def _one_of(values: Any, allowed: Any, name: str) -> None:
    values = values if isinstance(values, tuple) else (values,)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValueError(f"{name}: unknown {bad or 'empty value'}; choose from {sorted(allowed)}")
    check_unique(values, name)


def check(config: RunConfig, available: int | None = None) -> None:
    """Raise a ValueError naming the first setting of ``config`` that cannot run."""
    attack, defence, ssni = config.attack, config.defence, config.ssni
    _one_of(attack.attacks, ATTACKS, "attacks")
    _one_of(attack.norm, NORMS, "norm")
    _one_of(attack.criteria, CRITERIA, "criteria")
    if not (isinstance(attack.eps, (int, float)) and 0 < attack.eps <= 1):
        raise ValueError(f"eps must lie in (0, 1] for images in [0, 1], got {attack.eps!r}")
    if not (
        isinstance(attack.step, (int, float)) and math.isfinite(attack.step) and attack.step > 0
    ):
        raise ValueError(f"step must be a positive number, got {attack.step!r}")
    for name in ("iterations", "eot", "restarts", "max_rows"):
        _positive(getattr(attack, name), name)
    _positive(attack.judge_draws, "judge_draws", zero=True)
    if not (math.isfinite(attack.selector_weight) and attack.selector_weight > 0):
        raise ValueError(f"selector_weight must be positive, got {attack.selector_weight!r}")
    get_method(defence.method)
    _one_of(defence.noises, NOISES, "noises")
    _one_of(defence.gradient, GRADIENT_MODES, "gradient")
    _one_of(defence.convention, CONVENTIONS, "convention")
    if defence.sampler is not None:
        _one_of(defence.sampler, SAMPLERS, "sampler")
    for noise in defence.noises:
        get_noise(noise)
    _positive(ssni.num_levels, "num_levels")
    _positive(ssni.reference_images, "reference_images")
    if ssni.smoke_statistics and not config.smoke:
        raise ValueError("smoke_statistics belong to smoke runs (quick) only")
    if ssni.smoke_statistics and ssni.reference_images < 2:
        raise ValueError(f"smoke statistics need 2 or more images, got {ssni.reference_images}")
    if ssni.tau is not None and not (math.isfinite(ssni.tau) and ssni.tau > 0):
        raise ValueError(f"tau must be a positive number, got {ssni.tau!r}")
    for name in ("n_images", "draws", "batch_size", "runs"):
        _positive(getattr(config, name), name)
    if config.compute.network_rows is not None:
        _positive(config.compute.network_rows, "network_rows")
    if available is not None and config.n_images > available:
        raise ValueError(f"asked for {config.n_images} images but the data holds only {available}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


__all__ = [
    "AttackConfig",
    "ComputeConfig",
    "DefenceConfig",
    "Overrides",
    "RunConfig",
    "SMOKE",
    "SMOKE_REFERENCE_IMAGES",
    "SSNIConfig",
    "check",
    "resolve",
    "smoke_step",
]
