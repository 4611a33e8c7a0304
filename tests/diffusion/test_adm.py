"""ADM UNet (guided-diffusion 256x256 unconditional) architecture and checkpoint loading."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from art_ssni.diffusion.networks import ADMUNet, load_guided_diffusion_checkpoint
from art_ssni.diffusion.networks.adm import GUIDED_DIFFUSION_256_UNCOND

from tiny import ROOT

REFERENCE_DIR = Path(os.environ.get("ART_SSNI_REFERENCE_DIR", ROOT.parent / "shared/reference"))
MANIFEST_PATH = REFERENCE_DIR / "guided_diffusion_256_uncond.json"
NUM_PARAMETERS = 552_814_086

TINY = dict(
    image_size=16,
    model_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(8,),
    num_head_channels=16,
)


@pytest.fixture(scope="module")
def manifest() -> dict:
    if not MANIFEST_PATH.is_file():
        pytest.skip(f"ADM manifest not found at {MANIFEST_PATH} (set ART_SSNI_REFERENCE_DIR)")
    return json.loads(MANIFEST_PATH.read_text())


@pytest.fixture(scope="module")
def meta_model() -> ADMUNet:
    with torch.device("meta"):
        return ADMUNet()


def _random_state(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the layout of ``ADMUNet(**config)``, scaled to keep activations O(1)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ADMUNet(**config).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 10
        state[name] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return state


def _tiny(seed: int = 0, **overrides) -> ADMUNet:
    config = {**TINY, **overrides}
    return load_guided_diffusion_checkpoint(_random_state(config, seed), **config)


def _inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 16, 16, generator=g) * 2 - 1
    t = torch.tensor([17, 640][:batch] + [300] * max(0, batch - 2))
    return x, t


def test_full_size_layout_matches_manifest(manifest: dict, meta_model: ADMUNet) -> None:
    layout = [[name, list(t.shape)] for name, t in meta_model.state_dict().items()]
    assert layout == manifest["state_dict"]
    assert sum(p.numel() for p in meta_model.parameters()) == manifest["num_parameters"]
    assert manifest["num_parameters"] == NUM_PARAMETERS
    assert not list(meta_model.buffers())
    with torch.device("meta"):
        explicit = ADMUNet(**GUIDED_DIFFUSION_256_UNCOND)
    assert [[n, list(t.shape)] for n, t in explicit.state_dict().items()] == layout


def test_full_size_forward_flops_match_manifest(manifest: dict, meta_model: ADMUNet) -> None:
    x = torch.empty(1, 3, 256, 256, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = meta_model(x, torch.zeros(1, dtype=torch.long, device="meta"))
    assert out.shape == (1, 6, 256, 256)
    assert out.dtype == torch.float32
    assert counter.get_total_flops() == manifest["forward_flops_per_image"]


def test_full_size_state_dict_in_memory_loads_into_model(manifest: dict) -> None:
    """All 552.8 M values land under their names; a misplaced tensor would be caught.

    To keep memory and time low every tensor is a window of one shared random buffer at its
    own offset, so tensors of equal shape still hold different values.
    """
    shapes = [(name, tuple(shape)) for name, shape in manifest["state_dict"]]
    largest = max(math.prod(s) for _, s in shapes)
    base = torch.randn(largest + 31 * len(shapes), generator=torch.Generator().manual_seed(0))
    state = {
        name: base[31 * i : 31 * i + math.prod(shape)].view(shape)
        for i, (name, shape) in enumerate(shapes)
    }
    model = load_guided_diffusion_checkpoint(state)
    assert not model.training
    params = dict(model.named_parameters())
    assert list(params) == [name for name, _ in shapes]
    for name, tensor in state.items():
        assert params[name].dtype == torch.float32, name
        assert params[name].device.type == "cpu", name
        assert params[name].data_ptr() != tensor.data_ptr(), name
        assert torch.equal(params[name], tensor), name
    del model, params


def test_loads_tiny_checkpoint_from_disk_with_weights_only(tmp_path, monkeypatch) -> None:
    state = _random_state(TINY, seed=3)
    path = tmp_path / "adm_tiny.pt"
    torch.save(state, path)
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    model = load_guided_diffusion_checkpoint(str(path), map_location="cpu", **TINY)
    assert len(calls) == 1
    assert calls[0]["weights_only"] is True
    assert calls[0]["map_location"] == "cpu"
    assert not model.training
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in model.parameters())
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    assert isinstance(load_guided_diffusion_checkpoint(path, **TINY), ADMUNet)


@pytest.fixture(scope="module")
def tiny_model() -> ADMUNet:
    """Shared tiny model with random weights; tests must not modify it."""
    return _tiny()


@pytest.fixture(scope="module")
def tiny_output(tiny_model: ADMUNet) -> torch.Tensor:
    with torch.no_grad():
        return tiny_model(*_inputs())


def test_tiny_forward_backward_learned_sigma(tiny_model: ADMUNet) -> None:
    x, t = _inputs()
    x.requires_grad_(True)
    out = tiny_model(x, t)
    assert out.shape == (2, 6, 16, 16)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    tiny_model.zero_grad(set_to_none=True)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in tiny_model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert tiny_model.out[-1].weight.grad.abs().sum() > 0
    tiny_model.zero_grad(set_to_none=True)


def test_output_depends_on_timestep_and_accepts_float_or_scalar_steps(
    tiny_model: ADMUNet,
) -> None:
    x = _inputs()[0][:1].expand(2, -1, -1, -1)
    with torch.no_grad():
        out = tiny_model(x, torch.tensor([10, 900]))
        as_float = tiny_model(x, torch.tensor([10.0, 900.0]))
        as_scalar = tiny_model(x[:1], 10)
    assert (out[0] - out[1]).abs().mean() > 1e-3 * out.abs().mean()
    torch.testing.assert_close(as_float, out)
    torch.testing.assert_close(as_scalar, out[:1])


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_splits_qkv_in_the_configured_order(tiny_model: ADMUNet, new_order: bool) -> None:
    """Legacy order (the released checkpoints): rows of qkv are [q_h; k_h; v_h] per head."""
    block = copy.deepcopy(tiny_model.middle_block[1])
    block.use_new_attention_order = new_order
    x = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        flat = x.reshape(2, 64, 16)
        qkv = block.qkv(block.norm(flat))
        heads, d = block.num_heads, 64 // block.num_heads
        assert heads == 4
        outs = []
        for head in range(heads):
            if new_order:
                q, k, v = (qkv[:, c * 64 + head * d :][:, :d] for c in range(3))
            else:
                rows = qkv[:, head * 3 * d : (head + 1) * 3 * d]
                q, k, v = rows[:, :d], rows[:, d : 2 * d], rows[:, 2 * d :]
            weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(d), dim=-1)
            outs.append(torch.einsum("bij,bcj->bci", weights, v))
        expected = (flat + block.proj_out(torch.cat(outs, dim=1))).reshape(x.shape)
        got = block(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        block.use_new_attention_order = not new_order
        assert not torch.allclose(block(x), got, atol=1e-4)


def test_bf16_compute_keeps_norms_fp32_and_matches_fp32(tiny_output: torch.Tensor) -> None:
    model = load_guided_diffusion_checkpoint(_random_state(TINY), dtype=torch.bfloat16, **TINY)
    assert model.compute_dtype == torch.bfloat16
    assert model.input_blocks[1][0].in_layers[2].weight.dtype == torch.bfloat16
    assert model.middle_block[1].qkv.weight.dtype == torch.bfloat16
    assert model.middle_block[1].norm.weight.dtype == torch.float32
    assert model.time_embed[0].weight.dtype == torch.float32
    assert model.out[-1].weight.dtype == torch.float32
    with torch.no_grad():
        out = model(*_inputs())
    assert out.dtype == torch.float32
    rel = (out - tiny_output).norm() / tiny_output.norm()
    assert 0 < rel < 0.05
    model.set_compute_dtype(torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="compute dtype"):
        model.set_compute_dtype(torch.int8)
    with torch.device("meta"):
        built = ADMUNet(**TINY, dtype=torch.float16)
    assert built.compute_dtype == torch.float16
    assert built.output_blocks[0][0].skip_connection.weight.dtype == torch.float16
    assert built.output_blocks[0][0].emb_layers[1].weight.dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model: ADMUNet) -> None:
    checkpointed = _tiny(use_checkpoint=True).train()
    x, t = _inputs()
    grads = []
    for model in (tiny_model, checkpointed):
        xi = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(xi, t).square().mean(), xi)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_conv_resampling_variant_runs() -> None:
    model = _tiny(resblock_updown=False, use_scale_shift_norm=False)
    assert "input_blocks.2.0.op.weight" in model.state_dict()
    assert any(".conv.weight" in name for name in model.state_dict())
    x, t = _inputs()
    with torch.no_grad():
        assert model(x, t).shape == (2, 6, 16, 16)


def test_invalid_configs_and_inputs_are_rejected(tiny_model: ADMUNet) -> None:
    with pytest.raises(ValueError, match="attention_resolutions"):
        ADMUNet(**{**TINY, "attention_resolutions": (5,)})
    with pytest.raises(ValueError, match="multiples of 32"):
        ADMUNet(**{**TINY, "model_channels": 24})
    model = tiny_model
    with pytest.raises(ValueError, match="expected x"):
        model(torch.zeros(1, 1, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.zeros(1, 3, 15, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="timesteps"):
        model(torch.zeros(2, 3, 16, 16), torch.tensor([1, 2, 3]))


def test_missing_file_raises_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_guided_diffusion_checkpoint(tmp_path / "absent.pt", **TINY)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_raises_value_error(tmp_path, damage: str) -> None:
    path = tmp_path / "adm.pt"
    torch.save(_random_state(TINY), path)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 64, "empty": b""}[
            damage
        ]
    )
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_guided_diffusion_checkpoint(path, **TINY)


def test_pickled_module_is_refused_by_weights_only(tmp_path) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match=r"weights_only=True.*torch\.nn\.modules\.linear\.Linear"):
        load_guided_diffusion_checkpoint(path, **TINY)


def test_non_state_dict_contents_are_named(tmp_path) -> None:
    state = _random_state(TINY)
    path = tmp_path / "list.pt"
    torch.save(list(state.values()), path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_guided_diffusion_checkpoint(path, **TINY)
    with pytest.raises(ValueError, match=r"\['state_dict'\] entry"):
        load_guided_diffusion_checkpoint({"state_dict": state, "step": 1}, **TINY)
    with pytest.raises(TypeError, match="path or a state dict"):
        load_guided_diffusion_checkpoint(42, **TINY)


def test_missing_and_unexpected_keys_are_listed() -> None:
    state = _random_state(TINY)
    del state["out.2.bias"]
    state["label_emb.weight"] = torch.zeros(10, 128)
    with pytest.raises(ValueError, match=r"1 missing keys: 'out\.2\.bias'") as info:
        load_guided_diffusion_checkpoint(state, **TINY)
    assert "1 unexpected keys: 'label_emb.weight'" in str(info.value)
    prefixed = {f"module.{k}": v for k, v in _random_state(TINY).items()}
    with pytest.raises(ValueError, match="prefix 'module.'"):
        load_guided_diffusion_checkpoint(prefixed, **TINY)


def test_shape_mismatch_names_the_key(tmp_path) -> None:
    state = _random_state(TINY)
    state["middle_block.1.qkv.weight"] = torch.zeros(192, 64, 3)
    with pytest.raises(ValueError, match=r"shape mismatch for 'middle_block\.1\.qkv\.weight'"):
        load_guided_diffusion_checkpoint(state, **TINY)
    path = tmp_path / "tiny.pt"
    torch.save(_random_state(TINY), path)
    with pytest.raises(ValueError, match="shape mismatch for 'time_embed.0.weight'"):
        load_guided_diffusion_checkpoint(path, **{**TINY, "model_channels": 64})
