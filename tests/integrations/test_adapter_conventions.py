"""RobustBench's benchmark runs offline; the adapters follow ART's and torchattacks'
conventions (keywords, clipping, channels-last, set_params, argument order, targeted modes)."""

import subprocess
import sys

import numpy as np
import torch

import integrations  # noqa: F401  (installs the autoattack module robustbench imports)
from integrations.autoattack_compat import AutoAttack

from tiny import TinyClassifier


def test_plain_import_robustbench_works_after_importing_integrations():
    code = "import integrations, robustbench, autoattack; print(autoattack.AutoAttack.__module__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "integrations.autoattack_compat"


def test_robustbench_benchmark_runs_standard_autoattack(monkeypatch, tmp_path):
    import robustbench.eval as rb_eval

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g)
    model = TinyClassifier().eval()
    y = model(x).argmax(1)  # every clean example is classified correctly
    monkeypatch.setattr(rb_eval, "load_clean_dataset", lambda *args: (x, y))
    log = tmp_path / "aa.log"
    clean, robust = rb_eval.benchmark(
        model, n_examples=6, dataset="cifar10", threat_model="Linf", eps=0.5, log_path=str(log),
        batch_size=6, device=torch.device("cpu"),
    )  # fmt: skip
    assert clean == 1.0
    assert robust == 0.0  # a linear model at eps 0.5 on [0, 1] images is broken everywhere
    assert log.is_file()


def test_upstream_constructor_and_return_value():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 8, 8, generator=g)
    model = TinyClassifier().eval()
    y = model(x).argmax(1)
    adversary = AutoAttack(
        model, norm="Linf", eps=0.5, version="custom", attacks_to_run=["apgd-ce"], device="cpu"
    )
    adversary.apgd.n_restarts = 1
    x_adv = adversary.run_standard_evaluation(x, y, bs=4)
    assert isinstance(x_adv, torch.Tensor) and x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= 0.5 + 1e-6
    assert bool((model(x_adv).argmax(1) != y).all())


# ART conventions


def _art_defence(diffusion, **kwargs):
    from art_ssni.defences import DiffPurePyTorch

    return DiffPurePyTorch(diffusion, t_star=6, steps=2, device_type="cpu", generator=0, **kwargs)


def test_art_keywords_clip_and_channels_last(diffusion, images):
    import pytest

    defence = _art_defence(diffusion, apply_fit=True, apply_predict=False)
    assert defence.apply_fit and not defence.apply_predict
    wide = images * 1.4 - 0.2  # a step outside [0, 1]
    clipped, _ = _art_defence(diffusion, clip_values=(0, 1)).forward(wide)
    reference, _ = _art_defence(diffusion).forward(wide.clamp(0, 1))
    assert torch.equal(clipped, reference)
    nhwc, _ = _art_defence(diffusion, channels_first=False).forward(images.permute(0, 2, 3, 1))
    nchw, _ = _art_defence(diffusion).forward(images)
    assert torch.equal(nhwc, nchw.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"clip_values=None"):
        _art_defence(diffusion).forward(wide)
    for bad in ((1, 0), (0, float("nan")), (0,), "0-255"):
        with pytest.raises(ValueError, match="clip_values must be"):
            _art_defence(diffusion, clip_values=bad)


def test_art_defence_takes_the_classifier_s_0_255_range(diffusion, images):
    """A classifier on [0, 255] images (ART clip_values=(0, 255)) takes the defence with the
    same clip_values: it purifies x / 255 and returns 255 times the result, the same draw as
    on [0, 1] images; without them the error names clip_values=(0, 255), not the data."""
    import pytest

    pixels = images * 255
    scaled, _ = _art_defence(diffusion, clip_values=(0, 255)).forward(pixels)
    unit, _ = _art_defence(diffusion).forward(images)
    torch.testing.assert_close(scaled, unit * 255, rtol=0, atol=1e-3)
    assert float(scaled.max()) > 1.5
    with pytest.raises(ValueError, match=r"\[0, 255\] pixels.*clip_values=\(0, 255\)"):
        _art_defence(diffusion).forward(pixels)


def test_plain_art_class_gradient_refuses_eot_it_cannot_average(diffusion, images):
    """ART's class_gradient passes no labels, so the defence cannot expand the batch over its
    eot_samples draws: a plain PyTorchClassifier refuses instead of silently using one draw;
    VotingPyTorchClassifier averages its own draws and is served."""
    import pytest
    from art.estimators.classification import PyTorchClassifier

    from art_ssni.defences import VotingPyTorchClassifier

    def classifier(cls, **kwargs):
        return cls(
            TinyClassifier(), loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 8, 8),
            nb_classes=10, preprocessing_defences=[_art_defence(diffusion, eot_samples=3)],
            clip_values=(0, 1), device_type="cpu", **kwargs,
        )  # fmt: skip

    x = images[:2].numpy()
    with pytest.raises(ValueError, match="eot_samples=3 needs labels.*VotingPyTorchClassifier"):
        classifier(PyTorchClassifier).class_gradient(x, label=0)
    gradient = classifier(VotingPyTorchClassifier, votes=1).class_gradient(x, label=0)
    assert gradient.shape == (2, 1, 3, 8, 8) and np.isfinite(gradient).all()
    loss_gradient = classifier(PyTorchClassifier).loss_gradient(x, np.eye(10)[[0, 1]])
    assert loss_gradient.shape == x.shape


def test_art_set_params_reaches_the_purifier(diffusion):
    import pytest

    defence = _art_defence(diffusion)
    defence.set_params(t_star=4, gradient="bpda", eot_samples=3)
    assert defence.purifier.t_star == 4 and defence.purifier.stages == ((4, 2),)
    assert defence.purifier.gradient == "bpda" and defence.eot_samples == 3
    with pytest.raises(ValueError, match="unknown parameters"):
        defence.set_params(temperature=2)
    with pytest.raises(ValueError, match="t_star"):
        defence.set_params(t_star=float("nan"))


def test_voting_classifier_predicts_vote_fractions_and_averages_class_gradients(
    diffusion, images, monkeypatch
):
    from art.estimators.classification import PyTorchClassifier

    from art_ssni.defences import VotingPyTorchClassifier

    defence = _art_defence(diffusion, eot_samples=3)
    classifier = VotingPyTorchClassifier(
        TinyClassifier(), loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 8, 8),
        nb_classes=10, preprocessing_defences=[defence], clip_values=(0, 1),
        device_type="cpu", votes=4,
    )  # fmt: skip
    x = images.numpy()
    scores = classifier.predict(x)
    assert scores.shape == (6, 10)
    assert (scores.sum(1) == 1).all() and ((scores * 4) == (scores * 4).round()).all()
    calls = iter([1.0, 2.0, 6.0])
    monkeypatch.setattr(
        PyTorchClassifier, "class_gradient", lambda self, x, label=None, **k: x * 0 + next(calls)
    )
    assert (classifier.class_gradient(x, label=0) == 3.0).all()  # mean of 1, 2, 6


# torchattacks conventions


def _ta_model(diffusion):
    from art_ssni import DiffPure
    from art_ssni.models.defended import DefendedClassifier

    return DefendedClassifier(DiffPure(diffusion, t_star=4, steps=2, generator=0), TinyClassifier())


def test_pgdeot_takes_torchattacks_order_and_defaults(diffusion):
    import inspect

    import torchattacks

    from integrations import PGDEOT

    ours = inspect.signature(PGDEOT.__init__).parameters
    theirs = inspect.signature(torchattacks.EOTPGD.__init__).parameters
    names = list(theirs)
    assert list(ours)[: len(names)] == names
    for name in names[2:]:
        assert ours[name].default == theirs[name].default
    attack = PGDEOT(_ta_model(diffusion), 0.1, 0.05, 3, 1, False)
    assert (attack.eps, attack.alpha, attack.steps, attack.eot_iter) == (0.1, 0.05, 3, 1)
    assert attack.random_start is False


def test_targeted_mode_moves_towards_the_target():
    import pytest

    from art_ssni.models.defended import DefendedClassifier
    from integrations import PGDEOT, SelectorAwarePGD

    model = DefendedClassifier(None, TinyClassifier())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 8, 8, generator=g) * 0.5 + 0.25
    y = model(x).argmax(1)
    attack = PGDEOT(model, eps=0.25, alpha=0.05, steps=10, eot_iter=1, random_start=False)
    attack.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10, quiet=True)
    x_adv = attack(x, y)
    target = (y + 1) % 10
    before = torch.nn.functional.cross_entropy(model(x), target, reduction="none")
    after = torch.nn.functional.cross_entropy(model(x_adv), target, reduction="none")
    assert bool((after < before).all())
    assert float((model(x_adv).argmax(1) == target).float().mean()) >= 0.5
    assert float((x_adv - x).abs().max()) <= 0.25 + 1e-6
    attack.set_mode_targeted_random(quiet=True)
    attack(x, y)
    with pytest.raises(ValueError, match="set_normalization_used"):
        attack.set_normalization_used(mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(ValueError, match="SSNI"):
        SelectorAwarePGD(model, steps=1)(x, y)


def test_eot_attack_save_reports_the_multi_draw_verdict(diffusion, tmp_path, capsys):
    from integrations import PGDEOT, EOTAttack

    model = _ta_model(diffusion)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)
    attack = EOTAttack(PGDEOT(model, eps=0.05, alpha=0.05, steps=1, eot_iter=1), n_draws=3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    path = tmp_path / "adv.pt"
    rob_acc, _, _ = attack.save(loader, save_path=str(path), return_verbose=True)
    saved = torch.load(path, weights_only=True)
    assert rob_acc == 100.0 * float(saved["robust"].float().mean())
    assert saved["adv_inputs"].shape == x.shape and torch.equal(saved["labels"], y)
    assert "over 3 draws (vote)" in capsys.readouterr().out


# other libraries' data conventions


def test_normalising_libraries_are_named_not_the_data(diffusion, images):
    """torchattacks' set_normalization_used and foolbox's preprocessing=dict(mean, std)
    normalise before the model, foolbox's bounds=(0, 255) attacks pixels: the defended model's
    error names those settings (it blamed the data's scale)."""
    import pytest
    import torchattacks

    model = _ta_model(diffusion)
    labels = torch.arange(len(images)) % 10
    attack = torchattacks.PGD(model, eps=0.1, alpha=0.05, steps=1)
    attack.set_normalization_used(mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(ValueError, match="torchattacks' set_normalization_used"):
        attack((images - 0.5) / 0.25, labels)  # torchattacks takes normalised inputs then
    with pytest.raises(ValueError, match=r"foolbox's preprocessing=dict\(mean=\.\.\., std"):
        model((images - 0.5) / 0.25)  # what foolbox's preprocessing hands the model
    with pytest.raises(ValueError, match=r"\[0, 255\] pixels.*foolbox use bounds=\(0, 1\)"):
        model(images * 255)


def test_art_classifier_on_0_255_images_runs_through_the_defence(diffusion, images):
    """An ART classifier with clip_values=(0, 255) and the defence with the same clip_values
    predicts exactly as the [0, 1] pipeline does, and ART's PGD runs on it within its budget."""
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    class Pixels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyClassifier()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x / 255)

    def classifier(model, bounds):
        return PyTorchClassifier(
            model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 8, 8), nb_classes=10,
            clip_values=bounds, device_type="cpu",
            preprocessing_defences=[_art_defence(diffusion, clip_values=bounds)],
        )  # fmt: skip

    x = images.numpy()
    pixels = classifier(Pixels(), (0, 255))
    np.testing.assert_allclose(
        pixels.predict(x * 255), classifier(TinyClassifier(), (0, 1)).predict(x), atol=1e-4
    )
    attack = ProjectedGradientDescent(pixels, eps=20, eps_step=10, max_iter=2, verbose=False)
    x_adv = attack.generate(x * 255, y=np.arange(len(x)) % 10)
    assert 0 < np.abs(x_adv - x * 255).max() <= 20 + 1e-3 and x_adv.max() <= 255
