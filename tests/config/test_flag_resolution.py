"""What the command's flags resolve to and record: --quick is a marked smoke run whose attack
reaches epsilon, and --method gns records its stage schedule (at the preset's t*) instead of
t* and steps."""

import pytest

from art_ssni.config import smoke_step
from art_ssni.evaluation.report import to_markdown

from tiny import plan


def test_gns_records_its_stage_schedule(tmp_path):
    from art_ssni.pipeline import build_defence

    from tiny import plan

    config, setup = plan(
        ["evaluate", "--preset", "digits", "--method", "gns", "--out", str(tmp_path)]
    )
    recorded = config.as_dict()["defence"]["settings"]  # as results.json records it
    assert recorded["stages"][-1] == [60, 10] and "steps" not in recorded
    assert build_defence(config, setup, "fixed").describe()["t_star"] == 60


def test_quick_step_reaches_eps_and_is_marked(tmp_path):
    config, _ = plan(["evaluate", "--preset", "digits", "--quick", "--out", str(tmp_path)])
    attack = config.attack
    assert config.smoke and (attack.eps, attack.iterations) == (0.2, 1)
    assert attack.step * attack.iterations >= attack.eps
    assert attack.step == pytest.approx(smoke_step(0.2, 1))
    explicit, _ = plan(
        ["evaluate", "--preset", "digits", "--quick", "--step", "0.01", "--out", "o"]
    )
    assert explicit.attack.step == 0.01
    md = to_markdown({"config": {"smoke": True}, "rows": []})
    assert "Smoke run" in md
    assert "Smoke run" not in to_markdown({"config": {"smoke": False}, "rows": []})
