"""Cluster pseudo-labels: features, k-means, the label file and its checks, CLI, AdvCL with labels."""
from __future__ import annotations

import json
import warnings

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn as nn

from advcl_lite import diagnostics
from advcl_lite import pseudo_labels as plm
from advcl_lite.checkpoint import CheckpointError
from advcl_lite.data import DataError, load_dataset
from advcl_lite.models import ContrastiveNet, ResNet18
from advcl_lite.presets import get_preset
from advcl_lite.pretrain import pretrain, pretrain_dataset
from advcl_lite.clustering import extract_features
from advcl_lite.diagnostics import cluster_stats, purity
from advcl_lite.pseudo_labels import PseudoLabels, PseudoLabelsNotFound, get_or_make_pseudo_labels, make_pseudo_labels

matplotlib.use("Agg")

TINY = dict(train_subset=64, batch_size=32, base_width=4, epochs=1, pgd_steps=1)


@pytest.fixture(scope="module")
def tiny_preset():
    return get_preset("smoke", **TINY)


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory, tiny_preset):
    out = tmp_path_factory.mktemp("simclr")
    return pretrain("simclr", tiny_preset, out_dir=out, data="sample", device="cpu", progress=False)


@pytest.fixture(scope="module")
def simclr_ckpt(simclr_run):
    return simclr_run.checkpoint


def blobs(n_per=60, k=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10
    y = torch.arange(k).repeat_interleave(n_per)
    x = centres[y] + 0.3 * torch.randn(len(y), dim, generator=g)
    return x, y


# --------------------------------------------------------------------------- features

def test_extract_features_shapes_routes_and_mode(ds64, net4):
    net = ContrastiveNet(4, routes=("normal", "pgd"))
    net.train()
    f = extract_features(net, ds64, batch_size=20, progress=False)
    assert f.shape == (64, 32) and f.dtype == torch.float32
    assert net.training, "extract_features must restore the train/eval mode"
    # the batch size does not change the features (eval-mode BN, no batch statistics)
    f2 = extract_features(net, ds64, batch_size=64, progress=False)
    torch.testing.assert_close(f, f2, rtol=1e-4, atol=1e-5)
    # routes are distinct BN sets: perturb one route's running mean and only that route's features change
    net.backbone.bn1.bns["pgd"].running_mean.add_(1.0)
    fp = extract_features(net, ds64, route="pgd", progress=False)
    fn = extract_features(net, ds64, route="normal", progress=False)
    torch.testing.assert_close(fn, f, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fp, f)
    with pytest.raises(ValueError, match="route 'pgd_ce'"):
        extract_features(net, ds64, route="pgd_ce", progress=False)
    # a plain ResNet18 and a uint8 tensor of the same images give the same numbers as the dataset
    plain = ResNet18(4).eval()
    torch.testing.assert_close(extract_features(plain, ds64.images, progress=False),
                               extract_features(plain, ds64, progress=False))


def test_extract_features_from_checkpoint_path(simclr_ckpt, ds64):
    from advcl_lite.pretrain import load_pretrained
    net, _ = load_pretrained(simclr_ckpt)
    torch.testing.assert_close(extract_features(str(simclr_ckpt), ds64, progress=False),
                               extract_features(net, ds64, progress=False))
    with pytest.raises(CheckpointError, match="does not exist"):
        extract_features("/nonexistent/final.pt", ds64, progress=False)


# --------------------------------------------------------------------------- k-means

def test_labels_length_range_sorted_and_meta(labels64, ds64):
    assert labels64.ks == (2, 5)
    for k in labels64.ks:
        lab = labels64.labels[k]
        assert lab.dtype == torch.long and lab.shape == (len(ds64),)
        assert int(lab.min()) == 0 and int(lab.max()) == k - 1
        sizes = torch.bincount(lab, minlength=k)
        assert torch.all(sizes[:-1] >= sizes[1:]), "clusters are numbered largest first"
    m = labels64.meta
    assert m["dataset"] == ds64.id and m["n"] == 64 and m["seed"] == 0 and m["normalize"] == "l2"
    assert len(m["encoder_sha256"]) == 64 and m["encoder"] == "ContrastiveNet"
    assert set(m["versions"]) >= {"torch", "sklearn", "advcl_lite"}
    json.dumps(m)
    json.dumps(labels64.describe())


def test_reproducible_under_seed(ds64, net4, labels64):
    again = make_pseudo_labels(net4, ds64, ks=(2, 5), seed=0, progress=False)
    for k in labels64.ks:
        assert torch.equal(again.labels[k], labels64.labels[k])
    assert again.describe() == labels64.describe()


def test_gaussian_blobs_recovered():
    from sklearn.metrics import normalized_mutual_info_score
    x, y = blobs()
    pl = make_pseudo_labels(nn.Identity(), x, ks=(4,), seed=1, progress=False)
    assert normalized_mutual_info_score(y.numpy(), pl.labels[4].numpy()) > 0.99
    stats = cluster_stats(pl, y)
    assert stats.loc[4, "purity"] > 0.99 and stats.loc[4, "nmi"] > 0.99
    assert stats.loc[4, "nmi_shuffled"] < 0.2
    assert stats.loc[4, "min_size"] == stats.loc[4, "max_size"] == 60


def test_purity_and_cluster_stats_by_hand():
    c = torch.tensor([0, 0, 0, 1, 1, 1])
    y = torch.tensor([0, 0, 1, 1, 1, 1])
    assert purity(c, y) == pytest.approx(5 / 6)
    st = cluster_stats({2: c}, y)
    assert st.loc[2, "clusters"] == 2 and st.loc[2, "median_size"] == 3
    with pytest.raises(ValueError, match="same dataset"):
        cluster_stats({2: c}, y[:5])


def test_too_large_k_dropped_with_warning(ds64, net4):
    with pytest.warns(UserWarning, match=r"dropping K=40, 64: this dataset has 64 images"):
        pl = make_pseudo_labels(net4, ds64, ks=(2, 40, 32, 64), progress=False)
    assert pl.ks == (2, 32) and pl.meta["dropped_ks"] == [40, 64]
    with pytest.raises(ValueError, match="no usable K"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_pseudo_labels(net4, ds64, ks=(100,), progress=False)
    with pytest.raises(ValueError, match=">= 2"):
        make_pseudo_labels(net4, ds64, ks=(1, 2), progress=False)


# --------------------------------------------------------------------------- the label file

def test_save_load_roundtrip_and_targets(tmp_path, labels64, ds64):
    path = labels64.save(tmp_path / "sub" / "pl.pt")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    back = PseudoLabels.load(path, dataset=ds64)
    assert back.ks == labels64.ks and back.describe() == labels64.describe()
    for k in back.ks:
        assert torch.equal(back.labels[k], labels64.labels[k])
    idx = torch.tensor([5, 0, 63])
    t = back.targets(idx, "cpu")
    assert [len(v) for v in t] == [3, 3]
    assert torch.equal(t[1], labels64.labels[5][idx])
    torch.load(path, weights_only=True)   # a plain, safe file


def test_tampered_file_refused(tmp_path, labels64):
    path = labels64.save(tmp_path / "pl.pt")
    ck = torch.load(path, weights_only=True)
    ck["state_dict"]["k2"] = 1 - ck["state_dict"]["k2"]
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match="do not match their recorded hash"):
        PseudoLabels.load(path)


def test_mismatched_dataset_refused(tmp_path, labels64, ds64):
    path = labels64.save(tmp_path / "pl.pt")
    shorter = ds64.subset(range(32))
    with pytest.raises(DataError) as e:
        PseudoLabels.load(path, dataset=shorter)
    msg = str(e.value)
    assert ds64.id in msg and "32 images" in msg and "advcl-lite pseudo-labels --encoder" in msg
    # same length, other id
    other = load_dataset("sample", "test").subset(range(64))
    with pytest.raises(DataError, match=r"made for dataset 'cifar10-sample:train\[64\]:64'.*id is"):
        labels64.check_dataset(other)
    # same id and length, other images (another subset seed)
    reseeded = pretrain_dataset(get_preset("smoke", **TINY, seed=1), "sample")
    assert reseeded.id == ds64.id
    with pytest.raises(DataError, match="another subset"):
        labels64.check_dataset(reseeded)
    # the suggested command names the preset that builds this dataset
    smoke = pretrain_dataset(get_preset("smoke"), "sample")
    with pytest.raises(DataError, match="--preset smoke --data sample --k 2,5"):
        labels64.check_dataset(smoke)


def test_missing_file_message(tmp_path, ds64):
    with pytest.raises(PseudoLabelsNotFound) as e:
        PseudoLabels.load(tmp_path / "nope.pt", dataset=ds64)
    msg = str(e.value)
    assert "does not exist" in msg and "advcl-lite pseudo-labels --encoder" in msg and "--out" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_get_or_make_caches_and_remakes(tmp_path, ds64, net4, simclr_ckpt):
    path = tmp_path / "pl.pt"
    a = get_or_make_pseudo_labels(path, simclr_ckpt, ds64, ks=(2, 5), progress=False)
    assert a.meta["encoder_path"] == str(simclr_ckpt) and a.meta["encoder_hash_of"] == "checkpoint file"
    b = get_or_make_pseudo_labels(path, simclr_ckpt, ds64, ks=(2, 5), progress=False)
    assert b.meta.get("cached") and b.describe() == a.describe()
    c = get_or_make_pseudo_labels(path, simclr_ckpt, ds64, ks=(2, 3), progress=False)   # other Ks: remade
    assert c.ks == (2, 3) and not c.meta.get("cached")
    d = get_or_make_pseudo_labels(path, net4, ds64, ks=(2, 3), progress=False)          # other encoder: remade
    assert d.meta["encoder_sha256"] != c.meta["encoder_sha256"] and not d.meta.get("cached")
    assert d.meta["encoder_hash_of"] == "state dict"


def test_pretrain_result_stands_for_its_checkpoint(simclr_run, simclr_ckpt, ds64):
    a = make_pseudo_labels(simclr_run, ds64, ks=(2, 5), progress=False)
    b = make_pseudo_labels(simclr_ckpt, ds64, ks=(2, 5), progress=False)
    assert a.describe() == b.describe() and a.meta["encoder_path"] == str(simclr_ckpt)


def test_embed_2d_knows_its_methods():
    """The figures of this stage (advcl_lite.viz.plot_cluster_grid ...) are tested in test_viz.py."""
    with pytest.raises(ValueError, match="tsne"):
        diagnostics.embed_2d(np.zeros((5, 3)), method="umap")


# --------------------------------------------------------------------------- AdvCL with pseudo-labels

def test_advcl_refuses_labels_for_another_dataset(tmp_path, net4, tiny_preset, ds64):
    wrong = make_pseudo_labels(net4, ds64.subset(range(32)), ks=(2, 5), progress=False)
    path = wrong.save(tmp_path / "wrong.pt")
    with pytest.raises(DataError, match="made for dataset .* but this dataset differs"):
        pretrain("advcl", tiny_preset, out_dir=tmp_path / "run", data="sample", pseudo_labels=path,
                 device="cpu", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_advcl_with_labels_runs_a_step(tmp_path, labels64, tiny_preset):
    path = labels64.save(tmp_path / "pl.pt")
    res = pretrain("advcl", tiny_preset, out_dir=tmp_path / "run", data="sample", pseudo_labels=path,
                   device="cpu", progress=False)
    h = res.history[-1]
    assert np.isfinite(h["loss"]) and h["loss_ps"] > 0
    scale = tiny_preset.temperature / tiny_preset.base_temperature       # the original's SupConLoss factor
    assert h["loss"] == pytest.approx(scale * h["loss_cl"] + tiny_preset.pseudo_lambda * h["loss_ps"], rel=1e-5)
    assert res.meta["pseudo_ks"] == [2, 5]
    assert res.meta["config"]["pseudo_labels"] == json.loads(json.dumps(labels64.describe()))


# --------------------------------------------------------------------------- command line

def test_cli_writes_label_file(tmp_path, simclr_ckpt, capsys, tiny_preset):
    from advcl_lite.cli import main
    out = tmp_path / "labels.pt"
    argv = ["pseudo-labels", "--encoder", str(simclr_ckpt), "--preset", "smoke", "--data", "sample",
            "--device", "cpu", "--no-progress", "--k", "2,5,40"]
    for k, v in TINY.items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv + ["--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert f"wrote {out}" in cap.out and "K=5: cluster sizes min" in cap.out
    assert "warning: dropping K=40" in cap.err
    pl = PseudoLabels.load(out, dataset=pretrain_dataset(tiny_preset, "sample"))
    assert pl.ks == (2, 5) and pl.meta["preset"] == "smoke" and pl.meta["encoder"] == "simclr"
    # default output: beside the encoder
    assert main(argv) == 0
    assert (simclr_ckpt.parent / "pseudo_labels.pt").exists()
    capsys.readouterr()
    # a missing encoder is one error line, exit status 2
    assert main(["pseudo-labels", "--encoder", str(tmp_path / "none.pt"), "--preset", "smoke", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- notebook 03

@pytest.mark.slow
def test_notebook_03_smoke(run_nb, tour_dirs):
    P = get_preset("smoke")
    rec = run_nb("03")
    from advcl_lite.results import shipped_records
    assert rec["study1_records"] == len(shipped_records("pseudo")) >= 7      # study 1's shipped records, drawn
    assert rec["study1_labels_nmi_k10"] == pytest.approx(rec["pseudo_nmi"]["10"]) and 0 <= rec["pseudo_nmi"]["10"] <= 1
    ks = rec["pseudo_ks"]
    train = pretrain_dataset(P, "sample")
    assert ks == list(plm.valid_ks(P.pseudo_ks, len(train))[0])     # K > N/2 (500 of 256 images) is dropped
    for name in ("pseudo_nmi", "pseudo_nmi_shuffled", "pseudo_purity"):
        assert sorted(int(k) for k in rec[name]) == ks
        assert all(0.0 <= v <= 1.0 for v in rec[name].values())
    # purity is at least the largest class share (>= 1/10 on the class-balanced smoke subset)
    assert all(v >= 0.1 for v in rec["pseudo_purity"].values())
    for name in ("advcl_final_loss", "advcl_final_loss_cl", "advcl_final_loss_ps", "advcl_nopl_final_loss",
                 "advcl_nopl_final_loss_cl"):
        assert np.isfinite(rec[name]) and rec[name] > 0
    # AdvCL: (temperature / base_temperature) * L_CL + lambda * L_PS; without pseudo-labels the first term only
    scale = P.temperature / P.base_temperature
    assert rec["loss_cl_scale"] == pytest.approx(scale)
    assert rec["advcl_final_loss"] == pytest.approx(scale * rec["advcl_final_loss_cl"]
                                                    + P.pseudo_lambda * rec["advcl_final_loss_ps"], rel=1e-5)
    assert rec["advcl_nopl_final_loss"] == pytest.approx(scale * rec["advcl_nopl_final_loss_cl"], rel=1e-5)
    assert rec["advcl_final_loss_ps"] < 2 * np.log(max(ks))
    # the label file is cached in work_dir and made for the smoke pretraining set; AdvCL trained with it
    _, work = tour_dirs
    pl = PseudoLabels.load(work / "pseudo_labels" / "simclr.pt", dataset=train)
    assert list(pl.ks) == ks
    ck = torch.load(rec["advcl_checkpoint"], weights_only=True)
    assert ck["meta"]["config"]["pseudo_labels"] == json.loads(json.dumps(pl.describe()))
    assert ck["meta"]["run_name"] == "advcl"
    ck = torch.load(rec["advcl_nopl_checkpoint"], weights_only=True)
    assert ck["meta"]["config"]["pseudo"] is False and ck["meta"]["run_name"] == "advcl-nopl"


def test_notebook_03_pretrained_clusters_the_shipped_simclr(run_nb, tour_dirs):
    """encoders="pretrained": labels from the shipped SimCLR's features, the shipped AdvCL pair's curves."""
    from advcl_lite import pretrained
    P = get_preset("smoke")
    rec = run_nb("03", encoders="pretrained")
    assert rec["encoders"] == "pretrained"
    _, work = tour_dirs
    train = pretrain_dataset(P, "sample")
    pl = PseudoLabels.load(work / "pseudo_labels" / "shipped-simclr.pt", dataset=train)
    assert rec["pseudo_labels_file"].endswith("shipped-simclr.pt") and list(pl.ks) == rec["pseudo_ks"]
    assert pl.meta["encoder_sha256"] == plm.encoder_sha256(pretrained.load_pretrained_encoder("simclr"))
    # the AdvCL losses shown are the shipped runs' own last epochs, and they obey the loss composition
    last = pretrained.history("advcl")[-1]
    assert rec["advcl_final_loss"] == last["loss"] and rec["advcl_final_loss_ps"] == last["loss_ps"]
    assert rec["advcl_final_loss"] == pytest.approx(rec["loss_cl_scale"] * last["loss_cl"] + 0.2 * last["loss_ps"],
                                                    rel=1e-5)
    assert rec["advcl_nopl_final_loss"] == pretrained.history("advcl-nopl")[-1]["loss"]
    assert rec["advcl_checkpoint"].endswith("advcl.pt") and rec["advcl_nopl_checkpoint"].endswith("advcl-nopl.pt")
