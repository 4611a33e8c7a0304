"""benchmarks/ladder.py: a smoke run on the digits preset at the smallest size (two methods
whose machinery the ensemble steers, two noise policies, PGD-EOT and the ensemble)."""

from __future__ import annotations

import json

from tiny import load_benchmark

ladder = load_benchmark("ladder")


def test_smoke_run_on_digits(tmp_path, one_thread):
    out = tmp_path / "ladder"
    argv = ["--preset", "digits", "--quick", "--no-progress", "--methods", "dac,mani-pure"]
    argv += ["--noises", "fixed,ssni-n", "--attacks", "pgd-eot,ensemble", "--out", str(out)]
    result = ladder.main(argv)
    assert json.loads((out / "ladder.json").read_text()) == json.loads(json.dumps(result))
    assert result["smoke"] and result["images"] == 2
    assert list(result["wall_seconds"]) == ["dac", "mani-pure"]
    for method in ("dac", "mani-pure"):
        rows = json.loads((out / method / "results.json").read_text())["rows"]
        total = sum(r["seconds_per_image"] * r["n"] for r in rows)
        assert result["row_seconds"][method] == total > 0
    resumed = ladder.main(argv)  # every unit is reused: the rows' times stay theirs
    assert resumed["row_seconds"] == result["row_seconds"]
    assert all((out / method / "results.json").is_file() for method in ("dac", "mani-pure"))
    defences = [(r["method"], r["noise"]) for r in result["rows"]]
    assert defences[0] == ("No defence", "-")  # the baseline row comes with the first method
    expected = {
        ("DAC", "fixed"),
        ("DAC", "SSNI-N"),
        ("MANI-Pure", "fixed"),
        ("MANI-Pure", "SSNI-N"),
    }
    assert set(defences[1:]) == expected and len(defences) == 1 + 2 * len(expected)
    for defence in expected:
        group = [r for r in result["rows"] if (r["method"], r["noise"]) == defence]
        assert [r["robust_vote"] for r in group] == sorted(r["robust_vote"] for r in group)
        (combined,) = [r["ensemble"] for r in group if r["ensemble"]]
        own = {"DAC": "dac-mask", "MANI-Pure": "spectral"}[defence[0]]
        assert own in combined["members"] and "low-frequency" in combined["members"]
        for selector in ("selector-aware", "selector-constrained"):
            assert (selector in combined["members"]) == (defence[1] == "SSNI-N")
    text = (out / "ladder.md").read_text()
    assert "Smoke run" in text and "2 iterations" not in text and "1 iterations" in text
    assert sum(line.startswith("| DAC |") for line in text.splitlines()) == 4


def test_autoattack_joins_only_where_its_package_is(monkeypatch):
    import importlib.util
    import sys
    import types

    real = importlib.util.find_spec

    def missing(name, *args):
        return None if name == "autoattack" else real(name, *args)

    monkeypatch.delitem(sys.modules, "autoattack", raising=False)
    monkeypatch.setattr(ladder.importlib.util, "find_spec", missing)
    assert "autoattack" not in ladder.default_attacks()
    assert "ensemble" in ladder.default_attacks()
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "autoattack", types.ModuleType("autoattack"))  # no spec
    assert "autoattack" in ladder.default_attacks()
