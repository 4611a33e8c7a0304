"""Rows per network call when SSNI's EPS measure batches its levels: sized to the device and
image (64 rows of 32x32 on a CPU), recorded in the configuration, used by the pipeline, and
without effect on the EPS norms."""

from __future__ import annotations

import pytest
import torch

from art_ssni import EPSNorm
from art_ssni.config import Overrides, resolve
from art_ssni.hardware import CPU_CALL_PIXELS, DEVICE_CALL_ROWS, pick_rows


def test_rows_fill_the_cpu_call_size_for_each_image_size():
    assert pick_rows(None, "cpu", 32) == CPU_CALL_PIXELS // 32**2 == 64
    assert pick_rows(None, "cpu", 8) == 1024
    assert pick_rows(None, "cpu", 256) == 1
    assert pick_rows(None, "meta", 32) == DEVICE_CALL_ROWS
    assert pick_rows(16, "cpu", 32) == 16


def test_the_resolved_configuration_records_its_rows():
    assert resolve("cifar10-embedded", Overrides(device="cpu")).compute.network_rows == 64
    assert resolve("digits", Overrides(device="cpu")).compute.network_rows == 1024
    given = resolve("cifar10-linf", Overrides(device="cpu", network_rows=8))
    assert given.compute.network_rows == 8
    with pytest.raises(ValueError, match="network_rows"):
        resolve("digits", Overrides(network_rows=0))


def test_the_pipeline_builds_its_eps_measure_with_the_configured_rows():
    from art_ssni.pipeline import build_defence, prepare

    config, setup = prepare("cifar10-embedded", device="cpu", network_rows=24)
    defended = build_defence(config, setup, "ssni-n")
    assert defended.policy.eps_norm.batch_size == 24


def test_eps_norms_do_not_depend_on_the_rows_per_call(embedded_cifar10_diffusion):
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    whole = EPSNorm(embedded_cifar10_diffusion, 20, batch_size=1024)(images, 3)
    chunked = EPSNorm(embedded_cifar10_diffusion, 20, batch_size=64)(images, 3)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=0)
