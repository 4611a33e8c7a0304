"""The resumable runner (art_ssni.evaluation.runner): resume and shards give the same rows,
unit seeds, the recorded attack and judging, levels of the judging passes, the results schema,
and unit files that are broken, of another row or run, or incomplete are recomputed."""

import pytest
import torch

from art_ssni import DiffPure
from art_ssni.evaluation.results import ROW_FIELDS, make_row
from art_ssni.evaluation.runner import Evaluation, Row, evaluate_batch, row_seed
from art_ssni.models.defended import DefendedClassifier

from tiny import TinyClassifier

ATTACK = {"eps": 0.05, "step": 0.01, "iterations": 2, "eot": 1}


def _rows(diffusion):
    classifier = TinyClassifier()
    purifier = DiffPure(diffusion, t_star=6, steps=2, surrogate_steps=1)
    return [
        Row("none-pgd", "No defence", DefendedClassifier(None, classifier), "pgd-eot", ATTACK),
        Row(
            "diffpure-fixed",
            "DiffPure",
            DefendedClassifier(purifier, classifier),
            "pgd-eot",
            ATTACK,
        ),
    ]


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(10, 3, 8, 8, generator=g), torch.randint(0, 10, (10,), generator=g)


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in rows]


def test_resume_skips_finished_batches_and_gives_the_same_results(tmp_path, diffusion):
    x, y = _data()
    config = {"test": 1}
    full = Evaluation(tmp_path / "a", config, batch_size=4, draws=2, seed=0, progress=False)
    full.check_config()
    expected = full.run(_rows(diffusion), x, y)

    partial = Evaluation(tmp_path / "b", config, batch_size=4, draws=2, seed=0, progress=False)
    partial.check_config()
    partial.run(_rows(diffusion), x, y)
    removed = [partial.part_path("diffpure-fixed", 1), partial.part_path("none-pgd", 2)]
    for path in removed:
        path.unlink()
    kept = partial.part_path("diffpure-fixed", 0)
    stamp = kept.stat().st_mtime_ns
    resumed = partial.run(_rows(diffusion), x, y)
    assert kept.stat().st_mtime_ns == stamp  # finished work is not redone
    assert all(path.exists() for path in removed)
    assert _strip(resumed) == _strip(expected)
    assert [r["n"] for r in resumed] == [10, 10]
    assert not list((tmp_path / "b").rglob("*.tmp"))


def test_shards_merge_to_the_single_process_result(tmp_path, diffusion):
    x, y = _data()
    single = Evaluation(tmp_path / "one", {}, batch_size=4, draws=2, seed=3, progress=False)
    expected = single.run(_rows(diffusion), x, y)
    shared = tmp_path / "two"
    Evaluation(shared, {}, batch_size=4, draws=2, seed=3, rank=1, world=2, progress=False).run(
        _rows(diffusion), x, y
    )
    merged = Evaluation(
        shared, {}, batch_size=4, draws=2, seed=3, rank=0, world=2, progress=False
    ).run(_rows(diffusion), x, y)
    assert _strip(merged) == _strip(expected)


def test_resuming_another_configuration_is_refused(tmp_path):
    Evaluation(tmp_path, {"eps": 0.1}, batch_size=4, draws=1, seed=0).check_config()
    with pytest.raises(ValueError, match=r"other inputs or settings \(eps changed\)"):
        Evaluation(tmp_path, {"eps": 0.2}, batch_size=4, draws=1, seed=0).check_config()


def test_differences_name_the_changed_paths():
    from art_ssni.evaluation.runner import differences

    old = {"config": {"attack": {"eps": 0.1}}, "inputs": {"classifier": "a", "rows": [1]}}
    new = {"config": {"attack": {"eps": 0.2}}, "inputs": {"classifier": "b", "rows": [1]}}
    assert differences(old, new) == ["config.attack.eps", "inputs.classifier"]
    assert differences(old, old) == [] and differences(1, 2) == ["the whole record"]


def test_row_seeds_are_stable_and_distinct():
    assert row_seed(0, "a") == row_seed(0, "a")
    assert len({row_seed(s, k) for k in "abc" for s in range(50)}) == 150


def test_rows_record_the_attack_its_judging_and_the_final_judging(tmp_path, diffusion):
    x, y = _data()
    classifier = TinyClassifier()
    model = DefendedClassifier(DiffPure(diffusion, t_star=6, steps=2), classifier)
    apgd = {"eps": 0.05, "iterations": 2, "eot": 1, "restarts": 2, "loss": "dlr"}
    rows = [
        Row("apgd", "DiffPure", model, "apgd-eot", apgd),
        Row(
            "apgd-vote",
            "DiffPure",
            model,
            "apgd-eot",
            {**apgd, "judge_draws": 2, "criterion": "vote"},
        ),
    ]
    evaluation = Evaluation(tmp_path, {"t": 1}, batch_size=5, draws=3, seed=0, progress=False)
    one_shot, in_loop = evaluation.run(rows, x, y)
    assert one_shot["attack"] == "APGD-EOT x2 restarts"
    assert one_shot["judging"] == {"in_loop_draws": 0, "criterion": None, "name": "one-shot"}
    assert in_loop["attack"] == "APGD-EOT x2 restarts, in-loop N=2 vote (MV.Rob)"
    assert in_loop["judging"] == {"in_loop_draws": 2, "criterion": "vote", "name": "MV.Rob"}
    assert in_loop["attack_settings"] == {
        "eps": 0.05,
        "iterations": 2,
        "eot": 1,
        "loss": "dlr",
        "restarts": 2,
    }
    assert in_loop["final_judging"]["draws"] == 3
    assert in_loop["max_delta_linf"] <= 0.05 + 1e-6


class RandomLevels:
    """A noise policy whose levels come from the samples' streams (so they differ from pass
    to pass); it keeps every level it hands out, in order."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, generator) -> torch.Tensor:
        levels = (generator.rand((), device=x.device) * (self.top + 1)).long()
        self.calls.append(levels)
        return levels


def test_reported_levels_are_those_of_the_judging_passes(tmp_path, diffusion):
    x, y = _data()
    policy = RandomLevels(6)
    model = DefendedClassifier(
        DiffPure(diffusion, noise=policy, t_star=6, steps=2), TinyClassifier()
    )
    row = Row("random", "DiffPure", model, "pgd-eot", ATTACK)
    record = evaluate_batch(row, x[:4], y[:4], seed=5, draws=3)
    judging = torch.stack(policy.calls[-6:])  # 3 clean passes, then 3 adversarial ones
    assert record["levels_clean"].tolist() == judging[:3].tolist()
    assert record["levels_adv"].tolist() == judging[3:].tolist()
    assert len(policy.calls) > 6  # the attack's passes came first and are not reported
    assert len({tuple(levels) for levels in judging.tolist()}) > 1

    evaluation = Evaluation(tmp_path, {}, batch_size=4, draws=3, seed=0, progress=False)
    (merged,) = evaluation.run([row], x, y)
    parts = [evaluation.load_unit("random", b, n) for b, n in enumerate((4, 4, 2))]
    assert merged["levels_clean"] == torch.cat([p["levels_clean"] for p in parts], 1).tolist()
    assert merged["levels_adv"] == torch.cat([p["levels_adv"] for p in parts], 1).tolist()
    assert [len(levels) for levels in merged["levels_clean"]] == [10, 10, 10]
    assert merged["eps_clean"] is None and merged["defence"]["method"] == "DiffPure"


def test_rows_follow_the_results_schema(tmp_path, diffusion):
    x, y = _data()
    evaluation = Evaluation(tmp_path, {}, batch_size=5, draws=2, seed=0, progress=False)
    undefended, fixed = evaluation.run(_rows(diffusion), x, y)
    assert list(undefended) == list(ROW_FIELDS) and list(fixed) == list(ROW_FIELDS)
    assert undefended["levels_clean"] is None and undefended["defence"]["method"] is None
    assert fixed["levels_clean"] == [[6] * 10] * 2 and fixed["levels_adv"] == [[6] * 10] * 2
    assert fixed["gradient"] == "full" and undefended["gradient"] == "n/a"
    with pytest.raises(ValueError, match="missing"):
        make_row(key="k")


def test_a_unit_with_levels_of_another_shape_is_recomputed(tmp_path, diffusion):
    x, y = _data()
    evaluation = Evaluation(tmp_path, {}, batch_size=4, draws=2, seed=0, progress=False)
    evaluation.run(_rows(diffusion), x, y)
    path = evaluation.part_path("diffpure-fixed", 0)
    record = torch.load(path, weights_only=True)
    assert tuple(record["levels_clean"].shape) == (2, 4)
    record["levels_clean"] = record["levels_clean"][0]  # one level per image: an older layout
    torch.save(record, path)
    with pytest.warns(UserWarning, match=r"levels_clean of shape \(4,\), expected \(2, 4\)"):
        assert evaluation.load_unit("diffpure-fixed", 0, 4) is None


def _evaluation(tmp_path, config=None):
    evaluation = Evaluation(
        tmp_path, config or {"c": 1}, batch_size=4, draws=1, seed=0, progress=False
    )
    evaluation.check_config()
    return evaluation


def _row(key="none-pgd"):
    model = DefendedClassifier(None, TinyClassifier())
    return Row(key, "No defence", model, "pgd-eot", {"eps": 0.05, "step": 0.01, "iterations": 1})


def _xy():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)


def test_broken_units_are_recomputed_with_a_warning_naming_the_file(tmp_path):
    x, y = _xy()
    evaluation = _evaluation(tmp_path)
    expected = evaluation.run([_row()], x, y)
    first, second = evaluation.part_path("none-pgd", 0), evaluation.part_path("none-pgd", 1)
    first.write_bytes(first.read_bytes()[:40])  # truncated
    second.write_bytes(b"")  # empty
    with pytest.warns(UserWarning) as caught:
        resumed = evaluation.run([_row()], x, y)
    messages = " ".join(str(w.message) for w in caught)
    assert str(first) in messages and str(second) in messages
    strip = [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in resumed]
    assert strip == [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in expected]


def test_units_of_another_row_or_run_are_not_merged(tmp_path):
    x, y = _xy()
    evaluation = _evaluation(tmp_path)
    evaluation.run([_row("row-a"), _row("row-b")], x, y)
    a0, b0 = evaluation.part_path("row-a", 0), evaluation.part_path("row-b", 0)
    b0.write_bytes(a0.read_bytes())  # a unit of row-a copied into row-b
    other = Evaluation(tmp_path / "other", {"c": 2}, batch_size=4, draws=1, seed=0)
    other.check_config()
    other.run([_row("row-a")], x, y)
    a1 = evaluation.part_path("row-a", 1)
    a1.write_bytes(other.part_path("row-a", 1).read_bytes())  # same row, another run
    with pytest.warns(UserWarning) as caught:
        evaluation.run([_row("row-a"), _row("row-b")], x, y)
    messages = " ".join(str(w.message) for w in caught)
    assert f"recomputing {b0}" in messages and "row 'row-a' (expected 'row-b')" in messages
    assert f"recomputing {a1}" in messages and "config" in messages
    assert torch.load(b0, weights_only=True)["meta"]["row"] == "row-b"


def test_a_unit_missing_a_sample_is_recomputed(tmp_path):
    x, y = _xy()
    evaluation = _evaluation(tmp_path)
    evaluation.run([_row()], x, y)
    path = evaluation.part_path("none-pgd", 1)
    record = torch.load(path, weights_only=True)
    record["y"] = record["y"][:1]
    torch.save(record, path)
    with pytest.warns(UserWarning, match="holds y of shape"):
        merged = evaluation.run([_row()], x, y)
    assert merged[0]["n"] == 6


def test_an_edited_unit_with_valid_metadata_is_recomputed_not_merged(tmp_path):
    """A unit whose predictions were changed after the run wrote it (its row, batch, size and
    configuration still right) fails its seal: the run recomputes it and reports the truth."""
    x, y = _xy()
    evaluation = _evaluation(tmp_path)
    (expected,) = evaluation.run([_row()], x, y)
    path = evaluation.part_path("none-pgd", 0)
    record = torch.load(path, weights_only=True)
    record["preds_adv"] = record["y"].expand_as(record["preds_adv"]).clone()  # all "correct"
    torch.save(record, path)
    with pytest.warns(UserWarning, match=r"recomputing .*changed after the run wrote it"):
        (resumed,) = evaluation.run([_row()], x, y)
    assert resumed["robust"] == expected["robust"]
    assert not torch.equal(torch.load(path, weights_only=True)["preds_adv"], record["preds_adv"])


def test_every_rank_works_when_there_is_one_batch(tmp_path, diffusion):
    """Units are dealt out in turn: with two rows of one batch each, rank 1 evaluates the
    second row instead of idling, and rank 0 merges both."""
    x, y = _data()
    common = {"batch_size": 10, "draws": 2, "seed": 1, "world": 2, "progress": False}
    rank1 = Evaluation(tmp_path, {}, rank=1, **common)
    assert rank1.run(_rows(diffusion), x, y) is None
    assert not rank1.part_path("none-pgd", 0).exists()
    assert rank1.part_path("diffpure-fixed", 0).exists()
    merged = Evaluation(tmp_path, {}, rank=0, **common).run(_rows(diffusion), x, y)
    single = Evaluation(tmp_path / "one", {}, batch_size=10, draws=2, seed=1, progress=False)
    assert _strip(merged) == _strip(single.run(_rows(diffusion), x, y))
