"""Perturbation spectra, Fourier heat maps and accuracy under band-limited attacks (advcl_lite.spectra)."""

import pytest
import torch

from advcl_lite import spectra as S
from advcl_lite.attacks import BandLimitedPGD
from advcl_lite.frequency import radial_power_spectrum
from helpers import images_with_saturated_pixels, linear_model_on, tiny_convnet


# --------------------------------------------------------------------------- test images

def test_class_interleaved_prefixes_are_class_balanced():
    from advcl_lite.data import load_sample
    ds = load_sample("test")                                     # stored sorted by class
    x, y = S.class_interleaved(ds, 40, seed=3)
    assert x.shape == (40, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert torch.bincount(y[:20], minlength=10).tolist() == [2] * 10
    assert torch.bincount(y, minlength=10).tolist() == [4] * 10
    x2, y2 = S.class_interleaved(ds, 40, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)             # seeded
    i = int((ds.images.flatten(1).float().div(255) == x[0].flatten()).all(1).nonzero()[0])
    assert ds.labels[i] == y[0]                                  # images keep their labels


# --------------------------------------------------------------------------- Fourier basis

@pytest.mark.parametrize("i,j", [(0, 0), (3, 4), (-5, 2), (16, 0), (16, 16), (7, -13)])
def test_fourier_basis_is_real_has_the_norm_and_one_conjugate_pair(i, j):
    u = S.fourier_basis(32, i, j, norm=4.0)
    assert u.shape == (32, 32) and not u.is_complex()
    assert u.norm().item() == pytest.approx(4.0, rel=1e-5)
    spec = torch.fft.fft2(u.double()).abs()
    support = {tuple(t) for t in (spec > 1e-6 * spec.max()).nonzero().tolist()}
    assert support == {(i % 32, j % 32), ((-i) % 32, (-j) % 32)}


def test_fourier_basis_channels_and_rectangular_size():
    u = S.fourier_basis((16, 24), 2, 5, norm=2.0, channels=3)
    assert u.shape == (3, 16, 24)
    assert torch.allclose(u.flatten(1).norm(dim=1), torch.full((3,), 2.0))
    with pytest.raises(ValueError):
        S.fourier_basis(32, 1, 1, norm=-1.0)


def test_heat_map_frequencies_one_per_conjugate_pair():
    f = S.heat_map_frequencies(32)
    assert len(f) == (32 * 32 + 4) // 2            # 4 self-conjugate bins (DC and the Nyquist ones)
    keys = {(i % 32, j % 32) for i, j in f.tolist()}
    mirrors = {((-i) % 32, (-j) % 32) for i, j in f.tolist()}
    assert len(keys) == len(f) and keys | mirrors == {(a, b) for a in range(32) for b in range(32)}
    coarse = S.heat_map_frequencies(32, max_freq=8, stride=4)
    assert (coarse % 4 == 0).all() and coarse.abs().max() <= 8 and [0, 0] in coarse.tolist()


# --------------------------------------------------------------------------- perturbation spectra

def test_spectrum_of_a_single_frequency_peaks_at_its_radius():
    r, p = radial_power_spectrum(S.fourier_basis(32, 3, 4, channels=3))
    assert int(p.argmax()) == 5 and p[5].item() == pytest.approx(1.0)


def test_pgd_perturbation_spectrum_peaks_at_the_models_frequency():
    # against <w, x> with w a single frequency at radius 5, PGD's delta is eps * sign(w): a square
    # wave whose fundamental (radius 5) dominates its odd harmonics (radius 15, 25 -> aliased)
    m, x, y = linear_model_on(3, 4)
    radii, power = S.perturbation_spectrum(m, x, y, eps=8 / 255, alpha=2 / 255, steps=10)
    assert int(power.argmax()) == 5 and power[5] > 0.5
    delta = S.pgd_perturbations(m, x, y, steps=10)
    assert delta.abs().max() <= 8 / 255 + 1e-6
    assert S.high_frequency_fraction(delta, 8.0) < 0.2          # the fundamental is below r = 8
    m2, x2, y2 = linear_model_on(9, 9)                          # radius 12.7, above r = 8
    assert S.high_frequency_fraction(S.pgd_perturbations(m2, x2, y2), 8.0) > 0.8


# --------------------------------------------------------------------------- Fourier heat map

def test_heat_map_of_a_linear_model_lights_up_only_its_frequency():
    m, x, y = linear_model_on(5, -9)
    heat = S.fourier_heat_map(m, x, y, norm=4.0, sign="image", progress=False)
    assert heat.shape == (32, 32) and not torch.isnan(heat).any()
    assert ((heat >= 0) & (heat <= 1)).all()
    lit = {tuple(t) for t in (heat > 0).nonzero().tolist()}
    assert lit == {(16 + 5, 16 - 9), (16 - 5, 16 + 9)}           # fftshift layout, DC at (16, 16)
    assert heat[21, 7] > 0.3                                     # norm 4 flips many small margins


def test_heat_map_conjugate_symmetry_range_and_stride():
    net = tiny_convnet()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 10
    heat = S.fourier_heat_map(net, x, y, norm=4.0, stride=4, progress=False)
    assert heat.shape == (32, 32)
    done = ~torch.isnan(heat)
    assert int(done.sum()) == 8 * 8                              # i, j in {-16, -12, ..., 12}
    assert ((heat[done] >= 0) & (heat[done] <= 1)).all()
    assert (heat[done] * 8 == (heat[done] * 8).round()).all()    # error counts out of 8 images
    mirror = torch.roll(heat.flip(0, 1), shifts=(1, 1), dims=(0, 1))   # entry of (-i, -j)
    assert torch.equal(torch.isnan(mirror), ~done) and torch.equal(mirror[done], heat[done])
    s = S.heat_map_summary(heat, 8.0)
    assert 0 <= s["low"] <= 1 and 0 <= s["high"] <= 1
    again = S.fourier_heat_map(net, x, y, norm=4.0, stride=4, progress=False)
    assert torch.equal(torch.isnan(again), ~done) and torch.equal(again[done], heat[done])  # seeded


# --------------------------------------------------------------------------- band-limited attacks


def test_band_attacks_on_a_high_frequency_classifier():
    # <w, delta> = 0 for delta in the low band, so a low-only attack cannot move a classifier that
    # reads a single high frequency (radius 12.7 > 8), while a high-only attack can
    m, x, y = linear_model_on(9, 9)
    recs = S.accuracy_under_band_attacks(m, x, y, [0.0, 8 / 255], radius=8, steps=10, progress=False)
    acc = {(r["band"], round(r["eps_255"])): r for r in recs}
    assert len(recs) == 6 and all(r["clean_accuracy"] == 1.0 for r in recs)
    assert all(acc[(b, 0)]["accuracy"] == 1.0 for b in S.BANDS)        # eps 0: clean accuracy
    assert acc[("low", 8)]["accuracy"] == 1.0
    assert acc[("high", 8)]["accuracy"] < 0.1
    assert acc[("full", 8)]["accuracy"] < 0.1
    assert acc[("low", 8)]["out_of_band"] < 1e-3 and acc[("full", 8)]["out_of_band"] == 0.0


def test_band_accuracy_never_exceeds_clean_accuracy():
    net = tiny_convnet()
    x = images_with_saturated_pixels(24)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::2] = (y[::2] + 1) % 10                                    # half the images wrong when clean
    recs = S.accuracy_under_band_attacks(net, x, y, [2 / 255, 8 / 255], radius=8, steps=3, batch_size=10,
                                         progress=False)
    assert recs[0]["clean_accuracy"] == pytest.approx(0.5)
    assert all(0 <= r["accuracy"] <= r["clean_accuracy"] for r in recs)
    assert {r["band"] for r in recs} == {"full", "low", "high"} and all(r["n"] == 24 for r in recs)


def test_bad_arguments_name_the_problem():
    net = tiny_convnet()
    x, y = torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="band"):
        BandLimitedPGD(net, band="middle")(x, y)
    with pytest.raises(ValueError, match="8/255"):
        S.accuracy_under_band_attacks(net, x, y, [8], progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        S.fourier_heat_map(net, x * 255, y, progress=False)
    with pytest.raises(ValueError, match="sign"):
        S.fourier_heat_map(net, x, y, sign="pixel", progress=False)
    assert "band='low'" in repr(BandLimitedPGD(net, band="low"))


# --------------------------------------------------------------------------- notebook 05

@pytest.mark.slow
def test_notebook_05_smoke(run_nb):
    rec = run_nb("05")
    encoders = {"SimCLR", "ACL", "AdvCL"}
    for name in ("spectra_clean_accuracy", "spectra_hf_fraction", "heat_map_mean_error", "heat_map_error_low",
                 "heat_map_error_high", "band_attack_accuracy"):
        assert set(rec[name]) == encoders, name
    for name in ("spectra_clean_accuracy", "spectra_hf_fraction", "heat_map_mean_error", "heat_map_error_low",
                 "heat_map_error_high"):
        assert all(0.0 <= v <= 1.0 for v in rec[name].values()), name
    # random sign noise spreads its energy evenly: 831 of the 1023 non-DC bins of 32x32 lie at d >= 8
    assert rec["spectra_hf_fraction_noise"] == pytest.approx(831 / 1023, abs=0.03)
    # natural images hold most of their energy below r = 8 (the premise of the LFC/HFC split)
    assert 0.0 < rec["image_hf_fraction"] < 0.5
    assert rec["band_attack_eps_255"] == 8
    for name, acc in rec["band_attack_accuracy"].items():
        assert set(acc) == {"full", "low", "high"}
        # accuracy counts clean-and-attacked-correct images, so it cannot exceed the clean accuracy
        clean = rec["band_attack_clean_accuracy"][name]
        assert all(0.0 <= v <= clean for v in acc.values())
    assert rec["band_attack_max_out_of_band"] < 1e-3
    assert set(rec["spectra_seconds"]) == {"classifiers", "spectra", "heat_maps", "band_attacks", "explorer"}
    # the last section runs the same analyses on a torchvision model (random weights, 64 px)
    assert set(rec["any_model_margins_median"]) == {"low", "mid", "high"}
    assert all(v > 0 for v in rec["any_model_margins_median"].values())


@pytest.mark.slow    # 23 s; notebook 05 on the shipped encoders also runs in the browser test
def test_notebook_05_pretrained_analyses_the_shipped_encoders(run_nb):
    rec = run_nb("05", encoders="pretrained")
    assert rec["encoders"] == "pretrained"
    assert set(rec["spectra_clean_accuracy"]) == {"SimCLR", "ACL", "AdvCL"}
    assert all(0.0 <= v <= 1.0 for v in rec["spectra_hf_fraction"].values())
