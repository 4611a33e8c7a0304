"""NCSN++ (score_sde DDPM++ deep, continuous VP) architecture and checkpoint loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from art_ssni.diffusion.networks import NCSNpp, load_score_sde_checkpoint

from tiny import ROOT

REFERENCE_DIR = Path(os.environ.get("ART_SSNI_REFERENCE_DIR", ROOT.parent / "shared/reference"))
MANIFEST_PATH = REFERENCE_DIR / "score_sde_ncsnpp_cifar10.json"

TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8)


@pytest.fixture(scope="module")
def manifest() -> dict:
    if not MANIFEST_PATH.is_file():
        pytest.skip(f"score_sde manifest not found at {MANIFEST_PATH} (set ART_SSNI_REFERENCE_DIR)")
    return json.loads(MANIFEST_PATH.read_text())


def _layout_checkpoint(named_shapes, buffers, *, raw_offset: float, ema_offset: float) -> dict:
    """A checkpoint in score_sde's layout whose i-th tensor is filled with ``offset + i``.

    Tensors are broadcast views of one scalar, so the full-size layout costs no memory.
    """

    def filled(shape, value: float) -> torch.Tensor:
        return torch.tensor(value).expand(*shape)

    state = {
        f"module.{name}": filled(shape, raw_offset + i)
        for i, (name, shape) in enumerate(named_shapes)
    }
    for name, shape in buffers:
        state[f"module.{name}"] = filled(shape, 0.0)
    shadow = [filled(shape, ema_offset + i) for i, (_, shape) in enumerate(named_shapes)]
    return {
        "model": state,
        "ema": {"decay": 0.9999, "num_updates": 1234, "shadow_params": shadow},
        "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "params": [0, 1]}]},
        "step": 1300000,
    }


def _assert_filled(model: torch.nn.Module, offset: float, *, exhaustive: bool = True) -> None:
    for i, (name, param) in enumerate(model.named_parameters()):
        values = param.detach().reshape(-1)
        if not exhaustive:
            values = values[[0, -1]]
        assert torch.all(values == offset + i), name


def _tiny_shapes() -> tuple[list, list]:
    model = NCSNpp(**TINY)
    params = [(n, list(p.shape)) for n, p in model.named_parameters()]
    buffers = [(n, list(b.shape)) for n, b in model.named_buffers()]
    return params, buffers


def test_full_model_matches_manifest(manifest: dict) -> None:
    model = NCSNpp()
    assert [[n, list(p.shape)] for n, p in model.named_parameters()] == manifest[
        "parameters_in_order"
    ]
    assert [[n, list(b.shape)] for n, b in model.named_buffers()] == manifest["buffers"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"] == 106632579


def test_full_model_flops_match_manifest(manifest: dict) -> None:
    with torch.device("meta"):
        model = NCSNpp().eval()
        x = torch.empty(1, 3, 32, 32)
        labels = torch.full((1,), 500.0)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = model(x, labels)
    assert out.shape == x.shape
    assert counter.get_total_flops() == manifest["forward_flops_per_image"]


@pytest.mark.parametrize("use_ema", [True, False])
def test_full_size_layout_loads_in_memory(manifest: dict, use_ema: bool) -> None:
    ckpt = _layout_checkpoint(
        manifest["parameters_in_order"], manifest["buffers"], raw_offset=1.0, ema_offset=-5000.0
    )
    model = load_score_sde_checkpoint(ckpt, use_ema=use_ema)
    assert not model.training
    _assert_filled(model, -5000.0 if use_ema else 1.0, exhaustive=False)


def test_tiny_checkpoint_from_disk_uses_weights_only(tmp_path: Path, monkeypatch) -> None:
    params, buffers = _tiny_shapes()
    path = tmp_path / "checkpoint_8.pth"
    torch.save(_layout_checkpoint(params, buffers, raw_offset=3.0, ema_offset=-100.0), path)

    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    ema_model = load_score_sde_checkpoint(path, **TINY)
    raw_model = load_score_sde_checkpoint(str(path), use_ema=False, **TINY)

    assert len(calls) == 2
    assert all(kw.get("weights_only") is True for kw in calls)
    assert not ema_model.training and not raw_model.training
    _assert_filled(ema_model, -100.0)
    _assert_filled(raw_model, 3.0)


def test_tiny_forward_backward() -> None:
    torch.manual_seed(0)
    model = NCSNpp(init_scale=1.0, **TINY)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    labels = torch.tensor([10.0, 900.0])
    out = model(x, labels)
    assert out.shape == x.shape
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    model.eval()
    with torch.no_grad():
        a = model(x, labels)
        b = model(x, torch.tensor([500.0, 20.0]))
        single = model(x[1:], labels[1:])
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a[1:], single, rtol=1e-4, atol=1e-5)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_score_sde_checkpoint(tmp_path / "nope.pth", **TINY)


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    params, buffers = _tiny_shapes()
    good = tmp_path / "good.pth"
    torch.save(_layout_checkpoint(params, buffers, raw_offset=0.0, ema_offset=1.0), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match="could not read score_sde checkpoint"):
            load_score_sde_checkpoint(path, **TINY)


class _Arbitrary:
    pass


def test_refuses_non_weights_pickle(tmp_path: Path) -> None:
    path = tmp_path / "object.pth"
    torch.save({"ema": _Arbitrary()}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load_score_sde_checkpoint(path, **TINY)


def test_bad_layouts(tmp_path: Path) -> None:
    params, buffers = _tiny_shapes()

    def fresh() -> dict:
        return _layout_checkpoint(params, buffers, raw_offset=0.0, ema_offset=1.0)

    with pytest.raises(ValueError, match="must be a dict"):
        load_score_sde_checkpoint([1, 2], **TINY)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="must be a dict"):
        load_score_sde_checkpoint(tmp_path / "list.pth", **TINY)
    ckpt = fresh()
    del ckpt["ema"]
    with pytest.raises(ValueError, match="no 'ema' entry"):
        load_score_sde_checkpoint(ckpt, **TINY)

    ckpt = fresh()
    ckpt["ema"]["shadow_params"].pop()
    with pytest.raises(ValueError, match=rf"has {len(params) - 1} tensors.*{len(params)} param"):
        load_score_sde_checkpoint(ckpt, **TINY)

    ckpt = fresh()
    ckpt["ema"]["shadow_params"][4] = torch.zeros(7)
    with pytest.raises(ValueError, match=rf"\[4\] \({params[4][0]}\) should have shape"):
        load_score_sde_checkpoint(ckpt, **TINY)

    ckpt = fresh()
    ckpt["model"]["module.all_modules.2.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"all_modules\.2\.weight\] should have shape"):
        load_score_sde_checkpoint(ckpt, use_ema=False, **TINY)

    ckpt = fresh()
    del ckpt["model"]["module.sigmas"]
    ckpt["model"]["module.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['sigmas'\].*unexpected keys \['extra'\]"):
        load_score_sde_checkpoint(ckpt, use_ema=False, **TINY)

    with pytest.raises(ValueError, match="should have shape"):
        load_score_sde_checkpoint(fresh(), **{**TINY, "nf": 32})
