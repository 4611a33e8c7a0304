"""The attack sanity checks (art_ssni.evaluation.sanity): their numbers, verdicts, random
perturbations and progress lines."""

import pytest
import torch

from art_ssni import DiffPure
from art_ssni.evaluation.sanity import sanity_checks
from art_ssni.models.defended import DefendedClassifier

from tiny import TinyClassifier


def test_sanity_checks_report_their_numbers_and_verdicts(diffusion):
    from art_ssni.evaluation.sanity import random_perturbation, sanity_checks

    torch.manual_seed(0)
    classifier = TinyClassifier()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    y = classifier(x).argmax(1)
    weak = DefendedClassifier(DiffPure(diffusion, t_star=1, steps=1, generator=0), classifier)
    report = sanity_checks(
        weak,
        DefendedClassifier(None, classifier),
        x,
        y,
        norm="Linf",
        eps=0.1,
        step=0.03,
        iterations=4,
        eot=1,
        draws=2,
        eps_multipliers=(1, 4),
        iteration_multipliers=(1, 2),
        restart_counts=(1, 3),
    )
    assert [r["eps"] for r in report["by_eps"]] == [0.1, 0.4]
    assert [r["iterations"] for r in report["by_iterations"]] == [4, 8]
    assert report["checks"]["accuracy_falls_with_eps"] and report["checks"]["undefended_is_broken"]
    assert report["checks"]["attack_beats_random_noise"]
    assert [r["restarts"] for r in report["by_restarts"]] == [1, 3]
    assert report["in_loop"]["judge_draws"] == 2 and report["in_loop"]["criterion"] == "vote"
    restarts = [r["robust_vote"] for r in report["by_restarts"]]
    assert report["checks"]["more_restarts_never_help"] == (restarts[1] <= restarts[0] + 0.05)
    assert report["checks"]["in_loop_at_most_one_shot"] == (
        report["in_loop"]["robust_vote"] <= report["attack_vote"] + 0.05
    )
    assert report["passed"] == all(report["checks"].values())
    block = report["convergence"]
    assert (block["iterations"], block["doubled_iterations"], block["images"]) == (4, 8, 16)
    assert block["robust_vote"] == report["by_iterations"][0]["robust_vote"]
    assert block["doubled_robust_vote"] == report["by_iterations"][1]["robust_vote"]
    inside = block["ci95"][0] <= block["doubled_robust_vote"] <= block["ci95"][1]
    assert report["converged"] == block["converged"] == inside
    assert report["checks"]["budget_converged"] == inside
    noisy = random_perturbation(x, "Linf", 0.05, torch.Generator().manual_seed(0))
    assert (noisy - x).abs().max() <= 0.05 + 1e-6 and noisy.min() >= 0 and noisy.max() <= 1
    l2 = random_perturbation(x, "L2", 0.5, torch.Generator().manual_seed(0))
    assert ((l2 - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()


def test_sanity_reports_progress():
    model = DefendedClassifier(None, TinyClassifier())
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    lines: list[str] = []
    sanity_checks(
        model, model, x, y, norm="Linf", eps=0.1, step=0.05, iterations=1, eot=1, draws=1,
        progress=lines.append,
    )  # fmt: skip
    assert len(lines) == 13  # eps x5, iterations x3, at eps, restarts x2, in-loop, undefended
    assert lines[0] == "sanity attack 1/13: eps = 0.05"
    assert lines[-1] == "sanity attack 13/13: the undefended classifier"


def test_settled_reads_the_wilson_interval_of_the_budget():
    from art_ssni.evaluation.accuracy import wilson_interval
    from art_ssni.evaluation.sanity import convergence, settled

    low, high = wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert settled(0.5, 0.55, 100) == (True, [low, high])
    assert settled(0.5, 0.35, 100)[0] is False and settled(0.5, 0.65, 100)[0] is False
    sweep = [{"iterations": 5, "robust_vote": 0.5}, {"iterations": 10, "robust_vote": 0.3}]
    assert convergence(sweep, 5, 100)["converged"] is False
    assert convergence(sweep, 10, 100) is None  # no run at twice the budget
