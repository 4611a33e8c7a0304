"""The torchattacks and RobustBench adapters (integrations/): torchattacks' attacks and ours
through a randomised defence and its gradient modes, targeted modes, EOTAttack's judging over
draws, RegisteredAttack for every registry entry, RobustBench classifier loading and
model_info files."""

import json
import re

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from torchattacks.attack import Attack

import integrations.robustbench_adapter as rba
import integrations.torchattacks_adapter as taa
from art_ssni import DAC, AttentionMask, DiffPure, EPSNorm, MANIPure, SSNISigmoid
from art_ssni.evaluation import aggregate, gradient_mode, predict_draws
from art_ssni.evaluation.registry import ATTACKS as ATTACK_SPECS
from art_ssni.models.defended import DefendedClassifier
from integrations import (
    BPDAEOT,
    MODEL_INFO_FIELDS,
    PGDEOT,
    EOTAttack,
    RegisteredAttack,
    SelectorAwarePGD,
    benchmark_purified,
    load_classifier,
    purified_model,
    write_model_info,
)

from tiny import Probe, TinyClassifier

EPS = 0.1

# Field types of RobustBench's own model_info files (e.g. model_info/cifar10/Linf/
# Wang2023Better_WRN-28-10.json in RobustBench/robustbench).
ROBUSTBENCH_TYPES = {
    "link": str,
    "name": str,
    "authors": str,
    "additional_data": bool,
    "number_forward_passes": int,
    "dataset": str,
    "venue": str,
    "architecture": str,
    "eps": str,
    "clean_acc": str,
    "reported": str,
    "autoattack_acc": str,
    "unreliable": bool,
    "footnote": str,
}


def _vote(model, x, y, draws=3):
    return aggregate(predict_draws(model, x, draws), y)["vote"]


ATTACKS = {
    "PGD": lambda m: torchattacks.PGD(m, eps=EPS, alpha=0.04, steps=3),
    "EOTPGD": lambda m: torchattacks.EOTPGD(m, eps=EPS, alpha=0.04, steps=3, eot_iter=2),
    "APGD": lambda m: torchattacks.APGD(m, eps=EPS, steps=3, eot_iter=2),
    "APGDT": lambda m: torchattacks.APGDT(m, eps=EPS, steps=3, n_classes=10),
    "MultiAttack": lambda m: torchattacks.MultiAttack(
        [torchattacks.FGSM(m, eps=0.001), torchattacks.PGD(m, eps=EPS, alpha=0.04, steps=3)]
    ),
    "PGDEOT": lambda m: PGDEOT(m, eps=EPS, alpha=0.04, steps=3, eot_iter=2),
    "BPDAEOT": lambda m: BPDAEOT(m, eps=EPS, alpha=0.04, steps=3, eot_iter=2, random_start=True),
    "EOTAttack": lambda m: EOTAttack(torchattacks.PGD(m, eps=EPS, alpha=0.04, steps=3), 3),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_torchattacks_attacks_lower_accuracy_of_a_weak_defence(weak_defence, name):
    weak, x, y = weak_defence
    assert _vote(weak, x, y) == 1.0
    x_adv = ATTACKS[name](weak)(x, y)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert _vote(weak, x_adv, y) <= 0.25
    assert not weak.training and not any(module.training for module in weak.children())


@pytest.mark.parametrize("mode", ["full", "bpda"])
def test_torchattacks_gradients_flow_through_the_gradient_mode(diffusion, images, mode):
    classifier = TinyClassifier()
    model = DefendedClassifier(DiffPure(diffusion, t_star=10, steps=2), classifier)
    y = torch.arange(6)
    attack = torchattacks.PGD(model, eps=EPS, alpha=0.03, steps=1, random_start=False)
    attack.set_model_training_mode(model_training=True)

    def gradient(m):
        model.reseed(5)
        xg = images.clone().requires_grad_(True)
        with model.gradient_mode(m):
            loss = F.cross_entropy(attack.get_logits(xg), y)
        return torch.autograd.grad(loss, xg)[0]

    grad = gradient(mode)
    assert grad.abs().sum() > 0
    other = gradient("bpda" if mode == "full" else "full")
    assert not torch.allclose(grad, other)  # the configured mode, not some other path, is used
    with gradient_mode(model, mode):  # the attacks' wrapper around the same switch
        x_adv = attack(images, y)
    assert (x_adv - images).abs().max() > 0
    assert model.gradient == "full"
    assert not any(module.training for module in model.children())


def test_engine_attacks_delegate_and_compose_with_multiattack(diffusion, stats, monkeypatch):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNISigmoid(eps_norm, stats, t_star=4, tau=max(stats.std, 1e-3))
    classifier = TinyClassifier()
    model = DefendedClassifier(DiffPure(diffusion, noise=policy, t_star=4, steps=1), classifier)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    y = classifier(x).argmax(1)
    calls = []
    real = taa.selector_aware_pgd

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(taa, "selector_aware_pgd", spy)
    aware = SelectorAwarePGD(model, eps=EPS, alpha=0.05, steps=2, eot_iter=1, weight=2.0, seed=0)
    plain = PGDEOT(model, eps=EPS, alpha=0.05, steps=2, eot_iter=1)
    x_adv = torchattacks.MultiAttack([aware, plain])(x, y)
    assert calls and calls[0]["weight"] == 2.0 and calls[0]["iterations"] == 2
    assert calls[0]["step"] == 0.05 and calls[0]["eot"] == 1 and calls[0]["generator"] == 0
    assert _vote(model, x_adv, y) < _vote(model, x, y)
    with pytest.raises(ValueError, match="SSNI"):
        SelectorAwarePGD(DefendedClassifier(None, classifier), steps=1)(x, y)
    with pytest.raises(ValueError, match="norm"):
        PGDEOT(model, norm="L1")
    with pytest.raises(ValueError, match=r"alpha must lie in \(0.0, inf\], got 0"):
        BPDAEOT(model, alpha=0)


class ModeSpy(nn.Module):
    """A deterministic purifier that records the gradient mode of every differentiated pass."""

    def __init__(self) -> None:
        super().__init__()
        self.gradient = "full"
        self.modes: list[str] = []
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.modes.append(self.gradient)
        return (x * self.scale).clamp(0, 1)


def test_targeted_attacks_reach_the_defence_through_their_objective(diffusion, stats, images):
    spy = ModeSpy()
    model = DefendedClassifier(spy, TinyClassifier())
    targets = torch.full((6,), 3)
    attack = BPDAEOT(model, eps=EPS, alpha=0.04, steps=2, eot_iter=1, random_start=False)
    attack.set_mode_targeted_by_label(quiet=True)
    x_adv = attack(images, targets)
    assert spy.modes == ["bpda", "bpda"] and model.gradient == "full"
    assert 0 < (x_adv - images).abs().max() <= EPS + 1e-6

    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNISigmoid(eps_norm, stats, t_star=4, tau=max(stats.std, 1e-3))
    ssni = DefendedClassifier(
        DiffPure(diffusion, noise=policy, t_star=4, steps=1), TinyClassifier()
    )
    objective = taa._TargetedObjective(ssni, targets)
    assert objective.policy is policy
    assert torch.equal(objective.scores(images, 0), ssni.scores(images, 0))
    aware = SelectorAwarePGD(ssni, eps=EPS, alpha=0.04, steps=1, eot_iter=1, weight=2.0, seed=0)
    aware.set_mode_targeted_by_label(quiet=True)
    assert (aware(images, targets) - images).abs().max() <= EPS + 1e-6


class ScriptedModel(nn.Module):
    """Predicts the next scripted label row on every call, whatever the input."""

    def __init__(self, rows):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.rows = [torch.tensor(r) for r in rows]

    def forward(self, x):
        row = self.rows.pop(0)
        assert row.shape == (x.shape[0],)
        return F.one_hot(row, 10).float() + 0 * self.weight


class Recorder(Attack):
    """Returns its inputs nudged by 0.01 and records the batch sizes it was given."""

    def __init__(self, model):
        super().__init__("Recorder", model)
        self.sizes = []

    def forward(self, images, labels=None):
        self.sizes.append(images.shape[0])
        return (images + 0.01).clamp(0, 1)


Y = [0, 1, 2, 3]
CLEAN = [Y, Y, Y]
DRAWS = [[0, 1, 2, 0], [0, 2, 2, 3], [0, 2, 1, 3]]  # votes [0, 2, 2, 3]; only sample 0 always right


@pytest.mark.parametrize(
    "judge, robust, second",
    [("vote", [True, False, True, True], 3), ("worst", [True, False, False, False], 1)],
)
def test_eot_attack_judges_over_draws(judge, robust, second):
    x = torch.full((4, 3, 8, 8), 0.5)
    model = ScriptedModel(CLEAN + DRAWS)
    first = Recorder(model)
    attack = EOTAttack(first, n_draws=3, judge=judge)
    x_adv = attack(x, torch.tensor(Y))
    assert attack.robust.tolist() == robust
    assert attack.remaining == [4, sum(robust)]
    assert torch.allclose(x_adv, x + 0.01)

    # Chained: the second attack gets only the samples the first did not fool.
    model.rows = [torch.tensor(r) for r in CLEAN + DRAWS + [[9] * second] * 3]
    first, then = Recorder(model), Recorder(model)
    chain = EOTAttack(torchattacks.MultiAttack([first, then]), n_draws=3, judge=judge)
    chain(x, torch.tensor(Y))
    assert first.sizes == [4] and then.sizes == [second]
    assert chain.robust.tolist() == [False] * 4 and chain.remaining == [4, sum(robust), 0]
    assert not model.rows


def test_eot_attack_skips_samples_the_clean_draws_already_get_wrong():
    model = ScriptedModel([[0, 5, 2, 3]] * 3 + [[0, 2, 3]] * 3)
    recorder = Recorder(model)
    attack = EOTAttack([recorder], n_draws=3)
    x = torch.full((4, 3, 8, 8), 0.5)
    x_adv = attack(x, torch.tensor(Y))
    assert recorder.sizes == [3] and torch.equal(x_adv[1], x[1])
    assert attack.robust.tolist() == [True, False, True, True]
    with pytest.raises(ValueError, match="judge"):
        EOTAttack(recorder, judge="mean")
    with pytest.raises(ValueError, match="n_draws"):
        EOTAttack(recorder, n_draws=0)
    with pytest.raises(ValueError, match="same model"):
        EOTAttack([recorder, Recorder(ScriptedModel([]))])


def _small_wrn(monkeypatch):
    """RobustBench's WideResNet at depth 10, width 1, standing in for the zoo's WRN-28-10."""
    rb = rba.import_robustbench()
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    entry = rb.model_zoo.model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Standard"]
    monkeypatch.setitem(entry, "model", lambda: WideResNet(depth=10, widen_factor=1))

    def no_network(*args, **kwargs):
        raise AssertionError("no network access expected")

    monkeypatch.setattr(rba, "_online", no_network)
    torch.manual_seed(0)
    return WideResNet(depth=10, widen_factor=1).eval()


def test_load_classifier_reads_a_local_robustbench_checkpoint(tmp_path, monkeypatch):
    reference = _small_wrn(monkeypatch)
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    state = {"module." + k: v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state}, folder / "Standard.pt")
    model = load_classifier("Standard", "cifar10", "Linf", model_dir=tmp_path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), reference(x))
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    custom = tmp_path / "mine.pt"
    torch.save(reference.state_dict(), custom)
    model = load_classifier("Standard", model_dir=tmp_path / "nowhere", custom_checkpoint=custom)
    assert torch.allclose(model(x), reference(x))
    defended = purified_model(model, None)
    assert isinstance(defended, DefendedClassifier) and not defended.training


def test_load_classifier_errors_are_clear(tmp_path, monkeypatch):
    _small_wrn(monkeypatch)
    monkeypatch.setattr(rba, "_online", lambda *a, **k: False)
    with pytest.raises(FileNotFoundError, match=r"cifar10/Linf/Standard\.pt"):
        load_classifier("Standard", model_dir=tmp_path)
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    path = folder / "Standard.pt"
    path.write_bytes(b"\n<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    with pytest.raises(ValueError, match="HTML"):
        load_classifier("Standard", model_dir=tmp_path)
    torch.save({"w": torch.randn(2000)}, path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ValueError, match="truncated"):
        load_classifier("Standard", model_dir=tmp_path)
    with pytest.raises(ValueError, match="model zoo"):
        load_classifier("NoSuchModel2099", model_dir=tmp_path)
    with pytest.raises(ValueError, match="dataset"):
        load_classifier("Standard", dataset="mnist")
    with pytest.raises(FileNotFoundError, match="custom"):
        load_classifier("Standard", custom_checkpoint=tmp_path / "missing.pt")


def test_benchmark_writes_robustbench_model_info(weak_defence, tmp_path):
    weak, x, y = weak_defence
    result = benchmark_purified(
        weak,
        n_examples=4,
        draws=2,
        batch_size=4,
        x=x,
        y=y,
        to_disk=True,
        model_name="TinyDiffPure",
        info_root=tmp_path,
        info={"authors": "A. Tester", "venue": "tests"},
        eot_iter=1,
        n_iter=2,
    )
    clean, robust = result
    assert (clean, robust) == (result.details["clean"]["vote"], result.details["robust"]["vote"])
    assert result.details["n_examples"] == 4 and result.x_adv.shape == (4, 3, 8, 8)
    path = tmp_path / "model_info" / "cifar10" / "Linf" / "TinyDiffPure.json"
    record = json.loads(path.read_text())
    assert list(record) == list(MODEL_INFO_FIELDS)
    assert set(record) == set(ROBUSTBENCH_TYPES)
    for key, kind in ROBUSTBENCH_TYPES.items():
        assert type(record[key]) is kind, key
    assert record["eps"] == "8/255" and record["dataset"] == "cifar10"
    assert record["unreliable"] is True and record["number_forward_passes"] == 2
    assert re.fullmatch(r"\d+\.\d\d", record["clean_acc"]) and record["clean_acc"] == "100.00"
    assert record["autoattack_acc"] == f"{100 * robust:.2f}"
    assert "Randomised defence" in record["footnote"] and "AutoAttack rand" in record["footnote"]
    assert (
        record["authors"] == "A. Tester" and record["architecture"] == "DiffPure + TinyClassifier"
    )
    assert [p.name for p in path.parent.iterdir()] == ["TinyDiffPure.json"]
    with pytest.raises(ValueError, match="fields"):
        write_model_info(tmp_path, "cifar10", "Linf", "x", {"link": ""})
    with pytest.raises(ValueError, match="model_name"):
        benchmark_purified(weak, x=x, y=y, to_disk=True)
    with pytest.raises(ValueError, match="info"):
        benchmark_purified(weak, x=x, y=y, info={"clean_acc": "99.00"})


@pytest.mark.parametrize("name", sorted(ATTACK_SPECS))
def test_registered_attack_runs_every_registry_entry_as_torchattacks(name, diffusion, stats):
    classifier = TinyClassifier()
    policy = SSNISigmoid(EPSNorm(diffusion, num_levels=5), stats, 3, tau=max(stats.std, 1e-3))
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    y = classifier(x).argmax(1)
    budget = {"norm": "Linf", "eps": EPS, "iterations": 2, "eot": 1}
    spec = ATTACK_SPECS[name]
    budget.update({k: v for k, v in (("step", 0.05), ("restarts", 1)) if k in spec.takes})
    if "selector_weight" in spec.takes:
        budget["weight"] = 0.5
    outputs = []
    for wrapped in (True, False):
        purifier = DiffPure(diffusion, noise=policy, t_star=3, steps=1, surrogate_steps=1)
        if spec.needs == "saliency":  # the mask-steering attack needs DAC's attention mask
            mask = AttentionMask(Probe(), ("first", "second"), threshold=0.5)
            purifier = DAC(diffusion, mask=mask, noise=policy, t_large=3, t_small=1, stride=2)
        elif spec.needs == "spectral":  # the spectral attack needs MANI-Pure's spectrum
            purifier = MANIPure(diffusion, noise=policy, t_star=3, steps=1, bands=2, radius=1.0)
        model = DefendedClassifier(purifier, classifier)
        model.reseed(0)
        if wrapped:
            outputs.append(RegisteredAttack(model, name, seed=1, **budget)(x, y))
        else:
            outputs.append(spec.run(model, x, y, generator=1, **budget))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    assert float((outputs[0] - x).abs().max()) <= EPS + 1e-6
    with pytest.raises(ValueError, match="not \\['alpha'\\]"):
        RegisteredAttack(model, name, alpha=0.1)
