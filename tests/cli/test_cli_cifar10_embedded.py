"""The command on the cifar10-embedded preset: a quick run of fixed and SSNI-N rows under
PGD-EOT and BPDA-EOT, and its refusals (the digits statistics, checkpoints, a data folder)."""

import json

import pytest

from art_ssni.cli import main
from art_ssni.models.zoo import zoo_root


def test_cli_refuses_the_digits_statistics_for_the_cifar10_preset(tmp_path, capsys) -> None:
    code = main(
        ["evaluate", "--preset", "cifar10-embedded", "--quick", "--out", str(tmp_path),
         "--stats", str(zoo_root() / "digits_stats.safetensors")]
    )  # fmt: skip
    assert code == 2
    assert "model" in capsys.readouterr().err


def test_cifar10_preset_quick_run(tmp_path) -> None:
    out = tmp_path / "run"
    code = main(
        ["evaluate", "--preset", "cifar10-embedded", "--quick", "--no-progress", "--out", str(out),
         "--noise", "fixed,ssni-n", "--attack", "pgd-eot,bpda-eot"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["dataset"] == "cifar10-embedded"
    assert results["config"]["defence"]["settings"]["t_star"] == 100
    assert results["config"]["attack"]["eps"] == pytest.approx(8 / 255)
    rows = {row["key"]: row for row in results["rows"]}
    assert set(rows) == {
        "none-pgd", "diffpure-fixed-pgd-eot", "diffpure-fixed-bpda-eot",
        "diffpure-ssni-n-pgd-eot", "diffpure-ssni-n-bpda-eot",
    }  # fmt: skip
    assert rows["diffpure-fixed-bpda-eot"]["gradient"] == "bpda"
    assert rows["diffpure-fixed-pgd-eot"]["gradient"] == "full"
    for row in rows.values():
        assert 0.0 <= row["robust"]["vote"] <= 1.0


def test_cifar10_preset_refuses_checkpoints_and_a_data_dir_for_evaluate(tmp_path, capsys) -> None:
    for flag in ("--diffusion-checkpoint", "--data-dir"):
        code = main(["evaluate", "--preset", "cifar10-embedded", flag, str(tmp_path), "--out",
                     str(tmp_path / "out")])  # fmt: skip
        assert code == 2
        assert (
            f"cifar10-embedded preset uses its shipped models and data and would ignore {flag}"
            in (capsys.readouterr().err)
        )
