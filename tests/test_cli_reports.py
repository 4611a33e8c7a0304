"""Reports and command-line extras: PAPER.md's commands parse, Wilson intervals, --runs N
(every run and their mean ± std, each resumable), --quick is a marked smoke run whose attack
reaches epsilon, the baseline's attack, --save-adversarial, --version and --help."""

import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch

from art_ssni.cli import build_parser, main
from art_ssni.config import smoke_step
from art_ssni.evaluation.accuracy import intervals, wilson_interval
from art_ssni.evaluation.report import combine_runs, to_markdown
from art_ssni.evaluation.sanity import sanity_checks
from art_ssni.models.defended import DefendedClassifier
from art_ssni.pipeline import build_rows
from art_ssni.presets import get_preset, list_presets

from tiny import TinyClassifier, plan

PAPER = Path(__file__).resolve().parents[1] / "benchmarks" / "PAPER.md"
SMALL = ["--n-images", "4", "--batch-size", "4", "--iterations", "1", "--eot", "1"]
SMALL += ["--draws", "2", "--steps", "2", "--t-star", "5", "--no-progress"]
SMALL += ["--noise", "fixed", "--attack", "pgd-eot"]


def paper_commands() -> list[list[str]]:
    """Every art-ssni command in PAPER.md's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", PAPER.read_text(), flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command)
            if words and words[0] == "art-ssni":
                commands.append(words[1:])
    return commands


def test_every_paper_command_parses():
    commands = paper_commands()
    assert len(commands) == 49  # 2 stats, 36 table rows, 3 sampler rows, 8 DAC/MANI-Pure rows
    parser = build_parser()
    evaluate, samplers = 0, []
    for words in commands:
        args = parser.parse_args(words)
        if args.command == "evaluate":
            evaluate += 1
            assert args.runs == 3 and args.preset in list_presets()
            if args.preset == "cifar10-sampler":
                samplers.append(args.sampler)
    assert evaluate == 47
    assert samplers == list(get_preset("cifar10-sampler").samplers)


# Wilson intervals: known values, per aggregation, and over runs


def test_wilson_interval_known_values():
    z = 1.959963984540054
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(z * z / (10 + z * z))  # closed form at p = 0
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)  # tabulated 95 % interval
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(10 / (10 + z * z))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_intervals_of_predictions():
    predictions = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 0]])
    y = torch.tensor([0, 1, 2, 3])
    found = intervals(predictions, y)
    assert found["single"] == list(wilson_interval(4, 4))
    assert found["worst"] == list(wilson_interval(3, 4))


def test_combine_runs_mean_and_sample_std():
    def run(clean, robust):
        row = {"key": "r", "method": "m", "attack": "a", "seconds_per_image": 1.0}
        row["clean"] = {"vote": clean, "worst": clean}
        row["robust"] = {"vote": robust, "worst": robust}
        row["robust_ci95"] = {"vote": [0, 1]}
        return {"config": {"draws": 2}, "rows": [row]}

    combined = combine_runs([run(0.5, 0.25), run(0.75, 0.5), run(1.0, 0.75)])
    row = combined["rows"][0]
    assert combined["config"]["runs"] == 3
    assert row["clean"]["vote"] == pytest.approx(0.75)
    assert row["runs_std"]["robust"]["vote"] == pytest.approx(0.25)  # sample std of .25/.5/.75
    assert row["per_run"]["robust"]["worst"] == [0.25, 0.5, 0.75]
    assert "robust_ci95" not in row
    assert "75.0±25.0" in to_markdown(combined)


# --runs N writes every run and their mean ± std, and each run resumes


def test_runs_write_each_run_and_the_mean(tmp_path):
    out = tmp_path / "runs"
    assert main(["evaluate", *SMALL, "--runs", "2", "--out", str(out)]) == 0
    runs = [json.loads((out / f"run_{k}" / "results.json").read_text()) for k in range(2)]
    assert [r["run"]["seed"] for r in runs] == [0, 1]
    assert [r["config"]["seed"] for r in runs] == [0, 0]  # the configured seed of the set
    combined = json.loads((out / "results.json").read_text())
    assert combined["config"]["runs"] == 2
    for index, row in enumerate(combined["rows"]):
        values = [r["rows"][index]["robust"]["vote"] for r in runs]
        assert row["robust"]["vote"] == pytest.approx(sum(values) / 2)
        assert row["runs_std"]["robust"]["vote"] == pytest.approx(
            abs(values[0] - values[1]) / math.sqrt(2)
        )
    assert "over 2 runs" in (out / "results.md").read_text()
    part = out / "run_1" / "parts" / "none-pgd" / "batch_00000.pt"
    stamp = part.stat().st_mtime_ns
    assert main(["evaluate", *SMALL, "--runs", "2", "--out", str(out)]) == 0
    assert part.stat().st_mtime_ns == stamp  # each run resumes
    assert (out / ".art-ssni-run").is_file()  # so that --overwrite may clear the whole set


# --quick is an honest smoke run: marked, and its attack reaches epsilon


def test_quick_step_reaches_eps_and_is_marked(tmp_path):
    config, _ = plan(["evaluate", "--quick", "--out", str(tmp_path)])
    attack = config.attack
    assert config.smoke and (attack.eps, attack.iterations) == (0.2, 3)
    assert attack.step * attack.iterations >= attack.eps
    assert attack.step == pytest.approx(smoke_step(0.2, 3))
    explicit, _ = plan(["evaluate", "--quick", "--step", "0.01", "--out", "o"])
    assert explicit.attack.step == 0.01
    md = to_markdown({"config": {"smoke": True}, "rows": []})
    assert "Smoke run" in md
    assert "Smoke run" not in to_markdown({"config": {"smoke": False}, "rows": []})


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


# reports and command-line extras


def test_baseline_runs_under_the_asked_attack_and_tau_is_recorded(tmp_path):
    config, setup = plan(
        ["evaluate", "--attack", "bpda-eot", "--noise", "ssni-n", "--out", str(tmp_path)]
    )
    assert config.ssni.tau == setup.stats.std  # the statistics' spread, recorded as run
    assert config.ssni.bias_for("ssni-n") == 0
    rows = build_rows(config, setup)
    assert (rows[0].key, rows[0].attack) == ("none-bpda-eot", "bpda-eot")
    policy = rows[1].model.purifier.noise
    assert policy.tau == setup.stats.std and policy.bias == 0
    assert f"tau={setup.stats.std:g}" in rows[1].model.describe()["noise"]  # in results.json


def test_save_adversarial_and_intervals_in_results(tmp_path):
    out = tmp_path / "adv"
    assert main(["evaluate", *SMALL, "--save-adversarial", "--out", str(out)]) == 0
    saved = torch.load(out / "adversarial" / "none-pgd.pt", weights_only=True)
    results = json.loads((out / "results.json").read_text())
    row = results["rows"][0]
    assert saved["x_adv"].shape == (4, 1, 8, 8) and saved["y"].shape == (4,)
    from art_ssni.data.digits import load_digits

    x, y = load_digits("test")
    index = json.loads((out / "config.json").read_text())["inputs"]["indices"]
    assert torch.equal(saved["y"], y[index])
    delta = float((saved["x_adv"] - x[index]).abs().max())
    assert delta == pytest.approx(row["max_delta_linf"]) and 0 < delta <= 0.2 + 1e-6
    hits = round(row["robust"]["vote"] * 4)
    assert row["robust_ci95"]["vote"] == list(wilson_interval(hits, 4))
    assert "95% confidence intervals" in (out / "results.md").read_text()


def test_version_and_help_list_choices(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("art-ssni ")
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("cifar10-linf", "imagenet-linf", "gns", "selector-aware", "autoattack"):
        assert name in text
