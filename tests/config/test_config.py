"""The run configuration: one merge (``resolve``), its order, its rules and its checks."""

from __future__ import annotations

import dataclasses
import json

import pytest

from art_ssni.config import SMOKE, AttackConfig, Overrides, RunConfig, resolve, smoke_step
from art_ssni.models.zoo import load_zoo_manifest
from art_ssni.presets import EMBEDDED, get_preset, list_presets


def test_a_preset_resolves_to_its_own_run_on_a_concrete_device():
    for name in list_presets():
        config = resolve(name)
        assert dataclasses.replace(config, compute=get_preset(name).run.compute) == (
            get_preset(name).run
        )
        assert config.compute.device in ("cpu", "cuda")
        expected = {"float32"} if name != "cifar10-embedded" else {"float32", "bfloat16"}
        assert config.compute.dtype in expected  # cifar10-embedded: auto


def test_smoke_run_is_the_same_small_run_on_every_preset():
    for name in list_presets():
        config = resolve(name, quick=True)
        images = 2 if name in EMBEDDED else 1  # the paper presets' full-size networks: 1
        assert (config.n_images, config.batch_size, config.draws, config.runs) == (
            images, images, 1, 1,
        )  # fmt: skip
        assert (config.ssni.num_levels, config.ssni.reference_images) == (1, 2)
        attack = config.attack
        assert (attack.iterations, attack.eot, attack.restarts, attack.judge_draws) == (1, 1, 1, 0)
        assert config.smoke and not resolve(name).smoke
        for method in get_preset(name).methods:
            settings = resolve(name, Overrides(method=method), quick=True).defence.settings
            if hasattr(settings, "steps"):
                assert (settings.steps, settings.surrogate_steps) == (2, 1)
            if hasattr(settings, "stages"):
                assert max(k for _, k in settings.stages) <= 2
                assert max(k for _, k in settings.surrogate_stages) <= 1
            if hasattr(settings, "stride"):  # DAC: 2 calls per stage span
                assert settings.stride == -(-settings.t_large // 2)
    user = resolve("cifar10-embedded", Overrides(n_images=8, iterations=7), quick=True)
    assert (user.n_images, user.attack.iterations, user.draws) == (8, 7, 1)
    assert SMOKE.given()["n_images"] == 2


def test_smoke_step_crosses_the_ball_unless_a_step_is_given():
    quick = resolve("digits", quick=True).attack
    assert quick.step == pytest.approx(smoke_step(0.2, 1)) == pytest.approx(2.5 * 0.2)
    assert quick.step * quick.iterations >= quick.eps
    assert resolve("digits", Overrides(step=0.01), quick=True).attack.step == 0.01
    assert resolve("digits").attack.step == 0.025


def test_method_knobs_reach_each_method_through_its_spec():
    config = resolve("digits", Overrides(method="gdmp", t_star=40, steps=8))
    assert (config.defence.settings.t_star, config.defence.settings.steps) == (40, 8)
    assert config.defence.settings.runs == 4  # the constructor's default, kept
    dac = resolve("digits", Overrides(method="dac", t_star=40, steps=5)).defence.settings
    assert (dac.t_large, dac.t_small, dac.stride) == (40, 20, 8)  # ratio 1/2, ceil(40 / 5)
    dac = resolve("cifar10-linf", Overrides(method="dac", t_star=150)).defence.settings
    assert (dac.t_large, dac.t_small) == (150, 75)
    gns = resolve("cifar10-linf", Overrides(method="gns", steps=40)).defence.settings
    assert gns.stages == ((30, 30),) * 4 + ((50, 40),) * 2 + ((125, 40),) * 2
    # t* is GNS's largest stage: every level and step count scales by 50 / 125, half up
    gns = resolve("cifar10-linf", Overrides(method="gns", t_star=50)).defence.settings
    assert gns.stages == ((12, 12),) * 4 + ((20, 20),) * 2 + ((50, 50),) * 2
    assert gns.surrogate_stages == ((12, 1), (20, 1), (50, 2)) and gns.t_star == 50
    with pytest.raises(ValueError, match="t_star"):
        resolve("cifar10-linf", Overrides(method="gns", t_star=0))


def test_compute_options_are_resolved_and_recorded():
    config = resolve("digits", Overrides(device="cpu", dtype="float32", channels_last=True))
    assert config.compute.device == "cpu" and config.compute.channels_last
    assert config.compute.dtype_reason == "asked for"
    assert config.as_dict()["compute"]["dtype"] == "float32"


def test_switching_method_takes_that_methods_defence():
    cifar = resolve("cifar10-embedded", Overrides(method="gdmp"))
    assert cifar.defence.method == "gdmp" and cifar.defence.gradient == "surrogate"
    assert resolve("cifar10-embedded").defence.gradient == "full"
    with pytest.raises(ValueError, match="no setting for method 'dac'"):
        resolve("cifar10-l2", Overrides(method="dac"))


def test_bias_replaces_every_per_policy_bias():
    chosen = load_zoo_manifest(name="cifar10.json")["ssni"]["chosen"]
    ssni = resolve("cifar10-embedded").ssni
    assert ssni.bias_for("ssni-l") == chosen["bias_ssni_l"]
    assert ssni.bias_for("ssni-n") == chosen["bias_ssni_n"]
    ssni = resolve("cifar10-embedded", Overrides(bias=2.0)).ssni
    assert ssni.biases == () and ssni.bias_for("ssni-l") == ssni.bias_for("ssni-n") == 2.0


def test_images_are_capped_to_the_data_unless_asked_for():
    assert resolve("digits", available=50).n_images == 50
    assert resolve("digits", available=500).n_images == 128
    with pytest.raises(ValueError, match="asked for 600 images but the data holds only 500"):
        resolve("digits", Overrides(n_images=600), available=500)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (Overrides(attacks=("pgd",)), "attacks: unknown"),
        (Overrides(noises=("ssni",)), "noises: unknown"),
        (Overrides(norm="L1"), "norm: unknown"),
        (Overrides(gradient="exact"), "gradient: unknown"),
        (Overrides(sampler="euler"), "sampler: unknown"),
        (Overrides(eps=0.0), "eps must lie in"),
        (Overrides(step=-1.0), "step must be a positive"),
        (Overrides(iterations=0), "iterations must be an integer >= 1"),
        (Overrides(judge_draws=-1), "judge_draws must be an integer >= 0"),
        (Overrides(tau=float("nan")), "tau must be a positive"),
        (Overrides(draws=True), "draws must be an integer"),
        (Overrides(method="adp"), "unknown method 'adp'"),
    ],
)
def test_a_setting_that_cannot_run_is_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve("digits", overrides)


def test_overrides_from_options_name_unknown_options_and_split_lists():
    options = Overrides.from_options(noises="fixed, ssni-n", attacks=["pgd-eot"])
    assert options.noises == ("fixed", "ssni-n") and options.attacks == ("pgd-eot",)
    with pytest.raises(ValueError, match="unknown options \\['noise'\\]"):
        Overrides.from_options(noise="fixed")


def test_the_record_is_plain_json_and_round_trips_the_values():
    config = resolve("cifar10-linf", Overrides(method="gns"))
    record = json.loads(json.dumps(config.as_dict()))
    assert record["defence"]["settings"]["stages"][0] == [30, 30]
    assert record["attack"] == {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(config.attack).items()
    }
    assert record["preset"] == "cifar10-linf" and record["smoke"] is False


def test_configs_are_frozen_and_budgets_follow_the_attack_registry():
    config = resolve("digits")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1
    assert isinstance(config, RunConfig)
    budget = AttackConfig(selector_weight=0.25).budget("selector-aware")
    assert budget["weight"] == 0.25 and "selector_weight" not in budget
    assert "step" not in AttackConfig().budget("apgd-eot")
    assert set(AttackConfig().budget("autoattack")) == {"norm", "eps", "iterations", "eot"}
