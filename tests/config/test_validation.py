"""Numeric parameters are checked once and clearly (art_ssni.validation.check_number): the
library's constructors refuse non-finite and fractional values, naming the parameter."""

import math

import pytest

from art_ssni import DiffPure, EPSNorm
from art_ssni.noise import SSNILinear, SSNISigmoid
from art_ssni.purification import GDMP, GNS
from art_ssni.validation import check_number


def test_api_refuses_non_finite_and_fractional_parameters(diffusion, stats):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    with pytest.raises(ValueError, match="bias"):
        SSNISigmoid(eps_norm, stats, 10, float("nan"), tau=1.0)
    with pytest.raises(ValueError, match="tau"):
        SSNISigmoid(eps_norm, stats, 10, 0.0, tau=float("inf"))
    with pytest.raises(ValueError, match="t_star"):
        SSNILinear(eps_norm, stats, 10**9)
    with pytest.raises(ValueError, match="guidance_scale"):
        GDMP(diffusion, guidance="mse", guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="whole number"):
        DiffPure(diffusion, t_star=40.7)
    with pytest.raises(ValueError, match="whole number"):
        DiffPure(diffusion, t_star=40, steps=4.5)
    with pytest.raises(ValueError, match="votes"):
        GNS(diffusion, votes=float("nan"))
    with pytest.raises(ValueError, match="num_levels"):
        EPSNorm(diffusion, num_levels=2.5)


def test_check_number_accepts_valid_values():
    assert check_number(40.0, "t", low=1, integer=True) == 40
    assert isinstance(check_number(40.0, "t", low=1, integer=True), int)
    assert check_number(0.5, "w", low=0.0, low_open=True) == 0.5
    with pytest.raises(ValueError, match=r"w must lie in \(0.0, inf\]"):
        check_number(0.0, "w", low=0.0, low_open=True)
    with pytest.raises(ValueError, match="must be a number"):
        check_number(True, "flag")


def test_number_helper_names_nan():
    with pytest.raises(ValueError, match="finite"):
        check_number(math.nan, "bias")
