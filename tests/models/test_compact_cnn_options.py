"""CompactCNN's fast-training options: the whitening stem and test-time augmentation."""

import pytest
import torch

from art_ssni.models.compact_cnn import CompactCNN, whitening_weights


def test_whitening_weights_whiten_the_patches() -> None:
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(12, 12, generator=gen)
    patches = (torch.randn(20_000, 12, generator=gen) @ mix).reshape(-1, 3, 2, 2)
    w = whitening_weights(patches, eps=0.0)
    assert w.shape == (24, 3, 2, 2)
    assert torch.equal(w[12:], -w[:12])
    z = patches.reshape(len(patches), -1).double() @ w[:12].reshape(12, -1).double().T
    cov = torch.cov(z.T)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-4)


def test_flip_tta_is_mirror_invariant() -> None:
    torch.manual_seed(0)
    net = CompactCNN(widths=[24, 8, 8, 8], stem="whiten", head_bias=False, tta="flip").eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain, mirrored = net.logits(x), net.logits(x.flip(-1))
        scale = plain.abs().max()
        assert (plain - mirrored).abs().max() > 0.05 * scale
        assert (net(x) - net(x.flip(-1))).abs().max() < 1e-4 * scale


def test_flip_translate_weights_the_shifted_views() -> None:
    torch.manual_seed(0)
    net = CompactCNN(widths=[24, 8, 8, 8], stem="whiten", tta="flip_translate").eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[..., :32, :32], padded[..., 2:, 2:]]
    with torch.no_grad():
        pair = [0.5 * (net.logits(v) + net.logits(v.flip(-1))) for v in views]
        expected = 0.5 * pair[0] + 0.25 * (pair[1] + pair[2])
        assert torch.allclose(net(x), expected, atol=1e-5)
        net.train()
        assert torch.allclose(net(x), net.logits(x), atol=1e-6)


def test_config_rebuilds_and_defaults_keep_the_old_layout() -> None:
    net = CompactCNN(widths=[24, 64, 256, 256], stem="whiten", head_bias=False,
                     head_scale=1 / 9, tta="flip")  # fmt: skip
    again = CompactCNN(**net.config)
    assert again.state_dict().keys() == net.state_dict().keys()
    assert set(CompactCNN().config) == {"widths", "num_classes", "mean", "std"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"stem": "fft"}, "stem"), ({"tta": "rotate"}, "tta"),
     ({"stem": "whiten", "widths": [32, 8, 8, 8]}, "whitening stem")],
)  # fmt: skip
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CompactCNN(**kwargs)


def test_block_names_do_not_depend_on_the_stem() -> None:
    for stem, width in (("conv", 32), ("whiten", 24)):
        net = CompactCNN(widths=[width, 8, 8, 8], stem=stem)
        names = dict(net.named_modules())
        assert all(isinstance(names[f"net.{i}.6"], torch.nn.GELU) for i in (3, 4, 5))
