"""benchmarks/convergence.py: its stopping rule on scripted accuracies, and a smoke run on the
digits preset at the smallest size."""

from __future__ import annotations

import json

from tiny import load_benchmark

convergence = load_benchmark("convergence")


def _scripted(values: dict[int, tuple[float, float]]):
    calls = []

    def measure(v: int) -> dict:
        calls.append(v)
        vote, worst = values[v]
        return {"robust_vote": vote, "robust_worst": worst}

    return measure, calls


def test_the_sweep_stops_once_a_change_is_inside_the_previous_interval():
    # 100 images: the Wilson interval of 40 % is [30.9, 49.8], of 20 % [13.3, 28.9]
    values = {10: (0.6, 0.4), 20: (0.4, 0.2), 50: (0.35, 0.18), 100: (0.34, 0.17)}
    measure, calls = _scripted(values)
    points, at = convergence.sweep([10, 20, 50, 100], measure, 100)
    assert at == 50 and calls == [10, 20, 50] and len(points) == 3
    measure, calls = _scripted(values)
    assert convergence.sweep([10, 20, 50, 100], measure, 100, stop=False)[1] == 50
    assert calls == [10, 20, 50, 100]
    # the worst-of-N accuracy must settle too
    values = {10: (0.4, 0.4), 20: (0.4, 0.2), 50: (0.4, 0.05)}
    measure, _ = _scripted(values)
    assert convergence.sweep([10, 20, 50], measure, 100) == (
        [{"robust_vote": v, "robust_worst": w} for v, w in values.values()],
        None,
    )


def test_smoke_run_on_digits(tmp_path, one_thread):
    out = tmp_path / "conv"
    argv = ["--preset", "digits", "--quick", "--iterations", "1,2", "--eot", "1,2"]
    result = convergence.main([*argv, "--full", "--out", str(out)])
    assert json.loads((out / "convergence.json").read_text()) == json.loads(json.dumps(result))
    assert result["smoke"] and result["images"] == 2 and result["defence"] == "diffpure + fixed"
    iterations, eot = result["iterations"], result["eot"]
    assert [p["iterations"] for p in iterations["points"]] == [1, 2]
    assert {p["eot"] for p in iterations["points"]} == {iterations["eot"]}
    assert [p["eot"] for p in eot["points"]] == [1, 2]
    for field, part in (("iterations", iterations), ("eot", eot)):
        first, second = part["points"]
        inside = all(
            convergence.settled(first[k], second[k], 2)[0] for k in ("robust_vote", "robust_worst")
        )
        assert part["converged_at"] == (second[field] if inside else None)
        for point in part["points"]:
            assert 0 <= point["robust_vote"] <= 1 and len(point["ci95_vote"]) == 2
    text = (out / "convergence.md").read_text()
    assert "## Against iterations" in text and "## Against eot" in text and "Smoke run" in text
