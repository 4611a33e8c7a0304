"""The adaptive-attack ensemble (art_ssni.evaluation.ensembles): which candidate each image
keeps, which images later attacks run on, the per-attack counts, the defaults per defence,
the runner's record and report, and bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from art_ssni import DAC, AttentionMask, DiffPure, EPSNorm, MANIPure, SSNISigmoid
from art_ssni.config import AttackConfig
from art_ssni.evaluation import default_members, ensemble
from art_ssni.evaluation.accuracy import majority_vote
from art_ssni.evaluation.ensembles import ENSEMBLE_BUDGET, RENAMED, summarise
from art_ssni.evaluation.registry import ATTACKS, AttackSpec
from art_ssni.evaluation.report import to_markdown
from art_ssni.evaluation.runner import Evaluation, Row
from art_ssni.models.defended import DefendedClassifier

from tiny import Probe, TinyClassifier, defended

# The scripted defence: two classes, label 0 right. An image whose pixels all equal
# 0.5 + 0.01 c is wrong in each draw with probability P[c]; clean images (below 0.5) never.
P = [0.0, 0.05, 0.1, 0.2, 0.3, 0.9, 1.0, 0.5]
DRAWS = 41


class Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # the runner's device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)
        code = ((m - 0.5) / 0.01).round().long().clamp(0, len(P) - 1)
        p = torch.where(m >= 0.5 - 1e-6, torch.tensor(P)[code], torch.zeros_like(m))
        wrong = torch.rand(m.shape, generator=self.generator) < p
        return torch.stack([(~wrong).float(), wrong.float()], 1)


# Per attack, the code it reaches on each of the four images (clean pixel value 0.1 i).
CODES = {"fake-a": [5, 3, 0, 0], "fake-b": [0, 1, 4, 0], "fake-c": [0, 6, 2, 0]}
COIN = 7  # wrong in each draw with probability 1/2


def _fake(name: str, calls: dict[str, list[int]]):
    def attack(model, x, y, *, generator, eps):
        images = (x.flatten(1).mean(1) / 0.1).round().long().tolist()
        calls[name] = images
        codes = torch.tensor([CODES[name][i] for i in images], dtype=x.dtype)
        return (0.5 + 0.01 * codes).view(-1, 1, 1, 1).expand_as(x).clone()

    return AttackSpec(name, name.upper(), attack, ("eps",), in_loop=False)


@pytest.fixture
def scripted(monkeypatch):
    calls: dict[str, list[int]] = {}
    for name in CODES:
        monkeypatch.setitem(ATTACKS, name, _fake(name, calls))
    x = (0.1 * torch.arange(4.0)).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    return x, torch.zeros(4, dtype=torch.long), calls


def test_each_image_keeps_the_first_vote_breaking_candidate_else_the_fewest_correct(scripted):
    x, y, calls = scripted
    breakdown: dict = {}
    x_adv = ensemble(Scripted(), x, y, list(CODES), generator=0, draws=DRAWS,
                     breakdown=breakdown, eps=1.0)  # fmt: skip
    codes = ((x_adv.flatten(1).mean(1) - 0.5) / 0.01).round().long().tolist()
    # image 0: A breaks the vote (90 % wrong); image 1: A only fools some draws (20 %), B
    # fewer (5 %), C breaks the vote; image 2: no vote breaks, B has the fewest correct
    # draws (30 % wrong); image 3: nothing is ever wrong, the earlier attack's is kept.
    assert codes == [5, 6, 4, 0]
    assert calls == {"fake-a": [0, 1, 2, 3], "fake-b": [1, 2, 3], "fake-c": [1, 2, 3]}
    assert breakdown["members"] == list(CODES)
    assert breakdown["first_vote"].tolist() == [0, 2, -1, -1]
    assert breakdown["first_worst"].tolist() == [0, 0, 1, -1]
    assert breakdown["kept"].tolist() == [0, 2, 1, 0]
    assert breakdown["ran"].tolist() == [[True] * 4] + [[False, True, True, True]] * 2
    assert breakdown["correct"][3] == DRAWS and DRAWS / 2 < breakdown["correct"][2] < DRAWS

    record = summarise([breakdown], DRAWS)
    counts = [(a["ran_on"], a["broke_vote"], a["broke_worst"], a["kept"])
              for a in record["per_attack"]]  # fmt: skip
    assert counts == [(4, 1, 2, 2), (3, 0, 1, 1), (3, 1, 0, 1)]
    assert (record["unbroken_vote"], record["unbroken_worst"]) == (2, 1)


def test_the_row_is_the_ensembles_own_judging_not_a_fresh_one(tmp_path, monkeypatch):
    """Every image reaches a coin-flip code: the ensemble keeps the images whose vote broke in
    its judging. Judged again on fresh draws about half of those would hold, and the row would
    report more robustness than the ensemble found; the runner records the ensemble's verdict."""
    calls: dict[str, list[int]] = {}
    monkeypatch.setitem(CODES, "fake-coin", [COIN] * 40)
    monkeypatch.setitem(ATTACKS, "fake-coin", _fake("fake-coin", calls))
    x = torch.linspace(0, 0.3, 40).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    y = torch.zeros(40, dtype=torch.long)
    row = Row("coin-ensemble", "coin", Scripted(), "ensemble",
              {"attacks": ["fake-coin"], "eps": 1.0})  # fmt: skip
    evaluation = Evaluation(tmp_path, {}, batch_size=40, draws=5, seed=0, progress=False)
    (merged,) = evaluation.run([row], x, y)
    record = merged["ensemble"]
    assert 0 < record["unbroken_vote"] < 40
    assert merged["robust"]["vote"] == pytest.approx(record["unbroken_vote"] / 40)
    assert merged["robust"]["worst"] == pytest.approx(record["unbroken_worst"] / 40)


def test_the_verdict_is_the_worst_of_every_members_judging(weak_defence):
    """The returned verdict is the kept candidates' judging: its vote is wrong exactly on the
    images some member broke, and its correct draws are the fewest any member's candidate left
    (with 3 draws a broken vote has at most 1 correct draw, an unbroken one at least 1)."""
    weak, x, y = weak_defence
    breakdown: dict = {}
    ensemble(weak, x, y, ["pgd-eot", "low-frequency", "bpda-eot"], generator=1, draws=3,
             breakdown=breakdown, eps=0.02, step=0.03, iterations=2, eot=1)  # fmt: skip
    ran, correct = breakdown["ran"], breakdown["member_correct"]
    assert ran[0].all() and 0 < int(ran[1].sum()) < 8 and (ran == (correct >= 0)).all()
    fewest = correct.masked_fill(~ran, 99).min(0).values
    verdict = breakdown["predictions"]
    assert (verdict == y).sum(0).tolist() == fewest.tolist() == breakdown["correct"].tolist()
    broken = breakdown["first_vote"] >= 0
    assert (majority_vote(verdict) != y).tolist() == broken.tolist()
    assert ran[1].tolist() == (~broken | (breakdown["first_vote"] > 0)).tolist()
    assert breakdown["levels"].tolist() == [[1] * 8] * 3  # DiffPure's t* = 1, every pass


def test_batches_sum_and_must_run_the_same_attacks(scripted):
    x, y, _ = scripted
    parts = []
    for half in (slice(0, 2), slice(2, 4)):
        parts.append({})
        ensemble(Scripted(), x[half], y[half], list(CODES), generator=0, draws=DRAWS,
                 breakdown=parts[-1], eps=1.0)  # fmt: skip
    record = summarise(parts, DRAWS)
    assert [a["ran_on"] for a in record["per_attack"]] == [4, 3, 3]
    parts[1]["members"] = ["fake-a", "fake-c", "fake-b"]
    with pytest.raises(ValueError, match="different attacks"):
        summarise(parts, DRAWS)


def test_defaults_follow_the_defence(diffusion, stats):
    common = ("apgd-ce", "apgd-dlr", "pgd-eot", "bpda-eot")
    assert default_members(defended(diffusion)) == (*common, "low-frequency")
    policy = SSNISigmoid(EPSNorm(diffusion, num_levels=5), stats, 10, tau=1.0)
    ssni = DefendedClassifier(DiffPure(diffusion, noise=policy, t_star=10, steps=1),
                              TinyClassifier())  # fmt: skip
    assert default_members(ssni) == (
        *common, "selector-aware", "selector-constrained", "low-frequency",
    )  # fmt: skip
    mask = AttentionMask(Probe(), ("first", "second"))
    dac = DAC(diffusion, mask=mask, t_large=10, t_small=5, stride=5, surrogate_stride=5)
    members = default_members(DefendedClassifier(dac, TinyClassifier()))
    assert members == (*common, "dac-mask", "low-frequency")
    mani = MANIPure(diffusion, t_star=10, steps=1, surrogate_steps=1, bands=2, radius=1.0)
    members = default_members(DefendedClassifier(mani, TinyClassifier()))
    assert members == (*common, "spectral", "low-frequency")
    assert default_members(DefendedClassifier(None, TinyClassifier()))[-1] == "low-frequency"


def test_the_budget_covers_every_members_keywords():
    for name, spec in ATTACKS.items():
        if name != "ensemble":
            assert set(spec.takes) <= set(ENSEMBLE_BUDGET), name
    assert set(RENAMED) <= set(ENSEMBLE_BUDGET)


def test_bad_arguments_are_named(diffusion, images):
    model = defended(diffusion)
    y = torch.arange(6)
    with pytest.raises(ValueError, match="unknown ensemble member 'cw'"):
        ensemble(model, images, y, ["pgd-eot", "cw"])
    with pytest.raises(ValueError, match="unknown ensemble member 'ensemble'"):
        ensemble(model, images, y, ["ensemble"])
    with pytest.raises(ValueError, match="'selector-aware' cannot attack this defence: .*SSNI"):
        ensemble(model, images, y, ["pgd-eot", "selector-aware"], iterations=1)
    with pytest.raises(ValueError, match="'dac-mask' cannot attack this defence: .*DAC"):
        ensemble(model, images, y, ["dac-mask"], iterations=1)
    with pytest.raises(ValueError, match=r"not \['loss'\]"):
        ensemble(model, images, y, ["pgd-eot"], loss="dlr")
    with pytest.raises(ValueError, match="judging draws"):
        ensemble(model, images, y, ["pgd-eot"], draws=0)
    with pytest.raises(ValueError, match="at least one attack"):
        ensemble(model, images, y, [])
    with pytest.raises(ValueError, match="twice"):
        ensemble(model, images, y, ["pgd-eot", "pgd-eot"])


def test_the_runner_records_and_reports_the_ensemble(tmp_path, weak_defence):
    weak, x, y = weak_defence
    budget = AttackConfig(eps=0.1, step=0.03, iterations=3, eot=1).budget("ensemble")
    row = Row("weak-ensemble", "weak", weak, "ensemble", budget)
    evaluation = Evaluation(tmp_path, {}, batch_size=5, draws=3, seed=0, progress=False)
    (merged,) = evaluation.run([row], x, y)
    record = merged["ensemble"]
    assert record["members"] == ["apgd-ce", "apgd-dlr", "pgd-eot", "bpda-eot", "low-frequency"]
    assert record["judging_draws"] == 3
    first = record["per_attack"][0]
    assert first["ran_on"] == 8 and first["broke_vote"] > 0
    broke = sum(a["broke_vote"] for a in record["per_attack"])
    assert broke + record["unbroken_vote"] == 8
    assert sum(a["kept"] for a in record["per_attack"]) == 8
    later = [a["ran_on"] for a in record["per_attack"][1:]]
    assert all(r <= 8 - first["broke_vote"] for r in later)
    assert merged["gradient"] == "full + bpda"
    assert merged["max_delta_linf"] <= 0.1 + 1e-6
    text = to_markdown({"config": {"draws": 3}, "rows": [merged]})
    assert "## Ensemble: the images each attack broke" in text
    assert "| weak | apgd-ce | 8 |" in text
    assert f"no attack broke {record['unbroken_vote']} of 8 images under the vote" in text


def test_every_policy_gets_one_ensemble_row_and_no_in_loop_rows():
    from art_ssni.pipeline import build_rows, prepare

    config, setup = prepare("digits", quick=True, attacks=("ensemble",), judge_draws=2)
    rows = build_rows(config, setup)
    assert [row.key for row in rows] == [
        "none-ensemble",
        "diffpure-fixed-ensemble",
        "diffpure-ssni-l-ensemble",
        "diffpure-ssni-n-ensemble",
    ]
    assert rows[0].attack_kwargs["eot"] == 1


def test_units_an_older_ensemble_rule_wrote_are_recomputed(tmp_path, weak_defence):
    """A unit records its attack's version; one written before versions were recorded is
    version 1, which still holds for PGD-EOT but not for the ensemble (now version 2)."""
    weak, x, y = weak_defence
    config = AttackConfig(eps=0.05, step=0.03, iterations=1, eot=1)
    rows = [
        Row("weak-ensemble", "weak", weak, "ensemble",
            {**config.budget("ensemble"), "attacks": ["pgd-eot"]}),
        Row("weak-pgd", "weak", weak, "pgd-eot", config.budget("pgd-eot")),
    ]  # fmt: skip
    evaluation = Evaluation(tmp_path, {}, batch_size=8, draws=3, seed=0, progress=False)
    evaluation.run(rows, x, y)
    for key in ("weak-ensemble", "weak-pgd"):
        path = evaluation.part_path(key, 0)
        record = torch.load(path, weights_only=True)
        assert record["meta"].pop("version") == ATTACKS[rows[key == "weak-pgd"].attack].version
        torch.save(record, path)
    assert evaluation.load_unit("weak-pgd", 0, 8, 1) is not None
    with pytest.warns(UserWarning, match=r"version 1 \(expected 2\)"):
        assert evaluation.load_unit("weak-ensemble", 0, 8, 2) is None
