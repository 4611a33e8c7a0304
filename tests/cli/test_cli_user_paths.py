"""The command refuses, clearly and before any work, what could destroy data or give silently
wrong answers: --overwrite of a folder that is not a run, non-finite numbers and a t* beyond
the schedule, resuming with other statistics, --t-star/--steps for GNS, unusable output
folders and devices, checkpoints the default preset would ignore; and it runs the user's own
classifier (a Python entry point) and images exactly as the default."""

import json

import pytest
import torch

from art_ssni import DiffusionModel, ReferenceStats
from art_ssni.cli import main
from art_ssni.presets import get_preset

from tiny import plan

SMALL = [
    "--preset",
    "digits",
    "--n-images",
    "4",
    "--batch-size",
    "4",
    "--iterations",
    "1",
    "--eot",
    "1",
]
SMALL += ["--draws", "1", "--steps", "2", "--t-star", "5", "--no-progress"]


# --overwrite deletes only what a run of ours wrote


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code = main(["evaluate", *SMALL, "--noise", "fixed", "--out", str(out), "--overwrite"])
    assert code == 2
    assert (out / "thesis.tex").read_text() == "years of work"
    assert "refuses to delete" in capsys.readouterr().err


def test_overwrite_refuses_a_project_with_its_own_config_and_the_working_directory(
    tmp_path, capsys, monkeypatch
):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    (project / "thesis.tex").write_text("years of work")
    argv = ["evaluate", *SMALL, "--noise", "fixed", "--overwrite"]
    assert main([*argv, "--out", str(project)]) == 2
    assert "refuses to delete" in capsys.readouterr().err
    monkeypatch.chdir(project / "src")
    run = project / "src" / "run"
    assert main([*argv, "--out", str(run)]) == 0  # a run folder of its own is fine
    for out in (".", ".."):
        assert main([*argv, "--out", out]) == 2
        assert "working directory" in capsys.readouterr().err
    assert (project / "thesis.tex").read_text() == "years of work" and run.is_dir()
    link = tmp_path / "link"
    link.symlink_to(run)
    assert main([*argv, "--out", str(link)]) == 2
    assert "symbolic link" in capsys.readouterr().err


# numeric flags are validated


@pytest.mark.parametrize(
    "flag, value",
    [("--bias", "nan"), ("--tau", "inf"), ("--tau", "-1"), ("--selector-weight", "nan")],
)
def test_cli_refuses_non_finite_numbers(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--preset", "digits", flag, value, "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


def test_cli_refuses_a_t_star_beyond_the_schedule(tmp_path, capsys):
    code = main(["evaluate", *SMALL, "--t-star", str(10**9), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "t_star must lie in [1, 1000]" in capsys.readouterr().err


# the statistics file is part of the configuration


def test_resuming_with_other_statistics_is_refused(tmp_path, capsys):
    from art_ssni.models.zoo import zoo_root

    zoo = ReferenceStats.load(zoo_root() / "digits_stats.safetensors")
    other = tmp_path / "other.safetensors"
    ReferenceStats(zoo.norms * 1.5, zoo.model, zoo.schedule, zoo.num_levels, zoo.image_shape).save(
        other
    )
    assert zoo.digest() != ReferenceStats.load(other).digest()
    assert zoo.digest() == ReferenceStats.load(zoo_root() / "digits_stats.safetensors").digest()
    out = tmp_path / "run"
    args = ["evaluate", *SMALL, "--noise", "ssni-n", "--attack", "pgd-eot", "--no-baseline"]
    assert main([*args, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["inputs"]["stats"] == zoo.digest()
    assert main([*args, "--out", str(out), "--stats", str(other)]) == 2
    assert "inputs.stats changed" in capsys.readouterr().err


# --method gns runs at the preset's level


def test_gns_on_the_digits_runs_at_the_preset_s_t_star_and_scales_from_the_command_line():
    """The digits preset's GNS is its CIFAR-10 schedule scaled to the preset's t* = 60 (the
    published stages reach 125, CIFAR-10's levels); --t-star scales it again and --steps caps
    each stage."""
    config, _ = plan(["evaluate", "--preset", "digits", "--method", "gns"])
    stages = config.defence.settings.stages
    assert max(t for t, _ in stages) == get_preset("digits").method("diffpure").t_star == 60
    assert stages == ((14, 10),) * 4 + ((24, 10),) * 2 + ((60, 10),) * 2
    config, _ = plan(["evaluate", "--preset", "digits", "--method", "gns", "--t-star", "30"])
    assert config.defence.settings.stages == ((7, 5),) * 4 + ((12, 5),) * 2 + ((30, 5),) * 2
    config, _ = plan(["evaluate", "--preset", "digits", "--method", "gns", "--steps", "4"])
    assert config.defence.settings.stages == ((14, 4),) * 4 + ((24, 4),) * 2 + ((60, 4),) * 2


# errors arrive early and clearly


def test_sanity_and_stats_refuse_bad_outputs_before_work(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["sanity", "--preset", "digits", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["stats", "--preset", "digits", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["stats", "--preset", "digits", "--out", str(a_file / "stats.safetensors")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_unavailable_device_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (
        main(["evaluate", "--preset", "digits", "--device", "cuda", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "no usable CUDA device" in capsys.readouterr().err
    assert (
        main(["evaluate", "--preset", "digits", "--device", "potato", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "not a device" in capsys.readouterr().err


# checkpoints the default would ignore are refused; your own classifier and data run


def test_default_preset_refuses_checkpoints(tmp_path, capsys):
    missing = str(tmp_path / "nope.pt")
    assert (
        main(
            [
                "evaluate",
                "--preset",
                "digits",
                "--diffusion-checkpoint",
                missing,
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    real = tmp_path / "real.pt"
    real.write_bytes(b"x")
    assert (
        main(
            [
                "evaluate",
                "--preset",
                "digits",
                "--classifier-checkpoint",
                str(real),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "would ignore --classifier-checkpoint" in capsys.readouterr().err


FACTORY = """
from art_ssni.models.zoo import load_embedded_classifier


def make():
    return load_embedded_classifier()


def not_a_module():
    return 3
"""


def test_own_classifier_data_and_python_entry_point_match_the_default(tmp_path, capsys):
    from art_ssni.cli import evaluate
    from art_ssni.data.digits import load_digits
    from art_ssni.models.zoo import load_embedded_classifier, load_embedded_eps_net, zoo_root

    flags = ["--noise", "fixed", "--attack", "pgd-eot", "--no-baseline", *SMALL]
    assert main(["evaluate", "--preset", "digits", *flags, "--out", str(tmp_path / "default")]) == 0
    index = json.loads((tmp_path / "default" / "config.json").read_text())["inputs"]["indices"]
    x, y = load_digits("test")
    data = tmp_path / "mine.npz"
    x_nhwc = x[index].permute(0, 2, 3, 1).numpy()  # channels last, as most image tools
    import numpy as np

    np.savez(data, x=x_nhwc, y=y[index].numpy())
    factory = tmp_path / "mine.py"
    factory.write_text(FACTORY)
    mine = ["--classifier", f"{factory}:make", "--data", str(data)]
    assert (
        main(["evaluate", "--preset", "digits", *flags, *mine, "--out", str(tmp_path / "mine")])
        == 0
    )

    def rows(name):
        found = json.loads((tmp_path / name / "results.json").read_text())["rows"]
        return [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in found]

    assert rows("mine") == rows("default")
    diffusion = DiffusionModel(load_embedded_eps_net(), image_shape=(1, 8, 8))
    results = evaluate(
        diffusion,
        load_embedded_classifier(),
        x[index],
        y[index],
        out=tmp_path / "api",
        preset="digits",
        stats=ReferenceStats.load(zoo_root() / "digits_stats.safetensors"),
        noise="fixed",
        attack=["pgd-eot"],
        no_baseline=True,
        n_images=4,
        batch_size=4,
        iterations=1,
        eot=1,
        draws=1,
        steps=2,
        t_star=5,
        progress=False,
    )
    assert rows("api") == rows("default")
    assert results["rows"][0]["robust"] == rows("default")[0]["robust"]
    bad = [
        "--preset",
        "digits",
        "--classifier",
        f"{factory}:not_a_module",
        "--out",
        str(tmp_path / "bad"),
    ]
    assert main(["evaluate", "--preset", "digits", *bad]) == 2
    assert "not a torch.nn.Module" in capsys.readouterr().err


def test_read_only_out_is_refused_before_work(tmp_path, capsys, monkeypatch):
    import os

    real_open = os.open

    def read_only(path, *args, **kwargs):
        if ".art-ssni-write-test" in os.fspath(path):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert main(["sanity", "--preset", "digits", "--out", str(tmp_path / "ro")]) == 2
    assert "cannot write to --out" in capsys.readouterr().err


def test_resume_refuses_changed_weights_or_images_and_names_them(tmp_path, capsys):
    """A run folder records digests of the models and images it evaluated: resuming with a
    changed classifier (same factory name) or changed data refuses instead of returning the
    old numbers."""
    factory = tmp_path / "factory.py"
    factory.write_text(
        "import torch\n"
        "from art_ssni.models.zoo import load_embedded_classifier\n"
        "SCALE = 1.0\n"
        "def make():\n"
        "    model = load_embedded_classifier()\n"
        "    with torch.no_grad():\n"
        "        for p in model.parameters():\n"
        "            p.mul_(SCALE)\n"
        "    return model\n"
    )
    args = ["evaluate", *SMALL, "--noise", "fixed", "--attack", "pgd-eot", "--no-baseline"]
    args += ["--classifier", f"{factory}:make", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert main(args) == 0  # the same inputs resume
    factory.write_text(factory.read_text().replace("SCALE = 1.0", "SCALE = 0.5"))
    assert main(args) == 2
    assert "inputs.classifier changed" in capsys.readouterr().err
    import numpy as np

    from art_ssni.data import load_digits

    x, y = load_digits("test")
    data = tmp_path / "mine.npz"
    np.savez(data, x=x[:8].numpy(), y=y[:8].numpy())
    out = ["--out", str(tmp_path / "data-run")]
    assert (
        main(["evaluate", *SMALL, "--noise", "fixed", "--no-baseline", "--data", str(data), *out])
        == 0
    )
    np.savez(data, x=x[8:16].numpy(), y=y[8:16].numpy())
    assert (
        main(["evaluate", *SMALL, "--noise", "fixed", "--no-baseline", "--data", str(data), *out])
        == 2
    )
    assert "inputs.images changed" in capsys.readouterr().err
