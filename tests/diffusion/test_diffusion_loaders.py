"""DiffusionModel loaders for the real checkpoint layouts, on tiny versions of the networks."""

import math

import pytest
import torch

from art_ssni import DiffPure, DiffusionModel, VPSchedule
from art_ssni.diffusion.networks import ADMUNet, NCSNpp

NCSN_TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8)
ADM_TINY = dict(
    image_size=16,
    model_channels=32,
    channel_mult=(1, 2),
    attention_resolutions=(8,),
    num_head_channels=16,
    num_res_blocks=1,
)


def _score_sde_file(tmp_path):
    torch.manual_seed(0)
    net = NCSNpp(init_scale=1.0, **NCSN_TINY)
    params = [p.detach().clone() for p in net.parameters()]
    ckpt = {
        "model": {f"module.{k}": v for k, v in net.state_dict().items()},
        "ema": {"decay": 0.9999, "num_updates": 1, "shadow_params": params},
        "optimizer": {},
        "step": 1,
    }
    path = tmp_path / "checkpoint_8.pth"
    torch.save(ckpt, path)
    return net.eval(), path


def test_from_score_sde_feeds_continuous_labels_and_vp_schedule(tmp_path):
    net, path = _score_sde_file(tmp_path)
    model = DiffusionModel.from_score_sde(path, **NCSN_TINY)
    assert model.schedule == VPSchedule(continuous=True)
    assert model.image_shape == (3, 8, 8)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([100, 1000])
    with torch.no_grad():
        expected = net(x, torch.tensor([99.9, 999.0]))
        assert torch.allclose(model.eps(x, t), expected, atol=1e-5)
        sigma = (1 - math.exp(-(0.1 * 0.1 + 0.5 * 19.9 * 0.01))) ** 0.5
        assert torch.allclose(model.score(x, t)[0], -expected[0] / sigma, rtol=1e-4, atol=1e-5)
        out = DiffPure(model, t_star=10, steps=2, generator=0)(torch.rand(2, 3, 8, 8))
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()


def test_from_guided_diffusion_drops_the_variance_channels(tmp_path):
    torch.manual_seed(0)
    net = ADMUNet(**ADM_TINY).eval()
    path = tmp_path / "256x256_diffusion_uncond.pt"
    torch.save(net.state_dict(), path)
    model = DiffusionModel.from_guided_diffusion(path, **ADM_TINY)
    assert model.image_shape == (3, 16, 16) and model.schedule == VPSchedule()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        full = net(x, torch.tensor([0, 499]))
        assert full.shape[1] == 6
        assert torch.allclose(model.eps(x, torch.tensor([1, 500])), full[:, :3], atol=1e-5)


def test_loaders_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError):
        DiffusionModel.from_score_sde(tmp_path / "missing.pth", **NCSN_TINY)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError):
        DiffusionModel.from_guided_diffusion(bad, **ADM_TINY)
