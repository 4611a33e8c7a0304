"""DAC and MANI-Pure through the faces: ART's loss gradient through DACPyTorch and
MANIPurePyTorch in each gradient mode, and torchattacks' PGD through DefendedClassifier."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from art_ssni import DAC, MANIPure

from tiny import half_mask

SMALL_DEFENCES = {
    "dac": {"mask": half_mask, "t_large": 8, "t_small": 4, "surrogate_stride": 4},
    "mani": {"t_star": 8, "steps": 3, "surrogate_steps": 1, "radius": 2},
}


@pytest.mark.parametrize("method", ["dac", "mani"])
@pytest.mark.parametrize("gradient", ["full", "surrogate", "bpda"])
def test_art_loss_gradient_through_each_defence(diffusion, images, method, gradient):
    import numpy as np
    from art.estimators.classification import PyTorchClassifier

    from art_ssni.defences import DACPyTorch, MANIPurePyTorch

    from tiny import TinyClassifier

    cls = DACPyTorch if method == "dac" else MANIPurePyTorch
    kwargs = {"gradient": gradient, "generator": 0, "device_type": "cpu"}
    defence = cls(diffusion, **kwargs, **SMALL_DEFENCES[method])
    classifier = PyTorchClassifier(
        model=TinyClassifier(), loss=nn.CrossEntropyLoss(reduction="sum"), input_shape=(3, 8, 8),
        nb_classes=10, clip_values=(0, 1), preprocessing_defences=[defence], device_type="cpu",
    )  # fmt: skip
    y = np.eye(10, dtype=np.float32)[np.arange(6) % 10]
    grad = classifier.loss_gradient(images.numpy(), y)
    purifier = cls(diffusion, **kwargs, **SMALL_DEFENCES[method]).purifier
    x = images.clone().requires_grad_(True)
    g = purifier.streams(x, 0)  # the per-sample streams of the defence's first call
    if gradient == "bpda":
        with torch.no_grad():
            purified = purifier.purify(x, purifier.levels(x, g), purifier.stages, g)
        purified.requires_grad_(True)
        loss = F.cross_entropy(TinyClassifier()(purified), torch.arange(6) % 10, reduction="sum")
        expected = torch.autograd.grad(loss, purified)[0]
    else:
        stages = purifier.stages if gradient == "full" else purifier.surrogate_stages
        purified = purifier.purify(x, purifier.levels(x, g), stages, g)
        loss = F.cross_entropy(TinyClassifier()(purified), torch.arange(6) % 10, reduction="sum")
        expected = torch.autograd.grad(loss, x)[0]
    np.testing.assert_allclose(grad, expected.numpy(), atol=1e-5, rtol=1e-4)
    assert np.abs(grad).sum() > 0


@pytest.mark.parametrize("method", ["dac", "mani"])
def test_torchattacks_pgd_through_the_defended_classifier(diffusion, images, method):
    import torchattacks

    from art_ssni import DefendedClassifier

    from tiny import TinyClassifier

    purifier = (DAC if method == "dac" else MANIPure)(
        diffusion, gradient="surrogate", generator=0, **SMALL_DEFENCES[method]
    )
    model = DefendedClassifier(purifier, TinyClassifier())
    assert model.votes == (20 if method == "dac" else 1)
    attack = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=2, random_start=False)
    x_adv = attack(images, torch.arange(6) % 10)
    delta = (x_adv - images).abs()
    assert float(delta.max()) <= 8 / 255 + 1e-6 and float(delta.max()) > 0
