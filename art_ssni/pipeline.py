"""The evaluation behind ``art-ssni evaluate``, as a library function.

:func:`evaluate` resolves one :class:`~art_ssni.config.RunConfig` (a preset plus overrides),
loads or takes the models and images (:mod:`art_ssni.sources`), builds one defended model per
noise policy and one row per attack from the registries, runs them resumably
(:class:`~art_ssni.evaluation.runner.Evaluation`) and writes ``results.json`` and
``results.md``. The command line only parses its flags into these arguments.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import ComputeConfig, Overrides, RunConfig, resolve
from .diffusion.model import DiffusionModel
from .evaluation.registry import get_attack
from .evaluation.runner import (
    Evaluation,
    Row,
    barrier,
    clear_run_dir,
    mark_run_dir,
    progress_bar,
)
from .hardware import TORCH_DTYPES, pick_device, pick_dtype, pick_rows
from .io import module_digest, tensor_digest
from .models.defended import DefendedClassifier
from .noise import EPSNorm, ReferenceStats
from .noise.registry import get_noise
from .presets import Preset, get_preset
from .purification.registry import get_method
from .sources import Setup, Sources, load_setup, subset


def build_defence(
    config: RunConfig,
    setup: Setup,
    noise: str,
    *,
    eps_norm: EPSNorm | None = None,
    generator: int | None = None,
) -> DefendedClassifier:
    """The configured method with the policy ``noise`` around the setup's models."""
    defence, ssni = config.defence, config.ssni
    spec = get_method(defence.method)
    noise_spec = get_noise(noise)
    if noise_spec.uses_scores and setup.stats is None:
        raise ValueError(
            f"{noise} needs reference statistics: pass stats=ReferenceStats.load(FILE) to "
            "art_ssni.evaluate, or --stats FILE to art-ssni evaluate (make the file with "
            "`art-ssni stats`)"
        )
    if noise_spec.uses_scores and eps_norm is None:
        eps_norm = EPSNorm(setup.diffusion, ssni.num_levels, batch_size=_rows(config))
    policy = noise_spec.build(
        spec.level(defence.settings),
        eps_norm=eps_norm,
        stats=setup.stats,
        bias=ssni.bias_for(noise),
        tau=ssni.tau,
        bounds=ssni.bounds,
    )
    purifier = spec.build(
        setup.diffusion,
        defence.settings,
        classifier=setup.classifier,
        noise=policy,
        gradient=defence.gradient,
        sampler=defence.sampler,
        generator=generator,
    )
    return DefendedClassifier(
        purifier, setup.classifier, setup.mean, setup.std, purify_size=setup.purify_size
    )


def _rows(config: RunConfig) -> int:
    """Rows per network call of the EPS measure: the resolved configuration's."""
    rows = config.compute.network_rows
    if rows is None:
        raise ValueError("the configuration is not resolved: compute.network_rows is None")
    return rows


def row_label(config: RunConfig, model: DefendedClassifier, noise: str) -> str:
    """A row's defence label: "DiffPure (t*=100)", "DiffPure + SSNI-N", with the sampler
    when it is not DDPM."""
    label = get_method(config.defence.method).label
    described = model.describe()
    name = (
        f"{label} (t*={described['t_star']})"
        if noise == "fixed"
        else f"{label} + {get_noise(noise).label}"
    )
    sampler = described.get("sampler") or "ddpm"
    return name if sampler == "ddpm" else f"{name} [{sampler.upper()}]"


def build_rows(config: RunConfig, setup: Setup) -> list[Row]:
    """The undefended row (under the first attack that applies to a plain classifier) and,
    per noise policy, one row per attack that applies to the defence (the selector-aware
    attack needs a policy with scores, ...: ``AttackSpec.applies``), plus one in-loop row
    per criterion where the attack has them and ``judge_draws`` > 0."""
    attack = config.attack
    rows = []
    if config.baseline:
        undefended = DefendedClassifier(None, setup.classifier, setup.mean, setup.std)
        first = next((a for a in attack.attacks if get_attack(a).applies(undefended)), "pgd-eot")
        key = "none-pgd" if first == "pgd-eot" else f"none-{first}"
        budget = {**attack.budget(first), "eot": 1}
        rows.append(Row(key, "No defence", undefended, first, budget))
    uses_scores = any(get_noise(n).uses_scores for n in config.defence.noises)
    eps_norm = (
        EPSNorm(setup.diffusion, config.ssni.num_levels, batch_size=_rows(config))
        if uses_scores and setup.stats is not None
        else None
    )
    for noise in config.defence.noises:
        model = build_defence(config, setup, noise, eps_norm=eps_norm)
        name = row_label(config, model, noise)
        for attack_name in attack.attacks:
            spec = get_attack(attack_name)
            if not spec.applies(model):
                continue
            key = f"{config.defence.method}-{noise}-{attack_name}"
            budget = attack.budget(attack_name)
            rows.append(Row(key, name, model, attack_name, budget))
            if spec.in_loop and attack.judge_draws:
                for criterion in attack.criteria:
                    judged = {**budget, "judge_draws": attack.judge_draws, "criterion": criterion}
                    rows.append(Row(f"{key}-{criterion}", name, model, attack_name, judged))
    return rows


def place(setup: Setup, compute: ComputeConfig) -> torch.device:
    """Move the setup's models to the configured device and give the diffusion network its
    compute dtype, memory order and compilation; says on stderr which dtype runs and why."""
    import sys

    device = torch.device(compute.device)
    why = f" ({compute.dtype_reason})" if compute.dtype_reason else ""
    print(f"art-ssni: {compute.device}, {compute.dtype}{why}", file=sys.stderr)
    setup.diffusion = setup.diffusion.to(device).set_speed_options(
        compute_dtype=TORCH_DTYPES[compute.dtype],
        channels_last=compute.channels_last,
        compile=compute.compile,
    )
    setup.classifier = setup.classifier.to(device)
    return device


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return torch.distributed.get_rank(), world


def run_evaluation(
    config: RunConfig,
    setup: Setup,
    *,
    out: str | os.PathLike,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Evaluate ``config`` on ``setup``, resumably in ``out``; the results on rank 0 (``None``
    on other ranks under ``torchrun``). ``config.runs`` > 1 repeats the evaluation with seeds
    seed..seed+runs-1 on the same images (each in ``out/run_<k>``) and reports mean ± std."""
    from .evaluation.report import combine_runs, format_table, write_report

    device = place(setup, config.compute)
    index = subset(setup.x.shape[0], config.n_images, config.seed)
    x, y = setup.x[index], setup.y[index]
    rank, world = _distributed()
    rows = build_rows(config, setup)
    out = Path(out)
    if overwrite and rank == 0:
        clear_run_dir(out)
    barrier(world)
    record = config.as_dict()
    reference = {"reference": setup.stats.summary()} if setup.stats is not None else {}
    inputs = {
        "rows": [row.key for row in rows],
        "indices": index.tolist(),
        "images": tensor_digest(x, y),
        "diffusion": module_digest(setup.diffusion.eps_net),
        "classifier": module_digest(setup.classifier),
        "normalisation": [list(map(float, v)) if v is not None else None
                          for v in (setup.mean, setup.std)],
        "stats": setup.stats.digest() if setup.stats is not None else None,
    }  # fmt: skip
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {device}"
    all_results = []
    per_run = len(x) * len(rows) if world == 1 else 0
    bar = progress_bar(per_run * config.runs, enabled=progress and rank == 0) if per_run else None
    for run in range(config.runs):
        run_out = out if config.runs == 1 else out / f"run_{run}"
        seed = config.seed + run
        fingerprint = {"config": record, "inputs": inputs, "run": run, "run_seed": seed}
        evaluation = Evaluation(
            run_out,
            fingerprint,
            batch_size=config.batch_size,
            draws=config.draws,
            seed=seed,
            rank=rank,
            world=world,
            progress=progress,
            save_adversarial=config.save_adversarial,
        )
        if rank == 0:
            if config.runs > 1:
                mark_run_dir(out)
            evaluation.check_config()
        barrier(world)
        merged = evaluation.run(rows, x, y, bar=bar)
        if rank == 0:
            run_info = {"seed": seed, "processes": world, "machine": machine}
            all_results.append({"config": record, "run": run_info, "rows": merged, **reference})
    if bar is not None:
        bar.close()
    if rank != 0:
        return None
    if config.runs > 1:
        for run, results in enumerate(all_results):
            write_report(results, out / f"run_{run}")
    if config.runs == 1:
        results = all_results[0]
    else:
        seeds = [r["run"]["seed"] for r in all_results]
        results = {**combine_runs(all_results), "run": {**all_results[0]["run"], "seed": seeds}}
        results.update(reference)
    print(format_table(results))
    written = write_report(results, out)
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return results


def as_tensor(value: Any, name: str, *, labels: bool = False) -> Any:
    """numpy arrays and nested lists as tensors (images float32, labels int64); tensors and
    other objects unchanged (the checks name what is wrong with them)."""
    import numpy as np

    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            array = np.asarray(value)
        except ValueError as err:
            raise ValueError(f"{name} is not a regular array ({err})") from None
        if labels:
            if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
                raise ValueError(f"{name} must hold integer class labels, got dtype {array.dtype}")
            return torch.as_tensor(array.astype(np.int64))
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
        return torch.as_tensor(np.ascontiguousarray(array))
    return value


def check_own_inputs(diffusion: Any, classifier: Any, x: Any, y: Any) -> tuple[Any, Any]:
    """The user's models and images checked before any work: x a finite [0, 1] batch of the
    diffusion model's shape, y one label per image within the classifier's outputs."""
    from .validation import check_images, check_labels, classifier_outputs

    if not isinstance(diffusion, DiffusionModel):
        raise TypeError(
            f"diffusion must be an art_ssni.DiffusionModel, got {type(diffusion).__name__} "
            "(wrap your network: DiffusionModel(eps_net, image_shape=(C, H, W)))"
        )
    if not isinstance(classifier, torch.nn.Module):
        raise TypeError(f"classifier must be a torch.nn.Module, got {type(classifier).__name__}")
    x, y = as_tensor(x, "x"), as_tensor(y, "y", labels=True)
    shape = diffusion.image_shape
    check_images(x, channels=shape[0] if shape else None, size=tuple(shape[1:]) if shape else None)
    check_labels(y, int(x.shape[0]), classes=classifier_outputs(classifier, x))
    return x, y


def prepare(
    preset: Preset | str | None = None,
    *,
    diffusion: DiffusionModel | None = None,
    classifier: torch.nn.Module | None = None,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    stats: ReferenceStats | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    sources: Sources | None = None,
    quick: bool = False,
    **options: Any,
) -> tuple[RunConfig, Setup]:
    """The resolved configuration and the models and images of an evaluation (see
    :func:`evaluate` for the arguments); nothing is run."""
    own = [v is not None for v in (diffusion, classifier, x, y)]
    if any(own) and not all(own):
        raise ValueError("give all of diffusion, classifier, x and y, or none of them")
    overrides = Overrides.from_options(**options)
    if preset is None:
        if not all(own):
            raise ValueError("name a preset (art_ssni.presets.list_presets()) or give your models")
        missing = [name for name in ("eps", "t_star") if getattr(overrides, name) is None]
        if missing:
            raise ValueError(
                f"your own models need a preset (the protocol to run) or explicit "
                f"{' and '.join(missing)}; no default fits every data set"
            )
        preset = "cifar10-linf"
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if all(own):
        x, y = check_own_inputs(diffusion, classifier, x, y)
        setup = Setup("user", diffusion, classifier, x, y, stats, mean, std)
    else:
        setup = load_setup(
            preset,
            sources or Sources(),
            n_images=overrides.n_images,
            seed=overrides.seed or 0,
            convention=overrides.convention,
        )
    std = setup.stats.std if setup.stats is not None else None
    available = int(setup.x.shape[0])
    config = resolve(preset, overrides, quick=quick, available=available, reference_std=std)
    if config.ssni.smoke_statistics and any(
        get_noise(n).uses_scores for n in config.defence.noises
    ):
        setup.stats = smoke_statistics(config, setup)
        config = resolve(
            preset, overrides, quick=quick, available=available, reference_std=setup.stats.std
        )
    if all(own):
        config = replace(config, dataset="user")
    return config, setup


def smoke_statistics(config: RunConfig, setup: Setup) -> ReferenceStats:
    """The reference statistics a smoke run computes for itself: EPS norms at its T' of
    ``config.ssni.reference_images`` of its own images (fixed subset of the run's seed). They
    let SSNI run and are no reference (the run is marked as a smoke run). Statistics at hand
    are still checked against the diffusion model, then set aside: they belong to another T'."""
    import sys

    ssni, total = config.ssni, int(setup.x.shape[0])
    if setup.stats is not None:
        own = EPSNorm(setup.diffusion, setup.stats.num_levels)
        setup.stats.check(own, setup.diffusion.image_shape)
    if total < ssni.reference_images:
        raise ValueError(
            f"a smoke run computes its statistics from {ssni.reference_images} images, but the "
            f"data holds only {total}"
        )
    replaced = (
        f", not the statistics at hand (T'={setup.stats.num_levels})"
        if setup.stats is not None
        else ""
    )
    print(
        f"art-ssni: smoke run: SSNI's statistics from {ssni.reference_images} of its images at "
        f"T'={ssni.num_levels}{replaced}",
        file=sys.stderr,
    )
    images = setup.x[subset(total, ssni.reference_images, config.seed)]
    eps_norm = EPSNorm(setup.diffusion, ssni.num_levels, batch_size=_rows(config))
    return ReferenceStats.from_images(
        eps_norm, images, batch_size=len(images), generator=config.seed, progress=False
    )


def evaluate(
    preset: Preset | str | None = None,
    *,
    out: str | os.PathLike,
    overwrite: bool = False,
    progress: bool = True,
    **arguments: Any,
) -> dict[str, Any] | None:
    """Attack and evaluate a defence; returns the results dict (``None`` on ranks other
    than 0 under ``torchrun``).

    ``preset`` names the setting (``art_ssni.presets.list_presets()``) or is a
    :class:`~art_ssni.presets.Preset`. Without your own models it loads the preset's
    (``sources=Sources(...)`` for a paper preset's checkpoints and data). With your own
    ``diffusion``, ``classifier``, ``x`` and ``y`` (images in [0, 1]; ``mean``/``std`` if the
    classifier expects normalised input; ``stats`` for SSNI) the preset supplies only the
    protocol; with no preset, pass ``eps`` and ``t_star`` and the SSNI paper's CIFAR-10
    protocol (cifar10-linf: PGD-EOT with 200 iterations of 0.007 and 20 EOT draws, the
    published method settings, three runs) supplies the rest. ``quick=True`` is the preset's
    smoke run. Every other keyword is an :class:`~art_ssni.config.Overrides` field
    (``noises="fixed,ssni-n"``, ``attacks="pgd-eot"``, ``eps=8/255``, ``t_star=100``,
    ``runs=3``, ``baseline=False``, ...). Results are written to ``out`` (resumable).
    """
    if not str(out).strip():
        raise ValueError("out must name a folder for the results, got an empty path")
    config, setup = prepare(preset, **arguments)
    return run_evaluation(config, setup, out=out, overwrite=overwrite, progress=progress)


def sanity(
    preset: Preset | str,
    *,
    noise: str = "ssni-n",
    sources: Sources | None = None,
    quick: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Gradient-masking checks (:func:`~art_ssni.evaluation.sanity.sanity_checks`) on the
    preset's method with the policy ``noise``, attacked with the preset's budget; the
    report names the defence and its gradient mode. ``progress``: one bar over the attacks."""
    from .evaluation.sanity import sanity_checks

    config, setup = prepare(preset, sources=sources, quick=quick, noises=(noise,), **options)
    device = place(setup, config.compute)
    index = subset(setup.x.shape[0], config.n_images, config.seed)
    x, y = setup.x[index].to(device), setup.y[index].to(device)
    defended = build_defence(config, setup, noise)
    defended.reseed(config.seed)
    undefended = DefendedClassifier(None, setup.classifier, setup.mean, setup.std)
    attack = config.attack
    bar = AnnouncedBar("sanity", "attack", enabled=progress)
    report = sanity_checks(
        defended, undefended, x, y, norm=attack.norm, eps=attack.eps, step=attack.step,
        iterations=attack.iterations, eot=attack.eot, draws=config.draws, seed=config.seed,
        progress=bar.announce,
    )  # fmt: skip
    bar.close()
    return {**report, "defence": defended.describe(), "gradient": config.defence.gradient}


class AnnouncedBar:
    """One progress bar, with its time estimate, over work announced step by step as lines
    "... k/total: what" before each step (how the sanity checks report their attacks). The
    bar appears at the first line, when its total is known; :meth:`close` completes it."""

    def __init__(self, desc: str, unit: str, *, enabled: bool = True) -> None:
        self.desc, self.unit, self.enabled = desc, unit, enabled
        self.bar: tqdm | None = None

    def announce(self, line: str) -> None:
        """Mark the steps before step k done and show what step k does."""
        found = re.search(r"(\d+)/(\d+)", line)
        if found is None:
            raise ValueError(f"a progress line must count its step as k/total, got {line!r}")
        step, total = int(found[1]), int(found[2])
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, disable=not self.enabled)
        self.bar.update(step - 1 - self.bar.n)
        self.bar.set_postfix_str(line.split(": ", 1)[-1])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()


def reference_stats(
    preset: Preset | str,
    *,
    sources: Sources | None = None,
    n_images: int = 5000,
    num_levels: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    convention: str | None = None,
    compute: ComputeConfig | None = None,
    progress: bool = True,
) -> ReferenceStats:
    """The EPS-norm statistics of ``n_images`` clean training images of the preset (T' =
    ``num_levels``, default the preset's), which SSNI's policies compare inputs against;
    ``compute`` is the device and speed options the network runs with."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    setup = load_setup(preset, sources or Sources(), split="train", n_images=n_images,
                       seed=seed, convention=convention)  # fmt: skip
    index = subset(setup.x.shape[0], min(n_images, setup.x.shape[0]), seed)
    compute = compute or ComputeConfig()
    device = pick_device(compute.device)
    dtype, why = pick_dtype(compute.dtype, device)
    place(setup, replace(compute, device=device, dtype=dtype, dtype_reason=why))
    rows = pick_rows(compute.network_rows, device, preset.image_size)
    eps_norm = EPSNorm(setup.diffusion, num_levels or preset.ssni.num_levels, batch_size=rows)
    return ReferenceStats.from_images(
        eps_norm, setup.x[index], batch_size=batch_size, generator=seed, progress=progress
    )
