"""advcl-lite spectra (issue 30): any classifier behind its input normalisation, every analysis written as
arrays, tables and figures, a finished analysis never recomputed, bad input in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from advcl_lite import analysis
from advcl_lite.cli import main
from advcl_lite.models import InputNormalize
from advcl_lite.spectra import fourier_heat_map, pgd_perturbations, subspace_margins

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


class ByHand(nn.Module):
    """A model that normalises its input itself, the way a user would write it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))


def test_the_normalisation_wrapper_equals_a_model_that_normalises_by_hand():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 5)).eval()
    wrapped, hand = analysis.with_normalization(inner, MEAN, STD), ByHand(inner)
    x = torch.rand(6, 3, 16, 16)
    y = hand(x).argmax(1)
    assert torch.allclose(wrapped(x), hand(x), atol=1e-6)
    assert torch.allclose(pgd_perturbations(wrapped, x, y, steps=3), pgd_perturbations(hand, x, y, steps=3), atol=1e-6)
    h1, h2 = (fourier_heat_map(m, x, y, 4.0, stride=4) for m in (wrapped, hand))
    assert torch.equal(torch.isnan(h1), torch.isnan(h2)) and torch.allclose(h1.nan_to_num(), h2.nan_to_num())
    assert isinstance(wrapped[0], InputNormalize)


def test_margins_inside_a_subspace_equal_the_closed_form_of_a_linear_model():
    """For f(x) = Wx + b the smallest perturbation inside subspace S that makes class k beat y has L2 norm
    (f_y - f_k) / ||P_S (w_k - w_y)||; the margin is its minimum over k."""
    from advcl_lite.spectra import _dct_projector, dct_band_mask, dct_matrix
    torch.manual_seed(1)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5)).eval()
    x = torch.rand(6, 3, 16, 16)
    y = lin(x).argmax(1)
    got = subspace_margins(lin, x, y, candidates=5, progress=False)
    w, f = lin[1].weight.detach(), lin(x).detach()
    d = dct_matrix(8)
    assert torch.allclose(d @ d.T, torch.eye(8, dtype=d.dtype), atol=1e-12)          # orthonormal DCT
    for band in ("low", "mid", "high"):
        project = _dct_projector(16, 16, dct_band_mask(16, band), "cpu", torch.float32)
        want = [min(float((f[i, y[i]] - f[i, k]) / project((w[k] - w[y[i]]).view(3, 16, 16)).norm())
                    for k in range(5) if k != y[i]) for i in range(6)]
        assert got[band].tolist() == pytest.approx(want, rel=1e-4), band
    wrong = (y + 1) % 5                                                    # misclassified: margin 0
    assert subspace_margins(lin, x, wrong, bands=("low",), progress=False)["low"].eq(0).all()


def test_the_command_on_a_torchvision_model_writes_everything_once(tmp_path, monkeypatch, capsys):
    argv = ["spectra", "--model", "torchvision:resnet18", "--image-size", "64", "--n", "6", "--eps", "4,8",
            "--steps", "1", "--heat-stride", "16", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for a in analysis.ANALYSES:
        assert f"{a}: " in out and "about" in out                           # a cost line before each analysis
        for ext in ("npz", "csv", "png"):
            assert (tmp_path / f"{a}.{ext}").stat().st_size > 0, (a, ext)
    s = json.loads((tmp_path / "settings.json").read_text())
    assert s["model"]["spec"] == "torchvision:resnet18" and s["model"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert s["n"] == 6 and s["image_size"] == 64 and s["eps"] == pytest.approx([4 / 255, 8 / 255])
    assert s["labels"] == "model" and set(s["seconds"]) == set(analysis.ANALYSES)
    assert s["versions"]["torch"] and s["seed"] == 0 and s["heat_stride"] == 16
    heat = np.load(tmp_path / "heatmap.npz")
    assert heat["error"].shape == (64, 64) and np.allclose(np.nan_to_num(heat["increase"] + heat["clean_error"]),
                                                           np.nan_to_num(heat["error"]))
    per_class = [k for k in heat.files if k.startswith("error_class_")]
    counts = [int(v) for v in np.genfromtxt(tmp_path / "margins.csv", delimiter=",", names=True)["label"]]
    mix = sum(counts.count(int(k.rsplit("_", 1)[1])) * np.nan_to_num(heat[k]) for k in per_class) / s["n"]
    assert np.allclose(mix, np.nan_to_num(heat["error"]), atol=1e-6)   # the class maps average to the map
    assert set(np.load(tmp_path / "margins.npz").files) == {"low", "mid", "high"}
    for name in ("fourier_heat_map", "pgd_perturbations", "subspace_margins", "accuracy_under_band_attacks"):
        monkeypatch.setattr(analysis, name, lambda *a, **k: pytest.fail("a finished analysis ran again"))
    assert main(argv) == 0
    assert capsys.readouterr().out.count("not recomputed") == 4


def test_timm_models_when_timm_is_installed(tmp_path):
    pytest.importorskip("timm", reason="timm is an optional extra (pip install timm)")
    s = analysis.run_spectra("timm:resnet18", "sample", tmp_path, n=4, image_size=32, analyses=("bands",),
                             eps=(8 / 255,), steps=1, progress=False)
    assert s["model"]["kind"] == "timm" and (tmp_path / "bands.npz").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--model", "keras:resnet"], "unknown model spec 'keras:resnet'"),
    (["--model", "torchvision:nope_net"], "torchvision has no model 'nope_net'"),
    (["--model", "torchvision:squeezenet1_0", "--image-size", "4"], "cannot take 4x4 images"),
    (["--model", "torchvision:resnet18", "--weights", "WEIGHTS"], "do not fit torchvision:resnet18"),
    (["--model", "torchvision:resnet18", "--analyses", "spectrum,colour"], "unknown analysis colour")])
def test_bad_input_is_one_line(tmp_path, capsys, argv, fragment):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "w.pt")
    argv = [a.replace("WEIGHTS", str(tmp_path / "w.pt")) for a in argv]
    rc = main(["spectra", *argv, "--n", "2", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and fragment in err, err


def test_advcl_models_go_through_the_command_and_an_encoder_is_refused(tmp_path, capsys):
    from advcl_lite.finetune import finetune
    from advcl_lite.models import ResNet18
    from advcl_lite.presets import get_preset
    from advcl_lite.pretrained import encoder_dir
    torch.manual_seed(0)
    finetune(ResNet18(4), "slf", get_preset("smoke", ft_subset=64), data="sample", out_dir=tmp_path / "ft",
             device="cpu", progress=False)
    s = analysis.run_spectra(f"advcl:{tmp_path / 'ft' / 'model.pt'}", "sample", tmp_path / "o", n=8,
                             analyses=("bands", "margins"), eps=(8 / 255,), steps=1, progress=False)
    assert s["labels"] == "data" and s["model"]["num_classes"] == 10 and s["model"]["mean"] is None
    assert s["model"]["weights_sha256"] and (tmp_path / "o" / "margins.csv").exists()
    rc = main(["spectra", "--model", f"advcl:{encoder_dir() / 'acl.pt'}", "--out", str(tmp_path / "e"), "--n", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "is an encoder, not a classifier" in err and "advcl-lite finetune --encoder" in err
