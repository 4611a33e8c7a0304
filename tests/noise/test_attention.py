"""AttentionMask (art_ssni.noise.attention), DAC's mask from a classifier's block energies:
its values, exact top fraction, batch independence, hook clean-up and refusals."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from art_ssni import AttentionMask
from art_ssni.noise import ATTENTION_LAYERS

from tiny import Probe


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
    return ((flat - lo) / (hi - lo)).view_as(m)


def test_attention_mask_values(images):
    net = Probe()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    mask = AttentionMask(net, ["first", "second"], threshold=0.6, mean=mean, std=std)
    z = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    first = _minmax(z.pow(2).sum(1, keepdim=True))
    second = _minmax(
        F.interpolate(F.avg_pool2d(z, 2).pow(2).sum(1, keepdim=True), size=(8, 8), mode="bilinear")
    )
    expected = torch.maximum(first, second)
    torch.testing.assert_close(mask.saliency(images), expected)
    assert torch.equal(mask(images), (expected >= 0.6).float())
    assert 0 < float(mask(images).mean()) < 1


def test_top_fraction_is_exact_and_takes_the_highest_pixels(images):
    mask = AttentionMask(Probe(), ["first"], top_fraction=0.15)
    out = mask(images)
    assert out.sum((1, 2, 3)).tolist() == [round(0.15 * 64)] * images.shape[0]
    saliency = mask.saliency(images).flatten(1)
    chosen = out.flatten(1).bool()
    for i in range(images.shape[0]):
        assert float(saliency[i][chosen[i]].min()) >= float(saliency[i][~chosen[i]].max())


def test_hooks_are_removed_and_the_mode_restored(images):
    net = Probe().train()
    mask = AttentionMask(net, ["first", "second"])
    for _ in range(3):
        mask(images)
    assert not net.first._forward_hooks and not net.second._forward_hooks
    assert net.training
    with pytest.raises(RuntimeError):
        mask(images[:, :2])  # the classifier fails: hooks must still be gone
    assert not net.first._forward_hooks and not net.second._forward_hooks


def test_a_sample_mask_does_not_depend_on_its_batch(images):
    from art_ssni.models import SmallCNN

    net = SmallCNN()
    mask = AttentionMask(net, ATTENTION_LAYERS["digits"], top_fraction=0.25)
    x = images[:, :1]
    batched = mask(x)
    alone = torch.cat([mask(x[i : i + 1]) for i in range(x.shape[0])])
    assert torch.equal(batched, alone)


def test_constant_map_gives_a_finite_mask():
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Conv2d(3, 2, 1)
            nn.init.zeros_(self.block.weight)
            nn.init.ones_(self.block.bias)

        def forward(self, x):
            return self.block(x).mean((1, 2, 3))

    mask = AttentionMask(Flat(), ["block"], threshold=0.5)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(mask.saliency(x), torch.zeros(2, 1, 8, 8))
    assert torch.equal(mask(x), torch.zeros(2, 1, 8, 8))
    assert AttentionMask(Flat(), ["block"], top_fraction=0.5)(x).sum() == 64


def test_attention_mask_bad_inputs():
    net = Probe()
    for kwargs, message in [
        ({"layers": ["nope"]}, "no module named"),
        ({"layers": []}, "non-empty"),
        ({"layers": "first"}, "non-empty"),
        ({"threshold": 1.5}, "threshold"),
        ({"top_fraction": 0.0}, "top_fraction"),
        ({"mean": (0.5, 0.5, 0.5)}, "both mean and std"),
        ({"mean": (0.5,) * 3, "std": (0.0,) * 3}, "std must be positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            AttentionMask(net, **{"layers": ["first"], **kwargs})


def test_attention_mask_refuses_bad_images_and_non_finite_normalisation(images):
    net = Probe()
    nan, inf = float("nan"), float("inf")
    for kwargs, message in [
        ({"mean": (0.5, nan, 0.5), "std": (0.2,) * 3}, "mean must be finite"),
        ({"mean": (0.5,) * 3, "std": (0.2, inf, 0.2)}, "std must be finite"),
        ({"mean": (0.5,) * 3, "std": (0.2,) * 2}, "one value per channel"),
    ]:
        with pytest.raises(ValueError, match=message):
            AttentionMask(net, ["first"], **kwargs)
    mask = AttentionMask(net, ["first"], mean=(0.5,) * 3, std=(0.2,) * 3)
    broken = images.clone()
    broken[0, 0, 0, 0] = nan
    for x, message in [
        (broken, "NaN"),
        (images * 255, r"\[0, 1\]"),
        (images[:, :1], "1 channels but the model expects 3"),
        (images[0], "4-D"),
    ]:
        with pytest.raises(ValueError, match=message):
            mask(x)


def test_mask_of_a_tta_classifier_reads_the_image_as_given() -> None:
    from art_ssni.models.compact_cnn import CompactCNN

    torch.manual_seed(0)
    plain = CompactCNN(widths=[24, 8, 8, 8], stem="whiten").eval()
    augmented = CompactCNN(**{**plain.config, "tta": "flip_translate"}).eval()
    augmented.load_state_dict(plain.state_dict())
    layers = ("net.3.6", "net.4.6", "net.5.6")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = AttentionMask(plain, layers).saliency(x)
    assert torch.equal(AttentionMask(augmented, layers).saliency(x), expected)
