"""Speed options of DiffusionModel: reduced precision, channels_last, compile, CUDA graphs.

The precision bounds asserted here are the ones recorded in benchmarks/README.md.
"""

from __future__ import annotations

import copy
import functools
import math
import os

import pytest
import torch

from art_ssni import DiffPure, DiffusionModel
from art_ssni.diffusion import VPSchedule, continuous_time_label
from art_ssni.diffusion.acceleration import CUDAGraphCalls
from art_ssni.diffusion.networks import ADMUNet, NCSNpp, SmallUNet

from tiny import TinyEpsNet

# Relative L2 error against float32, measured on the four networks below (random weights):
# eps up to 0.0059 (bf16) / 0.0008 (fp16); purified image up to 0.0004 / 0.0001.
EPS_BOUND = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
IMAGE_BOUND = {torch.bfloat16: 2e-3, torch.float16: 5e-4}
LEVELS = torch.tensor([5, 100, 400, 900])


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Gaussian weights scaled by 1/sqrt(fan-in) (no zero-initialised output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            fan_in = math.prod(p.shape[1:]) if p.dim() > 1 else 10
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    return net.eval()


def _diffusers_unet() -> torch.nn.Module:
    from art_ssni._compat import import_torchvision

    import_torchvision()
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


ADM_TINY = dict(
    image_size=8,
    model_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(4,),
    num_head_channels=16,
)

NETWORKS = {
    "score_sde-ncsnpp": lambda: dict(
        eps_net=_randomize(
            NCSNpp(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8)
        ),
        schedule=VPSchedule(continuous=True),
        time_label=continuous_time_label(1000),
        image_shape=(3, 8, 8),
    ),
    "adm": lambda: dict(eps_net=_randomize(ADMUNet(**ADM_TINY)), image_shape=(3, 8, 8)),
    "small_unet": lambda: dict(
        eps_net=_randomize(SmallUNet(in_channels=3, base_channels=16)), image_shape=(3, 8, 8)
    ),
    "diffusers": lambda: dict(eps_net=_randomize(_diffusers_unet()), image_shape=(3, 8, 8)),
}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _images(size: int, batch: int = 4) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@functools.cache
def _float32_reference(network: str) -> tuple[torch.Tensor, torch.Tensor]:
    """eps at LEVELS and a DiffPure image (t* = 100, 10 steps, seed 0) in float32."""
    model = DiffusionModel(**NETWORKS[network]())
    x = _images(model.image_shape[-1])
    with torch.no_grad():
        return model.eps(2 * x - 1, LEVELS), DiffPure(model, t_star=100, steps=10, generator=0)(x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_reduced_precision_is_within_the_recorded_bound(network: str, dtype: torch.dtype) -> None:
    reduced = DiffusionModel(**NETWORKS[network](), compute_dtype=dtype)
    assert reduced.compute_dtype == dtype and reduced.dtype == torch.float32
    x = _images(reduced.image_shape[-1])
    eps32, image32 = _float32_reference(network)
    with torch.no_grad():
        eps = reduced.eps(2 * x - 1, LEVELS)
        image = DiffPure(reduced, t_star=100, steps=10, generator=0)(x)
    assert eps.dtype == image.dtype == torch.float32
    # Nonzero: the body really ran in the reduced type (float32 alone differs by ~1e-7).
    assert 1e-5 < _relative(eps, eps32) < EPS_BOUND[dtype]
    assert 1e-6 < _relative(image, image32) < IMAGE_BOUND[dtype]


def test_adm_uses_its_own_mixed_precision() -> None:
    model = DiffusionModel(**NETWORKS["adm"](), compute_dtype=torch.bfloat16)
    net = model.eps_net
    assert net.compute_dtype == torch.bfloat16
    assert net.middle_block[1].qkv.weight.dtype == torch.bfloat16
    assert net.middle_block[1].norm.weight.dtype == torch.float32
    assert DiffusionModel(net).compute_dtype == torch.bfloat16
    back = DiffusionModel(net, compute_dtype=torch.float32)
    assert back.compute_dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_guided_diffusion_loader_takes_compute_dtype_and_its_alias(tmp_path) -> None:
    state = NETWORKS["adm"]()["eps_net"].state_dict()
    path = tmp_path / "adm_tiny.pt"
    torch.save(state, path)
    x, t = 2 * _images(8) - 1, LEVELS
    by_name = DiffusionModel.from_guided_diffusion(path, compute_dtype=torch.bfloat16, **ADM_TINY)
    by_alias = DiffusionModel.from_guided_diffusion(path, dtype=torch.bfloat16, **ADM_TINY)
    plain = DiffusionModel.from_guided_diffusion(path, **ADM_TINY)
    assert by_name.compute_dtype == by_alias.compute_dtype == torch.bfloat16
    assert plain.compute_dtype == torch.float32
    with torch.no_grad():
        eps = by_name.eps(x, t)
        assert torch.equal(eps, by_alias.eps(x, t))
        assert 0 < _relative(eps, plain.eps(x, t)) < EPS_BOUND[torch.bfloat16]
    with pytest.raises(ValueError, match="disagree"):
        DiffusionModel.from_guided_diffusion(
            path, dtype=torch.float16, compute_dtype=torch.bfloat16, **ADM_TINY
        )


def test_a_network_cast_to_bf16_keeps_a_float32_sampler() -> None:
    net = TinyEpsNet().to(torch.bfloat16)
    model = DiffusionModel(net, image_shape=(3, 8, 8))
    assert model.compute_dtype == torch.bfloat16 and model.dtype == torch.float32
    reference = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8))
    x = _images(8)
    with torch.no_grad():
        image = DiffPure(model, t_star=50, steps=5, generator=0)(x)
        image32 = DiffPure(reference, t_star=50, steps=5, generator=0)(x)
    assert image.dtype == torch.float32
    assert 0 < _relative(image, image32) < IMAGE_BOUND[torch.bfloat16]


class _ConvOnly(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * (1 + t.to(x.dtype)[:, None, None, None] / 1000)


def test_a_float64_network_runs_in_float64() -> None:
    model = DiffusionModel(_ConvOnly().double(), image_shape=(3, 8, 8))
    assert model.compute_dtype == model.dtype == torch.float64
    x = (2 * _images(8) - 1).double()
    with torch.no_grad():
        eps = model.eps(x, LEVELS)
        expected = model.eps_net(x, LEVELS - 1)
    assert eps.dtype == torch.float64
    torch.testing.assert_close(eps, expected, rtol=0, atol=0)


def test_bad_speed_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="compute_dtype"):
        DiffusionModel(TinyEpsNet(), compute_dtype=torch.int8)
    with pytest.raises(ValueError, match="compute_dtype"):
        DiffusionModel(_randomize(ADMUNet(**ADM_TINY)), compute_dtype=torch.float64)
    with pytest.raises(ValueError, match="weights are torch.bfloat16"):
        DiffusionModel(TinyEpsNet().to(torch.bfloat16), compute_dtype=torch.float32)
    with pytest.raises(ValueError, match="compile"):
        DiffusionModel(TinyEpsNet(), compile="yes")
    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphCalls(lambda x, t: x, max_graphs=0)


def test_channels_last_gives_the_same_eps() -> None:
    reference = DiffusionModel(**NETWORKS["score_sde-ncsnpp"]())
    nhwc = DiffusionModel(**NETWORKS["score_sde-ncsnpp"](), channels_last=True)
    conv = nhwc.eps_net.all_modules[2].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = 2 * _images(8) - 1
    with torch.no_grad():
        eps = nhwc.eps(x, LEVELS)
        expected = reference.eps(x, LEVELS)
    assert eps.is_contiguous()
    torch.testing.assert_close(eps, expected, rtol=1e-4, atol=1e-5)


def _compile_backends() -> list:
    backends = ["aot_eager"]
    if os.environ.get("ART_SSNI_TEST_INDUCTOR") == "1":
        backends.append("inductor")
    return backends


@pytest.mark.parametrize("backend", _compile_backends())
def test_compiled_network_call_matches_eager(backend: str) -> None:
    """aot_eager traces the whole call with dynamo in under a second; inductor (C++ codegen,
    about 25 s cold on the 2-core dev CPU) runs with ART_SSNI_TEST_INDUCTOR=1."""
    torch._dynamo.reset()
    eager = DiffusionModel(**NETWORKS["small_unet"]())
    compiled = DiffusionModel(**NETWORKS["small_unet"](), compile={"backend": backend})
    mixed = DiffusionModel(
        **NETWORKS["small_unet"](), compile={"backend": backend}, compute_dtype=torch.bfloat16
    )
    x = _images(8)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled.eps(2 * x - 1, LEVELS), eager.eps(2 * x - 1, LEVELS), rtol=1e-4, atol=1e-5
        )
        image32 = DiffPure(eager, t_star=100, steps=10, generator=0)(x)
        image = DiffPure(compiled, t_star=100, steps=10, generator=0)(x)
        reduced = DiffPure(mixed, t_star=100, steps=10, generator=0)(x)
    torch.testing.assert_close(image, image32, rtol=1e-4, atol=1e-5)
    assert 0 < _relative(reduced, image32) < IMAGE_BOUND[torch.bfloat16]
    assert compiled._runner is not compiled._network_call


def test_a_copy_runs_its_own_weights_after_compiling() -> None:
    model = DiffusionModel(TinyEpsNet(), compile={"backend": "aot_eager"})
    x = 2 * _images(8) - 1
    with torch.no_grad():
        before = model.eps(x, LEVELS)
        twin = copy.deepcopy(model)
        twin.eps_net.out.bias.add_(1.0)
        torch.testing.assert_close(twin.eps(x, LEVELS), before + 1.0)
        torch.testing.assert_close(model.eps(x, LEVELS), before)


def test_cuda_graphs_leave_cpu_calls_eager() -> None:
    calls = []

    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x * 2

    graphed = CUDAGraphCalls(network)
    x = torch.ones(3, 1, 2, 2)
    with torch.no_grad():
        assert torch.equal(graphed(x, torch.zeros(3)), 2 * x)
    assert calls == [3] and graphed.graphs == {}
    model = DiffusionModel(TinyEpsNet(), cuda_graphs=True)
    reference = DiffusionModel(TinyEpsNet())
    with torch.no_grad():
        torch.testing.assert_close(
            model.eps(2 * _images(8) - 1, LEVELS), reference.eps(2 * _images(8) - 1, LEVELS)
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replay_matches_eager_on_gpu() -> None:
    eager = DiffusionModel(**NETWORKS["small_unet"]()).cuda()
    graphed = DiffusionModel(**NETWORKS["small_unet"](), cuda_graphs=True).cuda()
    x = _images(8).cuda()
    with torch.no_grad():
        first = graphed.eps(2 * x - 1, LEVELS.cuda())
        again = graphed.eps(2 * x.flip(0) - 1, LEVELS.flip(0).cuda())
        expected_first = eager.eps(2 * x - 1, LEVELS.cuda())
        expected_again = eager.eps(2 * x.flip(0) - 1, LEVELS.flip(0).cuda())
        torch.testing.assert_close(first, expected_first, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(again, expected_again, rtol=1e-4, atol=1e-5)
        image = DiffPure(graphed, t_star=100, steps=10, generator=0)(x)
        expected = DiffPure(eager, t_star=100, steps=10, generator=0)(x)
    assert len(graphed._runner.graphs) == 1
    torch.testing.assert_close(image, expected, rtol=1e-4, atol=1e-5)
