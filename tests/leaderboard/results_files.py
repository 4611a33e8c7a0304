"""Results files for the leaderboard tests: rows in the current results schema."""

from __future__ import annotations

import json
from pathlib import Path

from art_ssni.evaluation.results import ROW_FIELDS


def make_row(
    key: str = "diffpure-ssni-n-pgd-eot",
    *,
    method: str = "DiffPure + SSNI-N",
    attack: str = "PGD-EOT",
    clean: tuple[float, float] = (0.75, 0.5),
    robust: tuple[float, float] = (0.25, 0.125),
    n: int = 128,
    draws: int = 5,
    eps: float = 8 / 255,
    iterations: int = 10,
    in_loop: int = 0,
    criterion: str | None = None,
    **fields,
) -> dict:
    """A results row with every field of the current schema (absent ones None)."""

    def aggregations(vote: float, worst: float) -> dict:
        return {"single": vote, "vote": vote, "mean": vote, "worst": worst}

    row = dict.fromkeys(ROW_FIELDS)
    row.update(
        key=key,
        method=method,
        defence={"method": "DiffPure", "classifier": "SmallCNN", "noise": "SSNISigmoid(t=60)"},
        attack=attack,
        attack_settings={"norm": "Linf", "eps": eps, "step": 2 / 255, "iterations": iterations,
                         "eot": 1, "restarts": 1},
        judging={"in_loop_draws": in_loop, "criterion": criterion, "name": "one-shot"},
        final_judging={"draws": draws, "aggregations": ["single", "vote", "mean", "worst"]},
        gradient="full",
        n=n,
        clean=aggregations(*clean),
        robust=aggregations(*robust),
        seconds_per_image=1.5,
        levels_clean=[[10, 20], [30, 40]],
        levels_adv=[[90, 90], [90, 90]],
    )  # fmt: skip
    row.update(fields)
    return row


def write_results(
    path: Path, rows: list[dict], *, dataset: str = "cifar10", smoke: bool = False
) -> Path:
    config = {
        "preset": "test",
        "dataset": dataset,
        "attack": {"norm": "Linf", "eps": 8 / 255, "step": 2 / 255, "iterations": 10, "eot": 1,
                   "restarts": 1, "judge_draws": 0},
        "compute": {"device": "cpu", "dtype": "float32"},
        "n_images": 128,
        "draws": 5,
        "runs": 1,
        "smoke": smoke,
    }  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"config": config, "rows": rows}))
    return path / "results.json"
