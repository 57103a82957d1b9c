"""advcl_lite.viz: the plotting helpers and the notebook widget wrapper."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from advcl_lite.frequency import energy_fraction, high_pass, low_pass, radial_power_spectrum


@pytest.fixture
def plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    yield plt
    plt.close("all")


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
