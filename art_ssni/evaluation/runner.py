"""Batch-by-batch evaluation that survives interruption and shards across processes.

Every (row, batch) pair is one unit of work. Its draws come from the row's seed and each
sample's index in the evaluated images alone, so the result depends neither on the batch
size nor on which process ran it or whether the run was resumed. A finished unit is written
atomically, sealed with a digest of its results, to ``out_dir/parts/<row>/batch_<k>.pt``; a
restarted run (even after kill -9) skips the units whose files exist and are intact. Under
``torchrun`` the units are dealt out in turn (unit i to rank i % world), so every rank works
even when there is one batch, and rank 0 merges the parts once all ranks are done.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
import zlib
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._rng import RandomSource, SampleStreams
from ..io import atomic_torch_save, atomic_write_bytes
from ..models.defended import DefendedClassifier
from .accuracy import aggregate, intervals, predict_with_levels
from .ensembles import summarise
from .registry import ATTACKS, get_attack
from .results import make_row
from .rundir import clear_run_dir as clear_run_dir
from .rundir import mark_run_dir

# DiffBreak's names for robust accuracy under in-loop judging with each criterion.
INLOOP_NAMES = {"worst": "Wor.Rob", "vote": "MV.Rob"}


@dataclass
class Row:
    """One line of the results table: a defended model under one attack."""

    key: str
    method: str
    model: nn.Module
    attack: str
    attack_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.attack != "none":
            get_attack(self.attack)
        if not self.key.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"row key must be file-safe, got {self.key!r}")


def row_seed(seed: int, key: str) -> int:
    """The seed of one row, shared by all its batches: each sample's draws are keyed by its
    index in the evaluated images, so no number depends on the batch size, the rank, the order
    or a resumption."""
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


def _version(row: Row) -> int:
    return ATTACKS[row.attack].version if row.attack != "none" else 1


def _defence(model: nn.Module) -> DefendedClassifier | None:
    return model if isinstance(model, DefendedClassifier) else None


def named_samples(model: nn.Module, ids: torch.Tensor) -> AbstractContextManager:
    """Name a batch's samples by their indices in the evaluated images, so that each draws
    from its own random stream whatever batch it is evaluated in (a no-op undefended)."""
    defence = _defence(model)
    return defence.samples(ids) if defence is not None else nullcontext()


def evaluate_batch(
    row: Row,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    draws: int,
    ids: torch.Tensor | None = None,
    save_adversarial: bool = False,
) -> dict[str, Any]:
    """Attack one batch, then judge clean and adversarial inputs over ``draws`` passes,
    recording the levels each judging pass used. ``ids`` (the samples' indices in the
    evaluated images) key every random draw, the defence's and the attack's, so a sample's
    numbers do not depend on the batch it is in; without them draws are keyed by position."""
    model = row.model
    defence = _defence(model)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    if defence is not None:
        defence.reseed(seed)
    settings = {"seed": seed, "draws": draws, "save_adversarial": save_adversarial}
    if ids is None:
        return _evaluate(row, x, y, **settings)
    source = SampleStreams.for_call(seed + 1, x.shape[0], ids)
    with named_samples(model, ids):
        return _evaluate(row, x, y, attack_source=source, **settings)


def _evaluate(
    row: Row,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    draws: int,
    save_adversarial: bool,
    attack_source: RandomSource = None,
) -> dict[str, Any]:
    model = row.model
    defence = _defence(model)
    start = time.perf_counter()
    breakdown: dict[str, Any] = {}
    if row.attack == "none":
        x_adv = x
    else:
        spec = ATTACKS[row.attack]
        own = {"draws": draws, "breakdown": breakdown} if spec.breakdown else {}
        source = seed + 1 if attack_source is None else attack_source
        x_adv = spec.run(model, x, y, generator=source, **row.attack_kwargs, **own)
    preds_clean, levels_clean = predict_with_levels(model, x, draws)
    if "predictions" in breakdown:
        preds_adv, levels_adv = breakdown.pop("predictions"), breakdown.pop("levels")
    else:
        preds_adv, levels_adv = predict_with_levels(model, x_adv, draws)
    record: dict[str, Any] = {
        "preds_clean": preds_clean,
        "preds_adv": preds_adv,
        "y": y.cpu(),
        "delta_linf": (x_adv - x).flatten(1).abs().max(1).values.cpu(),
        "delta_l2": (x_adv - x).flatten(1).norm(dim=1).cpu(),
    }
    if save_adversarial:
        record["x_adv"] = x_adv.detach().cpu()
    if breakdown:
        record["breakdown"] = breakdown
    if levels_clean is not None:
        record["levels_clean"] = levels_clean
        record["levels_adv"] = levels_adv
    if defence is not None:
        with torch.no_grad():
            eps_clean = defence.scores(x, seed + 3)
            if eps_clean is not None:
                record["eps_clean"] = eps_clean.float().cpu()
                record["eps_adv"] = defence.scores(x_adv, seed + 3).float().cpu()
    record["seconds"] = time.perf_counter() - start
    return record


def attack_record(row: Row, draws: int) -> dict[str, Any]:
    """The attack behind a row's numbers: its label, settings, in-loop judging and final
    judging (the runner's own ``draws``, independent of the draws judged in the loop)."""
    kwargs = row.attack_kwargs
    settings = {
        key: kwargs[key]
        for key in ("norm", "eps", "step", "iterations", "eot", "loss", "weight")
        if key in kwargs
    }
    settings["restarts"] = kwargs.get("restarts", 1)
    judge_draws = kwargs.get("judge_draws", 0)
    criterion = kwargs.get("criterion", "worst") if judge_draws else None
    label = ATTACKS[row.attack].label if row.attack != "none" else "none"
    if settings["restarts"] > 1:
        label += f" x{settings['restarts']} restarts"
    if judge_draws:
        label += f", in-loop N={judge_draws} {criterion} ({INLOOP_NAMES[criterion]})"
    return {
        "attack": label if row.attack != "none" else "none",
        "attack_settings": settings if row.attack != "none" else {},
        "judging": {
            "in_loop_draws": judge_draws,
            "criterion": criterion,
            "name": INLOOP_NAMES[criterion] if criterion else "one-shot",
        },
        "final_judging": {"draws": draws, "aggregations": ["single", "vote", "mean", "worst"]},
    }


def _merge(row: Row, parts: list[dict[str, Any]]) -> dict[str, Any]:
    def cat(name: str):
        if not parts or name not in parts[0]:
            return None
        per_draw = name.startswith(("preds", "levels"))
        return torch.cat([p[name] for p in parts], dim=1 if per_draw else 0)

    def listed(name: str):
        values = cat(name)
        return values.tolist() if values is not None else None

    y = cat("y")
    n = int(y.shape[0])
    defence = _defence(row.model)
    gradient = defence.gradient if defence is not None else None
    if row.attack != "none" and ATTACKS[row.attack].gradient is not None:
        gradient = ATTACKS[row.attack].gradient
    draws = int(cat("preds_adv").shape[0])
    combined = None
    if all("breakdown" in p for p in parts) and parts:
        combined = summarise([p["breakdown"] for p in parts], draws)
        if gradient:
            modes = [a["gradient"] or gradient for a in combined["per_attack"]]
            gradient = " + ".join(dict.fromkeys(modes))
    return make_row(
        key=row.key,
        method=row.method,
        defence=defence.describe() if defence is not None else None,
        **attack_record(row, draws),
        gradient=gradient if gradient and row.attack != "none" else "n/a",
        n=n,
        clean=aggregate(cat("preds_clean"), y),
        robust=aggregate(cat("preds_adv"), y),
        clean_ci95=intervals(cat("preds_clean"), y),
        robust_ci95=intervals(cat("preds_adv"), y),
        max_delta_linf=float(cat("delta_linf").max()),
        max_delta_l2=float(cat("delta_l2").max()),
        seconds_per_image=sum(p["seconds"] for p in parts) / n,
        levels_clean=listed("levels_clean"),
        levels_adv=listed("levels_adv"),
        eps_clean=listed("eps_clean"),
        eps_adv=listed("eps_adv"),
        ensemble=combined,
    )


class Evaluation:
    """Runs rows over a data set batch by batch, resumable and shardable.

    ``config`` is stored in ``out_dir/config.json`` by the first run; resuming into a folder
    that holds a run with another configuration raises ``ValueError``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        config: dict[str, Any],
        *,
        batch_size: int,
        draws: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        progress: bool = True,
        save_adversarial: bool = False,
    ) -> None:
        if batch_size < 1 or draws < 1:
            raise ValueError(f"batch_size and draws must be >= 1, got {batch_size}, {draws}")
        self.out_dir = Path(out_dir)
        self.config = config
        self.batch_size = batch_size
        self.draws = draws
        self.seed = seed
        self.rank = rank
        self.world = world
        self.progress = progress and rank == 0
        self.save_adversarial = save_adversarial

    @property
    def digest(self) -> str:
        """SHA-256 of the configuration: every unit file records the run it belongs to."""
        text = json.dumps(self.config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def unit_meta(self, key: str, batch: int, n: int, version: int = 1) -> dict[str, Any]:
        """What a unit file must record to be merged: its row, batch, size, run and the
        version of its row's attack (:attr:`AttackSpec.version`)."""
        return {"row": key, "batch": batch, "n": n, "config": self.digest, "version": version}

    def load_unit(self, key: str, batch: int, n: int, version: int = 1) -> dict[str, Any] | None:
        """A finished unit's record, or ``None`` (with a warning naming the file) when it is
        missing, unreadable, from another row or run, or does not hold its ``n`` samples."""
        path = self.part_path(key, batch)
        if not path.exists():
            return None
        try:
            record = torch.load(path, weights_only=True)
        except Exception as err:
            problem = f"cannot be read ({type(err).__name__}: {err})"
        else:
            problem = _unit_problem(record, self.unit_meta(key, batch, n, version), self.draws)
            if problem is None:
                return record
        warnings.warn(f"recomputing {path}: the unit file {problem}", stacklevel=2)
        return None

    def check_config(self) -> None:
        """Record the configuration, or refuse to resume a different one."""
        path = self.out_dir / "config.json"
        text = json.dumps(self.config, indent=2, sort_keys=True)
        if path.exists():
            changed = differences(json.loads(path.read_text()), json.loads(text))
            if changed:
                raise ValueError(
                    f"{self.out_dir} holds a run with other inputs or settings "
                    f"({', '.join(changed[:6])} changed); choose another --out folder or pass "
                    "--overwrite"
                )
        elif self.rank == 0:
            mark_run_dir(self.out_dir)
            atomic_write_bytes(path, text.encode())

    def save_examples(self, key: str, parts: list[dict[str, Any]]) -> Path:
        """Write a row's adversarial examples and labels to ``adversarial/<row>.pt``."""
        missing = [i for i, p in enumerate(parts) if "x_adv" not in p]
        if missing:
            raise ValueError(f"units {missing} of row {key} hold no adversarial examples")
        path = self.out_dir / "adversarial" / f"{key}.pt"
        examples = {
            "x_adv": torch.cat([p["x_adv"] for p in parts]),
            "y": torch.cat([p["y"] for p in parts]),
        }
        atomic_torch_save(examples, path)
        return path

    def part_path(self, key: str, batch: int) -> Path:
        return self.out_dir / "parts" / key / f"batch_{batch:05d}.pt"

    def run(
        self, rows: Sequence[Row], x: torch.Tensor, y: torch.Tensor, bar: tqdm | None = None
    ) -> list[dict] | None:
        """Evaluate every row; returns the merged rows on rank 0 (``None`` on other ranks).

        Progress is counted in (row, image) pairs on ``bar`` (one bar for a whole
        multi-run evaluation), or on a bar of this run's own when none is given."""
        n_batches = (x.shape[0] + self.batch_size - 1) // self.batch_size

        def size(b: int) -> int:
            return min(self.batch_size, x.shape[0] - b * self.batch_size)

        every = [(row, b) for row in rows for b in range(n_batches)]
        units = every[self.rank :: self.world]
        todo = [
            (row, b)
            for row, b in units
            if self.load_unit(row.key, b, size(b), _version(row)) is None
        ]
        done = sum(size(b) for _, b in units) - sum(size(b) for _, b in todo)
        own = bar is None
        if own:
            bar = progress_bar(sum(size(b) for _, b in units), enabled=self.progress)
        bar.update(done)
        for row, b in todo:
            bar.set_postfix_str(f"{row.key} batch {b}")
            part = slice(b * self.batch_size, (b + 1) * self.batch_size)
            record = evaluate_batch(
                row,
                x[part],
                y[part],
                seed=row_seed(self.seed, row.key),
                draws=self.draws,
                ids=torch.arange(size(b)) + b * self.batch_size,
                save_adversarial=self.save_adversarial,
            )
            record["meta"] = {
                **self.unit_meta(row.key, b, size(b), _version(row)),
                "seal": seal(record),
            }
            atomic_torch_save(record, self.part_path(row.key, b))
            bar.update(size(b))
        if own:
            bar.close()
        barrier(self.world)
        if self.rank != 0:
            return None
        merged = []
        for row in rows:
            parts = []
            for b in range(n_batches):
                record = self.load_unit(row.key, b, size(b), _version(row))
                if record is None:
                    raise ValueError(
                        f"unit {self.part_path(row.key, b)} is missing or invalid after the run; "
                        "rerun to recompute it"
                    )
                parts.append(record)
            merged.append(_merge(row, parts))
            if self.save_adversarial:
                self.save_examples(row.key, parts)
        return merged


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """The dotted paths at which two JSON values differ (``inputs.classifier``, ...)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in differences(old.get(k), new.get(k), f"{path}{k}.")]
    return [] if old == new else [path.rstrip(".") or "the whole record"]


def progress_bar(total: int, *, enabled: bool = True) -> tqdm:
    """One bar for a whole evaluation, in (row, image) pairs, with its time estimate."""
    return tqdm(total=total, disable=not enabled, desc="evaluate", unit="image-row")


def _unit_problem(record: Any, meta: dict[str, Any], draws: int) -> str | None:
    """Why a loaded unit does not belong where it lies, or ``None`` when it does."""
    if not isinstance(record, dict) or not isinstance(record.get("meta"), dict):
        return "records no row, batch and configuration (written by another version?)"
    found = {"version": 1, **record["meta"]}
    wrong = [f"{k} {found.get(k)!r} (expected {v!r})" for k, v in meta.items() if found.get(k) != v]
    if wrong:
        return "belongs elsewhere: " + ", ".join(wrong)
    n = meta["n"]
    shapes = {"y": (n,), "preds_clean": (draws, n), "preds_adv": (draws, n)}
    shapes.update({name: (draws, n) for name in ("levels_clean", "levels_adv") if name in record})
    for name, shape in shapes.items():
        value = record.get(name)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else value
            return f"holds {name} of shape {got}, expected {shape}"
    if found.get("seal") != seal(record):
        return "was changed after the run wrote it (its contents do not match their seal)"
    return None


def seal(record: dict[str, Any]) -> str:
    """SHA-256 of a unit's results (everything but ``meta``: tensors by dtype, shape and
    bytes, other values as JSON), written into its ``meta`` so that a unit edited after the
    run wrote it is recomputed rather than merged."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            digest.update(f"tensor {value.dtype} {tuple(value.shape)}:".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"dict {len(value)}:".encode())
            for key in sorted(value, key=str):
                digest.update(f"{key!s}=".encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"list {len(value)}:".encode())
            for item in value:
                feed(item)
        else:
            digest.update(json.dumps(value, default=str).encode())

    feed({k: v for k, v in record.items() if k != "meta"})
    return digest.hexdigest()


def barrier(world: int) -> None:
    """Wait for every rank when running under torch.distributed."""
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
