"""advcl_lite.viz: every figure and the notebook widget wrapper.

One section per submodule: core (generic helpers, the widget), clusters (notebook 03), results (04), spectra (05).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from advcl_lite import spectra as S
from advcl_lite.evaluate import accuracy_vs_eps
from advcl_lite.frequency import energy_fraction, high_pass, low_pass, radial_power_spectrum
from advcl_lite.clustering import extract_features
from advcl_lite.viz import (plot_accuracy_vs_eps, plot_band_accuracy, plot_cluster_grid, plot_cluster_sizes,
                            plot_embedding, plot_frequency_explorer, plot_heat_maps, plot_results)
from helpers import example_records, linear_model_on


@pytest.fixture
def plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    yield plt
    plt.close("all")


# --------------------------------------------------------------------------- core

def test_display_images_maps_signed_views_to_gray_zero():
    from advcl_lite.viz import display_images
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    d = display_images(x)
    assert d.shape == (2, 32, 32, 3) and d.dtype == np.float32
    np.testing.assert_allclose(d, x.permute(0, 2, 3, 1).numpy())
    h = high_pass(x, 8)
    dh = display_images(h)                                 # auto: signed
    assert 0 <= dh.min() and dh.max() <= 1
    zero = display_images(torch.zeros(1, 3, 4, 4), signed=True)
    assert np.all(zero == 0.5)
    one = display_images(torch.full((1, 1, 4, 4), -2.0), signed=True)
    assert one.shape == (1, 4, 4, 3) and np.all(one == 0.0)
    both = display_images(torch.stack([h[0], 10 * h[1]]), signed=True, scale="batch")
    assert np.abs(both[0] - 0.5).max() < np.abs(both[1] - 0.5).max(), "batch scale keeps sizes comparable"
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(C, H, W\)"):
        display_images(torch.rand(2, 5, 8, 8))


def test_frequency_figures(plt, real):
    from advcl_lite.viz import plot_frequency_views, plot_mask, plot_radial_spectra
    fig = plot_mask(32, 8)
    assert "193 of 1024 bins" in fig.axes[0].get_title()
    fig = plot_frequency_views(real, (2, 8), index=1)
    assert len(fig.axes) == 8
    titles = [a.get_title() for a in fig.axes]
    share = 100 * float(energy_fraction(real[1], 8))
    assert f"LFC: {share:.1f}% of energy" in titles and f"HFC: {100 - share:.1f}% of energy" in titles
    assert "mask r = 8 (193 bins)" in titles
    assert len(plot_frequency_views(real[0], 4).axes) == 4          # one radius: one row (the slider's figure)
    fig = plot_radial_spectra({"images": real, "LFC": low_pass(real, 8), "given": radial_power_spectrum(real)},
                              radius=8)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and [l.get_label() for l in ax.get_lines()[:3]] == ["images", "LFC", "given"]
    img, lfc, given = (l.get_ydata() for l in ax.get_lines()[:3])
    np.testing.assert_allclose(img, given)
    assert abs(np.nansum(img) - 1) < 1e-9 and len(img) == 23, "DC left out, normalised over the drawn radii"
    assert np.isnan(lfc[9:]).all() and not np.isnan(lfc[:7]).any(), "round-off beyond r is not drawn"


def test_image_grid_views_and_loss_curves(plt, real):
    from advcl_lite.viz import image_grid, plot_loss_curves, plot_views
    fig = image_grid(real[:6], ncol=3, titles=list("abcdef"), title="six")
    assert [t.get_text() for t in fig.axes[0].texts] == list("abcdef")
    with pytest.raises(ValueError, match="6 images but 2 titles"):
        image_grid(real[:6], titles=["a", "b"])
    fig = plot_views({"image": real[:4], "HFC": high_pass(real[:4], 8)}, n=3)
    assert [a.get_ylabel() for a in fig.axes] == ["image", "HFC"]
    hist = {"a": [{"epoch": 1, "loss": 5.0}, {"epoch": 2, "loss": 4.0, "loss_ps": 1.0}], "b": [{"epoch": 1, "loss": 6.0}]}
    fig = plot_loss_curves(hist, keys=("loss", "loss_ps"))
    loss_ax, ps_ax = fig.axes
    assert len(loss_ax.get_lines()) == 2 and list(loss_ax.get_lines()[0].get_ydata()) == [5.0, 4.0]
    assert len(ps_ax.get_lines()) == 1 and list(ps_ax.get_lines()[0].get_xdata()) == [2]


def test_adversarial_panel(plt, real):
    from advcl_lite.models import Classifier, ResNet18
    from advcl_lite.viz import plot_adversarial_panel
    torch.manual_seed(0)
    model = Classifier(ResNet18(4), 10).train()
    x = real[:3]
    x_adv = (x + 8 / 255 * torch.sign(torch.randn_like(x))).clamp(0, 1)
    y = torch.tensor([0, 1, 2])
    classes = [f"c{i}" for i in range(10)]
    fig = plot_adversarial_panel(model, x, x_adv, y, classes, k=3)
    assert model.training, "the model's train/eval mode is restored"
    assert len(fig.axes) == 12
    with torch.no_grad():
        pred = model.eval()(x_adv).argmax(1)
    assert fig.axes[1].get_title() == f"adversarial: c{int(pred[0])}"
    assert "Linf 8.0/255" in fig.axes[2].get_title()
    assert len(fig.axes[3].patches) == 6                            # top-3, clean and adversarial
    with pytest.raises(ValueError, match="must match"):
        plot_adversarial_panel(model, x, x_adv[:2], y, classes)


def test_widget_is_skipped_in_headless_runs_and_interactive_otherwise(monkeypatch, capsys):
    from advcl_lite.viz import widget
    calls = []

    def show(k=1):
        calls.append(k)

    monkeypatch.setenv("ADVCL_HEADLESS", "1")
    assert widget(show, k=[1, 2]) is None
    assert "skipped: headless run" in capsys.readouterr().out and calls == []
    monkeypatch.setenv("ADVCL_HEADLESS", "0")
    assert widget(show, k=[1, 2]) is not None and calls == [1], "interact calls the function once with the default"


# --------------------------------------------------------------------------- clusters (notebook 03)


def test_plots_return_figures(plt, ds64, labels64, net4):
    fig = plot_cluster_grid(ds64, labels64, n_clusters=3, per_cluster=4, k=5)
    assert len(fig.axes) == 3
    fig2 = plot_embedding(extract_features(net4, ds64, progress=False), labels64.labels[5], ds64,
                          method="pca", n=40)
    assert len(fig2.axes) == 2 and len(fig2.axes[0].collections[0].get_offsets()) == 40
    fig3 = plot_cluster_sizes(labels64)
    assert len(fig3.axes[0].lines) == 4


# --------------------------------------------------------------------------- results (notebook 04)


def test_plots(plt, tiny, test_set):
    recs = example_records(tiny, test_set)
    fig = plot_results(recs)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].patches) >= 6        # 2 methods x 3 metrics in the first panel
    plt.close(fig)
    no_aa = [{k: v for k, v in r.items() if not k.startswith("aa")} for r in recs]   # presets with aa_n = 0
    fig = plot_results(no_aa)
    from matplotlib.container import BarContainer
    assert sum(isinstance(c, BarContainer) for c in fig.axes[0].containers) == 2     # SA and RA only
    plt.close(fig)
    x, y = test_set.tensors(12)
    with torch.no_grad():
        y = tiny(x).argmax(1)
    curve = accuracy_vs_eps(tiny, (x, y), [0.0, 2 / 255, 8 / 255], steps=3)
    fig = plot_accuracy_vs_eps({"tiny": curve})
    assert len(fig.axes[0].lines) == 1
    plt.close(fig)


# --------------------------------------------------------------------------- spectra (notebook 05)


def test_plots_and_the_frequency_explorer(plt, tmp_path):
    m, x, y = linear_model_on(9, 9)
    fig, stats = plot_frequency_explorer({"hf-linear": m}, x[:16], y[:16], radius=8, eps=8 / 255, steps=10)
    st = stats["hf-linear"]
    assert st["clean"] == 1.0 and st["low"] == 1.0 and st["high"] < 0.1 and st["full"] < 0.1
    assert st["hf_fraction"] > 0.8
    assert len(fig.axes) == 5
    fig.savefig(tmp_path / "explorer.png")
    heat = S.fourier_heat_map(m, x[:4], y[:4], stride=8, progress=False)
    fig = plot_heat_maps({"a": heat, "b": heat}, radius=8, norm=4)
    fig.savefig(tmp_path / "heat.png")
    recs = S.accuracy_under_band_attacks(m, x[:8], y[:8], [4 / 255], steps=2, progress=False)
    recs = [dict(r, encoder=e) for e in ("a", "b") for r in recs]
    fig = plot_band_accuracy(recs)
    assert len(fig.axes) == 3 and all(len(ax.lines) == 2 for ax in fig.axes)   # a panel per band, a line per encoder
    assert list(fig.axes[1].lines[0].get_ydata()) == [1.0, recs[1]["accuracy"]]  # starts at the clean accuracy
