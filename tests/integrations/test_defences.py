"""ART preprocessing defences (art_ssni.defences): ART's PGD through DiffPure, GDMP and GNS in
each gradient mode and with SSNI, EOT expansion and gradients, and parameter checks."""

import numpy as np
import pytest
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier

from art_ssni import EPSNorm, SSNISigmoid
from art_ssni.defences import DiffPurePyTorch, GDMPPyTorch, GNSPyTorch

from tiny import TinyClassifier

SMALL = {
    DiffPurePyTorch: {"t_star": 10, "steps": 3, "surrogate_steps": 1},
    GDMPPyTorch: {"t_star": 8, "steps": 2, "runs": 2, "surrogate_steps": 1},
    GNSPyTorch: {"stages": [(4, 2), (8, 2)], "surrogate_stages": [(8, 1)]},
}


def _classifier(defence):
    return PyTorchClassifier(
        model=TinyClassifier(),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(3, 8, 8),
        nb_classes=10,
        clip_values=(0, 1),
        preprocessing_defences=[defence],
        device_type="cpu",
    )


@pytest.mark.parametrize("cls", [DiffPurePyTorch, GDMPPyTorch, GNSPyTorch])
@pytest.mark.parametrize("gradient", ["full", "surrogate", "bpda"])
def test_art_pgd_runs_through_each_defence(diffusion, images, cls, gradient):
    defence = cls(diffusion, gradient=gradient, generator=0, device_type="cpu", **SMALL[cls])
    assert defence.apply_fit is False and defence.apply_predict is True
    classifier = _classifier(defence)
    x = images.numpy()
    y = np.arange(6) % 10
    attack = ProjectedGradientDescent(
        classifier, eps=8 / 255, eps_step=2 / 255, max_iter=2, verbose=False
    )
    x_adv = attack.generate(x, y=y)
    delta = x_adv - x
    assert x_adv.dtype == np.float32
    assert np.abs(delta).max() <= 8 / 255 + 1e-6 and np.abs(delta).max() > 0
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert classifier.predict(x_adv).shape == (6, 10)


def test_ssni_defence_runs_in_art(diffusion, stats, images):
    policy = SSNISigmoid(EPSNorm(diffusion, num_levels=5), stats, t_star=10, tau=1.0)
    defence = DiffPurePyTorch(diffusion, noise=policy, steps=3, t_star=10, device_type="cpu")
    classifier = _classifier(defence)
    grad = classifier.loss_gradient(images.numpy(), np.eye(10, dtype=np.float32)[np.zeros(6, int)])
    assert grad.shape == (6, 3, 8, 8) and np.isfinite(grad).all()


def test_eot_expands_only_for_labelled_gradients(diffusion, images):
    defence = DiffPurePyTorch(diffusion, eot_samples=4, device_type="cpu", **SMALL[DiffPurePyTorch])
    y = torch.arange(6)
    with torch.no_grad():
        out, y_out = defence.forward(images, y)
    assert out.shape == images.shape and torch.equal(y_out, y)
    x = images.clone().requires_grad_(True)
    out, y_out = defence.forward(x, y)
    assert out.shape == (24, 3, 8, 8)
    assert y_out.tolist() == [i for i in range(6) for _ in range(4)]
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1


def test_eot_loss_gradient_is_the_mean_over_draws(diffusion, images):
    defence = DiffPurePyTorch(
        diffusion, eot_samples=3, batch_size=4, device_type="cpu", **SMALL[DiffPurePyTorch]
    )
    classifier = _classifier(defence)
    y = np.arange(6)
    defence.purifier.generator = torch.Generator().manual_seed(2)
    art_grad = classifier.loss_gradient(images.numpy(), np.eye(10, dtype=np.float32)[y])

    g = torch.Generator().manual_seed(2)
    x = images.clone().requires_grad_(True)
    expanded = x.repeat_interleave(3, dim=0)
    purified = torch.cat([defence.purifier(c, generator=g) for c in expanded.split(4)])
    logits = classifier.model(purified)
    labels = torch.from_numpy(y).repeat_interleave(3)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    assert np.allclose(art_grad, x.grad.numpy(), atol=1e-6)


def test_defence_parameter_checks(diffusion):
    with pytest.raises(ValueError, match="eot_samples"):
        DiffPurePyTorch(diffusion, eot_samples=0, device_type="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        DiffPurePyTorch(diffusion, batch_size=0, device_type="cpu")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DiffPurePyTorch(diffusion, device_type="cpu").forward(torch.full((1, 3, 8, 8), 3.0))
