"""Paths that could destroy data or give silently wrong answers refuse, clearly and early:
--overwrite, numeric parameters, policy levels, resumed units and statistics, GNS's schedule,
dtypes, output folders and devices, and the user's own classifier and images."""

import json
import math

import pytest
import torch
from torch import nn

from art_ssni import DiffPure, DiffusionModel, EPSNorm, ReferenceStats
from art_ssni.cli import main
from art_ssni.evaluation.attacks import pgd_eot
from art_ssni.evaluation.runner import Evaluation, Row
from art_ssni.models.defended import DefendedClassifier
from art_ssni.noise import SSNILinear, SSNISigmoid
from art_ssni.purification import GDMP, GNS
from art_ssni.validation import check_number

from tiny import TinyClassifier, TinyEpsNet

SMALL = ["--n-images", "4", "--batch-size", "4", "--iterations", "1", "--eot", "1"]
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


def test_overwrite_clears_a_previous_run(tmp_path):
    out = tmp_path / "run"
    args = ["evaluate", *SMALL, "--noise", "fixed", "--attack", "pgd-eot", "--no-baseline"]
    assert main([*args, "--out", str(out)]) == 0
    assert (out / ".art-ssni-run").is_file()
    (out / "parts" / "stale.pt").write_bytes(b"old")
    assert main([*args, "--out", str(out), "--overwrite"]) == 0
    assert not (out / "parts" / "stale.pt").exists()
    assert (out / "results.json").is_file()


# every numeric parameter is validated


@pytest.mark.parametrize(
    "flag, value",
    [("--bias", "nan"), ("--tau", "inf"), ("--tau", "-1"), ("--selector-weight", "nan")],
)
def test_cli_refuses_non_finite_numbers(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", flag, value, "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


def test_cli_refuses_a_t_star_beyond_the_schedule(tmp_path, capsys):
    code = main(["evaluate", *SMALL, "--t-star", str(10**9), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "t_star must lie in [1, 1000]" in capsys.readouterr().err


def test_api_refuses_non_finite_and_fractional_parameters(diffusion, stats):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    with pytest.raises(ValueError, match="bias"):
        SSNISigmoid(eps_norm, stats, 10, float("nan"), tau=1.0)
    with pytest.raises(ValueError, match="tau"):
        SSNISigmoid(eps_norm, stats, 10, 0.0, tau=float("inf"))
    with pytest.raises(ValueError, match="t_star"):
        SSNILinear(eps_norm, stats, 10**9)
    with pytest.raises(ValueError, match="guidance_scale"):
        GDMP(diffusion, guidance="mse", guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="whole number"):
        DiffPure(diffusion, t_star=40.7)
    with pytest.raises(ValueError, match="whole number"):
        DiffPure(diffusion, t_star=40, steps=4.5)
    with pytest.raises(ValueError, match="votes"):
        GNS(diffusion, votes=float("nan"))
    with pytest.raises(ValueError, match="num_levels"):
        EPSNorm(diffusion, num_levels=2.5)


def test_check_number_accepts_valid_values():
    assert check_number(40.0, "t", low=1, integer=True) == 40
    assert isinstance(check_number(40.0, "t", low=1, integer=True), int)
    assert check_number(0.5, "w", low=0.0, low_open=True) == 0.5
    with pytest.raises(ValueError, match=r"w must lie in \(0.0, inf\]"):
        check_number(0.0, "w", low=0.0, low_open=True)
    with pytest.raises(ValueError, match="must be a number"):
        check_number(True, "flag")


# a policy's bad levels are an error; non-finite output raises


class Levels:
    def __init__(self, values):
        self.values = values

    def __call__(self, x, generator=None):
        return torch.tensor(self.values, dtype=torch.float64)

    def __repr__(self):
        return "Levels(bad)"


@pytest.mark.parametrize("bad", [float("nan"), -1.0, 5000.0, 2.5])
def test_bad_policy_levels_raise_naming_the_policy(diffusion, images, bad):
    values = [4.0] * images.shape[0]
    values[2] = bad
    purifier = DiffPure(diffusion, t_star=4, steps=2, noise=Levels(values))
    with pytest.raises(ValueError, match=r"Levels\(bad\)"):
        purifier(images)


def test_valid_float_levels_are_accepted(diffusion, images):
    values = [0.0, 4.0, 2.0, 1000.0, 3.0, 4.0]
    purifier = DiffPure(diffusion, t_star=4, steps=2, noise=Levels(values))
    assert purifier.levels(images).tolist() == [0, 4, 2, 1000, 3, 4]


class NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float("nan")))

    def forward(self, x, t):
        return x * self.w


def test_purifier_with_non_finite_output_raises(images):
    purifier = DiffPure(DiffusionModel(NaNNet()), t_star=4, steps=2)
    with pytest.raises(ValueError, match="non-finite"):
        purifier(images)
    with pytest.raises(ValueError, match="non-finite"):
        purifier(images.clone().requires_grad_(True))


# resume checks every unit file


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
    assert "another configuration" in capsys.readouterr().err


# fingerprint of a network with a 0-dim parameter


class ScalarNet(TinyEpsNet):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t):
        return super().forward(x, t) * self.scale


def test_fingerprint_and_stats_with_a_scalar_parameter(images):
    diffusion = DiffusionModel(ScalarNet(), image_shape=(3, 8, 8))
    first = diffusion.fingerprint()
    other = DiffusionModel(ScalarNet(), image_shape=(3, 8, 8))
    with torch.no_grad():
        other.eps_net.scale.fill_(0.25)
    assert first != other.fingerprint()
    stats = ReferenceStats.from_images(EPSNorm(diffusion, 3), images, progress=False)
    assert stats.model == first


# --method gns refuses --t-star/--steps and records its schedule


def test_gns_refuses_t_star_and_steps(tmp_path, capsys):
    code = main(["evaluate", "--method", "gns", "--t-star", "20", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "t_star do not apply" in capsys.readouterr().err
    code = main(["evaluate", "--method", "gns", "--steps", "4", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "steps do not apply" in capsys.readouterr().err


def test_gns_records_its_stage_schedule(tmp_path):
    from art_ssni.pipeline import build_defence

    from tiny import plan

    config, setup = plan(["evaluate", "--method", "gns", "--out", str(tmp_path)])
    recorded = config.as_dict()["defence"]["settings"]  # as results.json records it
    assert recorded["stages"][-1] == [125, 125] and "steps" not in recorded
    assert build_defence(config, setup, "fixed").describe()["t_star"] == 125


# floating dtypes are cast; non-floating ones refused


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_defended_classifier_and_policy_accept_other_float_dtypes(dtype, diffusion, stats, images):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNISigmoid(eps_norm, stats, 6, 0.0, tau=stats.std)
    purifier = DiffPure(diffusion, t_star=6, steps=2, noise=policy, generator=0)
    model = DefendedClassifier(purifier, TinyClassifier())
    x = images.to(dtype)
    if dtype == torch.float64:  # exact in float32, so the levels are those of float32
        assert torch.equal(policy(x, generator=3), policy(images, generator=3))
    logits = model(x)
    assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    assert xg.grad.dtype == dtype
    undefended = DefendedClassifier(None, TinyClassifier())
    y = torch.zeros(images.shape[0], dtype=torch.long)
    x_adv = pgd_eot(undefended, x, y, eps=0.1, step=0.1, iterations=1, eot=1)
    assert x_adv.dtype == dtype
    limit = 0.1 + (1e-2 if dtype != torch.float64 else 1e-9)
    assert float((x_adv.double() - x.double()).abs().max()) <= limit


def test_float64_gives_the_float32_logits(diffusion, images):
    model = DefendedClassifier(None, TinyClassifier())
    assert torch.allclose(model(images.double()), model(images))


def test_integer_images_are_refused_with_value_error(diffusion):
    model = DefendedClassifier(None, TinyClassifier())
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


# errors arrive early and clearly


def test_sanity_and_stats_refuse_bad_outputs_before_work(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["sanity", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["stats", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["stats", "--out", str(a_file / "stats.safetensors")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_unavailable_device_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["evaluate", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "no usable CUDA device" in capsys.readouterr().err
    assert main(["evaluate", "--device", "potato", "--out", str(tmp_path / "o")]) == 2
    assert "not a device" in capsys.readouterr().err


def test_loaders_recognise_html_and_text(tmp_path):
    from art_ssni.diffusion.networks.adm import load_guided_diffusion_checkpoint
    from art_ssni.diffusion.networks.ncsnpp import load_score_sde_checkpoint
    from art_ssni.models.classifiers import load_cifar10_wideresnet, load_imagenet_resnet50

    html = tmp_path / "page.pth"
    html.write_text("<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    text = tmp_path / "notes.pth"
    text.write_text("hello world\nthis is text\n")
    for loader in (load_score_sde_checkpoint, load_guided_diffusion_checkpoint):
        with pytest.raises(ValueError, match="HTML page"):
            loader(html)
    for loader in (load_cifar10_wideresnet, load_imagenet_resnet50):
        with pytest.raises(ValueError, match="not a torch.save file"):
            loader(text)


def test_stats_load_with_incomplete_metadata(tmp_path, stats):
    from safetensors.torch import save_file

    path = tmp_path / "s.safetensors"
    metadata = {"format": "art-ssni-reference-stats/1", "model": stats.model}
    save_file({"norms": stats.norms}, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="lacks the metadata"):
        ReferenceStats.load(path)


def test_number_helper_names_nan():
    with pytest.raises(ValueError, match="finite"):
        check_number(math.nan, "bias")


# your own classifier and data; checkpoints the default would ignore are refused


def test_default_preset_refuses_checkpoints(tmp_path, capsys):
    missing = str(tmp_path / "nope.pt")
    assert main(["evaluate", "--diffusion-checkpoint", missing, "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    real = tmp_path / "real.pt"
    real.write_bytes(b"x")
    assert main(["evaluate", "--classifier-checkpoint", str(real), "--out", str(tmp_path)]) == 2
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
    assert main(["evaluate", *flags, "--out", str(tmp_path / "default")]) == 0
    index = json.loads((tmp_path / "default" / "config.json").read_text())["inputs"]["indices"]
    x, y = load_digits("test")
    data = tmp_path / "mine.npz"
    x_nhwc = x[index].permute(0, 2, 3, 1).numpy()  # channels last, as most image tools
    import numpy as np

    np.savez(data, x=x_nhwc, y=y[index].numpy())
    factory = tmp_path / "mine.py"
    factory.write_text(FACTORY)
    mine = ["--classifier", f"{factory}:make", "--data", str(data)]
    assert main(["evaluate", *flags, *mine, "--out", str(tmp_path / "mine")]) == 0

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
    bad = ["--classifier", f"{factory}:not_a_module", "--out", str(tmp_path / "bad")]
    assert main(["evaluate", *bad]) == 2
    assert "not a torch.nn.Module" in capsys.readouterr().err


def test_image_folder_data(tmp_path):
    from PIL import Image

    from art_ssni.data.user import load_user_images

    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(3, 8, 8, generator=g) * 255).round().to(torch.uint8)
    for i, name in enumerate(["cat", "ant", "ant"]):
        (tmp_path / name).mkdir(exist_ok=True)
        Image.fromarray(pixels[i].numpy(), mode="L").save(tmp_path / name / f"{i}.png")
    x, y = load_user_images(tmp_path, (1, 8, 8))
    assert y.tolist() == [0, 0, 1]  # classes in sorted order: ant, cat
    assert torch.equal(x[2, 0], pixels[0].float() / 255)
    assert torch.equal(x[0, 0], pixels[1].float() / 255)
    import numpy as np

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 3, 8, 8), dtype="float32"), y=np.zeros(2, dtype="int64"))
    with pytest.raises(ValueError, match="3 channels but the model expects 1"):
        load_user_images(bad, (1, 8, 8))


def test_read_only_out_is_refused_before_work(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    def read_only(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    assert main(["sanity", "--out", str(tmp_path / "ro")]) == 2
    assert "cannot write to --out" in capsys.readouterr().err


def test_npz_uint8_images_are_scaled(tmp_path):
    import numpy as np

    from art_ssni.data.user import load_user_images

    pixels = np.arange(2 * 64, dtype="uint8").reshape(2, 1, 8, 8)
    np.savez(tmp_path / "u8.npz", x=pixels, y=np.array([3, 4]))
    x, y = load_user_images(tmp_path / "u8.npz", (1, 8, 8))
    assert torch.equal(x, torch.from_numpy(pixels).float() / 255) and y.tolist() == [3, 4]
