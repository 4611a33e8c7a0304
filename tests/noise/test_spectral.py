"""SpectralNoise (art_ssni.noise.spectral), MANI-Pure's noise shaped by the inverse band
magnitudes of the image: weights, unit RMS, the spatial mode, empty bands and refusals."""

import pytest
import torch

from art_ssni import SpectralNoise
from art_ssni.noise.spectral import radial_bands


def _smooth_images(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 16)
    base = ramp[None, :] * ramp[:, None]
    return (base + 0.02 * torch.randn(2, 3, 16, 16, generator=g)).clamp(0, 1)


def test_spectral_weights_are_inverse_band_magnitudes():
    x = _smooth_images()
    spectral = SpectralNoise(bands=4, gamma=1.8)
    weight = spectral.weights(x)
    band = radial_bands(16, 16, 4)
    amplitude = torch.fft.fft2(x.double()).abs()
    for b in range(4):
        where = band == b
        m = amplitude[..., where].mean(-1)
        expected = 1 / (m**1.8 + 1e-8)
        torch.testing.assert_close(
            weight[..., where], expected[..., None].expand_as(weight[..., where])
        )
    assert band[0, 0] == 0 and band[8, 8] == 3  # DC, then the corner frequency


def test_shaped_noise_has_unit_rms_and_more_power_where_the_spectrum_is_weak():
    x = _smooth_images()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    spectral = SpectralNoise(bands=4)
    out = spectral(x, z)
    torch.testing.assert_close(out.pow(2).mean((-2, -1)), torch.ones(2, 3))
    gain = torch.fft.fft2(out.double()) / torch.fft.fft2(z.double())
    weight = spectral.weights(x)
    ratio = gain.real / weight  # one constant per image and channel: the RMS scale
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio), rtol=1e-3, atol=0)
    torch.testing.assert_close(gain.imag, torch.zeros_like(gain.imag), atol=1e-4, rtol=0)
    band = radial_bands(16, 16, 4)
    power = torch.fft.fft2(out).abs().pow(2)
    assert float(power[..., band == 3].mean()) > 100 * float(power[..., band == 0].mean())


def test_spatial_mode_is_a_pixel_map_times_z():
    x = _smooth_images()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    spectral = SpectralNoise(mode="spatial")
    out = spectral(x, z)
    torch.testing.assert_close(out.pow(2).mean((-2, -1)), torch.ones(2, 3))
    pixel_map = torch.fft.ifft2(spectral.weights(x) * torch.fft.fft2(x.double())).abs()
    ratio = out.double() / (pixel_map * z.double())
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio), rtol=1e-3, atol=0)


def test_empty_bands_give_no_nan():
    x = torch.rand(2, 1, 2, 2)
    out = SpectralNoise(bands=8)(x, torch.randn(2, 1, 2, 2))
    assert bool(torch.isfinite(out).all())
    assert torch.bincount(radial_bands(2, 2, 8).flatten(), minlength=8).eq(0).sum() > 0


def test_spectral_bad_inputs():
    for kwargs, message in [
        ({"bands": 0}, "bands"),
        ({"gamma": -1.0}, "gamma"),
        ({"mode": "pixel"}, "mode"),
        ({"eps0": 0.0}, "eps0"),
    ]:
        with pytest.raises(ValueError, match=message):
            SpectralNoise(**kwargs)
    with pytest.raises(ValueError, match="shape"):
        SpectralNoise()(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 4))


def test_spectral_refuses_bad_images_draws_and_eps0():
    x = _smooth_images()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    broken = z.clone()
    broken[0, 0, 0, 0] = float("nan")
    for args, message in [
        ((x * 255, z), r"\[-1, 1\].*\[0, 255\]"),
        ((x.clone().fill_(float("inf")), z), "x must be a finite"),
        ((x, broken), "z must be a finite"),
        ((x[0], z[0]), "4-D|B, C, H, W"),
    ]:
        with pytest.raises(ValueError, match=message):
            SpectralNoise()(*args)
    for eps0 in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="eps0"):
            SpectralNoise(eps0=eps0)
    assert torch.isfinite(SpectralNoise()(2 * x - 1, z)).all()  # the engine's [-1, 1] scale
