"""The results schema: what results.json holds, written and read in one place.

``results.json`` is ``{"config": {...}, "run": {...}, "rows": [{...}, ...]}``, plain JSON data.

``convergence`` (optional) says whether the attack budget converged
(:func:`art_ssni.evaluation.sanity.convergence`: robust accuracy at twice the iterations on
the same images inside the budget's Wilson interval); results.md says so, or that it was not
checked.

``config`` is the run's configuration as the pipeline records it
(:meth:`art_ssni.config.RunConfig.as_dict`): preset, dataset, n_images, draws (N: the passes
of the defence each input is judged over), seed, attack and defence settings, smoke (a
``--quick`` run, not a result), runs, ...; :mod:`.report` shows every key it holds. ``run``
holds one run's own facts (seed, processes, machine); results combined over repeated runs
(:func:`combine_runs`) have no ``run``.

A row (one defended model under one attack; :func:`make_row` orders its :data:`ROW_FIELDS`):
    key, method: the row's file-safe key and its display name;
    defence: :meth:`~art_ssni.models.DefendedClassifier.describe` (None for a plain model);
    attack, attack_settings, judging, final_judging: the attack's label and settings, its
        in-loop judging (draws, criterion, DiffBreak's name) and the final judging (draws,
        aggregations);
    gradient: the gradient mode the attack differentiated through (full, surrogate, bpda;
        n/a without attack or purifier);
    n: images; clean, robust: accuracy under each aggregation (single, vote, mean, worst);
    clean_ci95, robust_ci95: 95 % Wilson intervals over the images of each aggregation;
    max_delta_linf, max_delta_l2: the largest perturbation of any image;
    seconds_per_image: wall seconds of attack plus judging;
    levels_clean, levels_adv: draws x n nested lists, the level each image got in each
        judging pass of the clean / adversarial inputs (row d is pass d, aligned with the
        predictions that gave the accuracies); None without a noise policy;
    eps_clean, eps_adv: n EPS norms (the SSNI policy's scores); None for other policies;
    ensemble: for the adaptive ensemble (:mod:`.ensembles`), its members, the rule that kept
        each image's candidate, the draws it judged them over, and per attack the images it
        ran on, was the first to break under the vote and in at least one draw (worst-of-N),
        and whose kept candidate it made; None for other attacks.
Rows combined over runs (:func:`combine_runs`) hold the mean accuracies, plus
    runs_std (their sample standard deviation) and per_run (every run's values), and no
    intervals; an ensemble's counts are the means over the runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ROW_FIELDS = (
    "key",
    "method",
    "defence",
    "attack",
    "attack_settings",
    "judging",
    "final_judging",
    "gradient",
    "n",
    "clean",
    "robust",
    "clean_ci95",
    "robust_ci95",
    "max_delta_linf",
    "max_delta_l2",
    "seconds_per_image",
    "levels_clean",
    "levels_adv",
    "eps_clean",
    "eps_adv",
    "ensemble",
)
SPLITS = ("clean", "robust")


def make_row(**fields: Any) -> dict[str, Any]:
    """A results row with exactly :data:`ROW_FIELDS`, in that order."""
    if set(fields) != set(ROW_FIELDS):
        extra = sorted(set(fields) - set(ROW_FIELDS))
        missing = sorted(set(ROW_FIELDS) - set(fields))
        raise ValueError(f"a results row has other fields: extra {extra}, missing {missing}")
    return {name: fields[name] for name in ROW_FIELDS}


def combine_runs(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One results dict from several runs of the same rows: accuracies are the mean over
    runs, ``runs_std`` their sample standard deviation, ``per_run`` every run's values."""
    if not results:
        raise ValueError("combine_runs needs at least one run")
    keys = [[row["key"] for row in r["rows"]] for r in results]
    if any(k != keys[0] for k in keys):
        raise ValueError("the runs do not hold the same rows")
    rows = []
    for index, first in enumerate(results[0]["rows"]):
        per_run = [r["rows"][index] for r in results]
        row = {k: v for k, v in first.items() if not k.endswith("_ci95")}
        row["runs_std"], row["per_run"] = {}, {}
        for split in SPLITS:
            row[split], row["runs_std"][split], row["per_run"][split] = {}, {}, {}
            for aggregation in first[split]:
                values = np.array([float(r[split][aggregation]) for r in per_run])
                row[split][aggregation] = float(values.mean())
                row["runs_std"][split][aggregation] = (
                    float(values.std(ddof=1)) if values.size > 1 else 0.0
                )
                row["per_run"][split][aggregation] = values.tolist()
        row["seconds_per_image"] = float(np.mean([r["seconds_per_image"] for r in per_run]))
        if first.get("ensemble"):
            row["ensemble"] = _mean_ensemble([r["ensemble"] for r in per_run])
        rows.append(row)
    config = {**results[0]["config"], "runs": len(results)}
    return {"config": config, "rows": rows}


ENSEMBLE_COUNTS = ("ran_on", "broke_vote", "broke_worst", "kept")


def _mean_ensemble(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One ensemble record from several runs': every count is the mean over the runs."""
    first = records[0]
    per_attack = [
        {
            **attack,
            **{
                key: float(np.mean([r["per_attack"][k][key] for r in records]))
                for key in ENSEMBLE_COUNTS
            },
        }
        for k, attack in enumerate(first["per_attack"])
    ]
    unbroken = {
        key: float(np.mean([r[key] for r in records]))
        for key in ("unbroken_vote", "unbroken_worst")
    }
    return {**first, "per_attack": per_attack, **unbroken, "runs": len(records)}
