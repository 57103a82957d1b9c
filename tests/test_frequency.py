"""Frequency views: masks, HFC/LFC filters, energy fractions, radial spectra."""
from __future__ import annotations

import math

import pytest
import torch

from advcl_lite.frequency import (HighPass, LowPass, apply_mask, band_mask, band_pass, energy_fraction,
                                  frequency_radius, high_pass, low_pass, radial_mask, radial_power_spectrum,
                                  scaled_radius)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
    ["mps"] if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else [])


def rand_images(n=4, c=3, h=32, w=32, dtype=torch.float32, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def fourier_mode(size: int, u: int, v: int) -> torch.Tensor:
    """cos(2 pi (u i + v j) / size) on a (1, 1, size, size) grid: all its power at radius sqrt(u^2 + v^2)."""
    i = torch.arange(size, dtype=torch.float64)
    return torch.cos(2 * math.pi * (u * i[:, None] + v * i[None, :]) / size)[None, None]


# --------------------------------------------------------------------------- masks

def test_advcl_radius_8_removes_193_of_1024_bins():
    m = radial_mask(32, 8)
    assert m.shape == (32, 32)
    assert int(m.sum()) == 193
    assert m[0, 0] == 1, "DC is inside the disk (so the HFC removes it)"
    assert scaled_radius(32) == 8 and scaled_radius(96) == 24 and scaled_radius(64, 4) == 8


@pytest.mark.parametrize("size", [32, 31, (32, 24), (17, 20)])
def test_masks_are_symmetric_under_negating_the_frequency(size):
    """M(-u, -v) = M(u, v) is what makes the filtered image real."""
    for m in (radial_mask(size, 5.5), band_mask(size, 3, 9)):
        # index k <-> frequency k; index (-k mod n) <-> frequency -k
        mirrored = torch.roll(torch.flip(m, (0, 1)), shifts=(1, 1), dims=(0, 1))
        torch.testing.assert_close(mirrored, m, rtol=0, atol=0)
    x = rand_images(2, 3, *((size, size) if isinstance(size, int) else size), dtype=torch.float64)
    spec = torch.fft.fft2(x) * (1 - radial_mask(tuple(x.shape[-2:]), 5.5, dtype=torch.float64))
    assert torch.fft.ifft2(spec).imag.abs().max() < 1e-12, "a symmetric mask keeps the inverse FFT real"


def test_centered_mask_is_the_fftshift_with_dc_in_the_middle():
    m = radial_mask(32, 8)
    c = radial_mask(32, 8, centered=True)
    torch.testing.assert_close(c, torch.fft.fftshift(m))
    assert c[16, 16] == 1 and c[0, 0] == 0
    d = frequency_radius(32)
    assert d[0, 0] == 0 and d[0, 1] == 1 and d[0, 31] == 1 and torch.isclose(d[16, 16], torch.tensor(16 * 2 ** 0.5))


def test_band_masks_partition_the_spectrum():
    total = band_mask(32, 0, 4) + band_mask(32, 4, 8) + band_mask(32, 8, 100)
    assert torch.equal(total, torch.ones(32, 32))
    torch.testing.assert_close(band_mask(32, 0, 8), radial_mask(32, 8))


# --------------------------------------------------------------------------- HFC / LFC

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_hfc_plus_lfc_reconstructs_the_image(dtype, tol, real):
    for x in (rand_images(dtype=dtype), real.to(dtype)):
        for r in (1, 4, 8, 12.5):
            h, lo = high_pass(x, r), low_pass(x, r)
            assert h.dtype == dtype and lo.dtype == dtype and h.shape == x.shape
            assert (h + lo - x).abs().max() < tol


def test_hfc_is_zero_mean_per_channel_and_unclipped(real):
    h = high_pass(real, 8)
    assert h.mean(dim=(-2, -1)).abs().max() < 1e-6
    assert h.min() < 0, "the HFC view is signed: it is not an image in [0, 1]"
    lo = low_pass(real, 8)
    torch.testing.assert_close(lo.mean(dim=(-2, -1)), real.mean(dim=(-2, -1)), rtol=0, atol=1e-6)
    # the classes are thin wrappers
    torch.testing.assert_close(HighPass(8)(real), h)
    torch.testing.assert_close(LowPass(8)(real), lo)
    assert repr(HighPass(8)) == "HighPass(radius=8)" and repr(LowPass(2.5)) == "LowPass(radius=2.5)"


def test_radius_edge_cases():
    x = rand_images(dtype=torch.float64)
    # r = 0: the disk is empty; the HFC is the image, the LFC is zero
    assert int(radial_mask(32, 0).sum()) == 0
    torch.testing.assert_close(high_pass(x, 0), x)
    assert low_pass(x, 0).abs().max() < 1e-12
    # r = half the size: the inscribed disk, not the whole spectrum (the corners remain)
    assert int(radial_mask(32, 16).sum()) == 793
    assert high_pass(x, 16).abs().max() > 1e-3
    # beyond the farthest bin (16 * sqrt 2 ~ 22.6) the LFC is the image and the HFC is zero
    assert int(radial_mask(32, 22.7).sum()) == 1024
    torch.testing.assert_close(low_pass(x, 23), x)
    assert high_pass(x, 1e6).abs().max() < 1e-12


def test_batched_equals_per_image_and_3d_input():
    x = rand_images(5)
    h = high_pass(x, 8)
    for i in range(len(x)):
        torch.testing.assert_close(high_pass(x[i], 8), h[i], rtol=0, atol=1e-6)
    assert high_pass(x[0], 8).shape == (3, 32, 32)


def test_non_square_and_odd_sizes_reconstruct():
    for shape in ((2, 3, 32, 24), (2, 1, 31, 31), (1, 3, 96, 96)):
        x = torch.rand(*shape, dtype=torch.float64)
        torch.testing.assert_close(high_pass(x, 6) + low_pass(x, 6), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_keep_their_dtype(dtype):
    x = rand_images(2)
    h = high_pass(x.to(dtype), 8)
    assert h.dtype == dtype
    torch.testing.assert_close(h.float(), high_pass(x.to(dtype).float(), 8), rtol=0, atol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_filters_run_on_every_available_device(device):
    x = rand_images(3)
    ref_h, ref_ef = high_pass(x, 8), energy_fraction(x, 8)
    xd = x.to(device)
    h = high_pass(xd, 8)
    assert h.device.type == device
    torch.testing.assert_close(h.cpu(), ref_h, rtol=0, atol=1e-5)
    torch.testing.assert_close(low_pass(xd, 8).cpu() + h.cpu(), x, rtol=0, atol=1e-5)
    if device != "mps":   # MPS has no float64
        torch.testing.assert_close(energy_fraction(xd, 8).cpu(), ref_ef)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(N, C, H, W\).*\(32, 32\)"):
        high_pass(torch.rand(32, 32), 8)
    with pytest.raises(ValueError, match="shape"):
        low_pass(torch.rand(1, 1, 3, 32, 32), 8)
    with pytest.raises(TypeError, match="torch.Tensor"):
        high_pass([[0.0]], 8)
    with pytest.raises(ValueError, match=r"r=-1.*>= 0"):
        high_pass(torch.rand(3, 8, 8), -1)
    with pytest.raises(ValueError, match=">= 0"):
        HighPass(-2)
    with pytest.raises(ValueError, match="r_in <= r_out"):
        band_mask(32, 8, 4)
    with pytest.raises(ValueError, match="r_in"):
        band_pass(torch.rand(3, 8, 8), -1, 4)


def test_apply_mask_with_an_explicit_mask():
    x = rand_images(2, dtype=torch.float64)
    torch.testing.assert_close(apply_mask(x, torch.ones(32, 32)), x)
    torch.testing.assert_close(apply_mask(x, radial_mask(32, 8)), low_pass(x, 8))


# --------------------------------------------------------------------------- energy and spectra

def test_single_fourier_mode_sits_at_its_radius():
    x = fourier_mode(32, 3, 4)                 # radius 5
    radii, power = radial_power_spectrum(x)
    assert int(radii[power.argmax()]) == 5
    assert power[5] > 0.999 and abs(float(power.sum()) - 1) < 1e-12
    assert len(radii) == round(16 * 2 ** 0.5) + 1 == len(power) == 24   # bins are rounded distances
    # energy_fraction: the mode at distance exactly 5 is outside the open disk of radius 5, inside 5.01
    assert float(energy_fraction(x, 5)) < 1e-12
    assert abs(float(energy_fraction(x, 5.01)) - 1) < 1e-12
    # and the filters put it entirely on one side
    torch.testing.assert_close(high_pass(x, 5), x)
    torch.testing.assert_close(low_pass(x, 5.01), x)


def test_unnormalised_spectrum_and_3d_input():
    x = 2 * fourier_mode(16, 0, 2)[0]          # (1, 16, 16), amplitude 2
    radii, power = radial_power_spectrum(x, normalize=False)
    # |FFT|^2 of 2 cos at (0, +-2): two bins of (2 * 256 / 2)^2 = 65536, ring 2 has 12 bins
    ring = (torch.round(frequency_radius(16, dtype=torch.float64)) == 2).sum()
    torch.testing.assert_close(power[2], torch.tensor(2 * 256.0 ** 2 / float(ring), dtype=torch.float64))


def test_natural_images_concentrate_energy_at_low_frequencies(real):
    ef = energy_fraction(real, 8)
    assert ef.shape == (16,) and ((ef >= 0) & (ef <= 1)).all()
    # the disk holds 192 of the 1023 non-DC bins (18.8 %); real images put far more energy there
    assert ef.mean() > 0.6
    fracs = torch.stack([energy_fraction(real, r) for r in (0, 2, 4, 8, 16, 23)])
    assert (fracs[1:] >= fracs[:-1]).all() and fracs[0].max() == 0 and (fracs[-1] > 1 - 1e-12).all()
    # white noise spreads energy evenly: its share tracks the share of bins
    noise = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)) - 0.5
    assert abs(float(energy_fraction(noise, 8).mean()) - 192 / 1023) < 0.02
    # the image spectrum falls with the radius
    _, p = radial_power_spectrum(real)
    assert p[1] > p[4] > p[8] > p[16]
