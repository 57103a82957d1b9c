"""Finetuning (SLF / ALF / AFF), validation-based model selection, transfer across datasets, the CLI."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from advcl_lite import finetune as ftm
from advcl_lite.checkpoint import CheckpointError
from advcl_lite.cli import main
from advcl_lite.data import DataError, load_dataset
from advcl_lite.evaluate import evaluate
from advcl_lite.finetune import (FeatureExtractor, finetune, finetune_splits, get_or_finetune, load_finetuned,
                                 lr_milestones)
from advcl_lite.models import ContrastiveNet, export_encoder
from advcl_lite.presets import get_preset
from advcl_lite.pretrain import load_pretrained, pretrain

TINY = dict(base_width=4, train_subset=64, batch_size=32, epochs=1, pgd_steps=1, ft_subset=64, eval_n=32,
            ft_epochs=1, ft_pgd_steps=1, eval_pgd_steps=2, ft_batch_size=32, aff_batch_size=32)
CLI_SET = ["--set", "ft_subset=64", "--set", "ft_epochs=1", "--set", "ft_pgd_steps=1", "--set", "ft_batch_size=32",
           "--set", "aff_batch_size=32"]


@pytest.fixture(scope="module")
def P():
    return get_preset("smoke", **TINY)


@pytest.fixture(scope="module")
def advcl_ckpt(tmp_path_factory, P):
    out = tmp_path_factory.mktemp("advcl")
    return pretrain("advcl", P, out_dir=out, data="sample", device="cpu", progress=False).checkpoint


@pytest.fixture(scope="module")
def pgd_encoder_state(advcl_ckpt):
    net, meta = load_pretrained(advcl_ckpt)
    assert meta["eval_route"] == "pgd"
    return {k: v.clone() for k, v in export_encoder(net, "pgd").state_dict().items()}


@pytest.fixture(scope="module")
def slf(advcl_ckpt, P, tmp_path_factory):
    return finetune(advcl_ckpt, "slf", P, data="sample", out_dir=tmp_path_factory.mktemp("slf"), device="cpu",
                    progress=False)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _hashes(ds) -> set[str]:
    return {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in ds.images}


def _image_folder(root, size=32, classes=("circle", "square", "stripes"), n_train=10, n_test=4, seed=0):
    """A tiny 3-class ImageFolder of drawn PNGs: <root>/{train,test}/<class>/*.png."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                base = rng.integers(0, 60, (size, size, 3))
                if ci == 0:
                    mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
                elif ci == 1:
                    mask = (abs(yy - size / 2) < size / 4) & (abs(xx - size / 2) < size / 4)
                else:
                    mask = (xx // 4) % 2 == 0
                img = base + mask[..., None] * np.array([180, 120 + 40 * ci, 60])
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


# --------------------------------------------------------------------------- schemes

def test_slf_keeps_encoder_weights_and_bn_buffers(slf, pgd_encoder_state, P):
    assert slf.meta["encoder"]["route"] == "pgd" and slf.meta["scheme"] == "slf"
    after = slf.model.encoder.state_dict()
    assert any("running_mean" in k for k in after)
    assert _same_state(after, pgd_encoder_state)     # weights, running stats and num_batches_tracked
    assert not slf.model.training and len(slf.history) == P.ft_epochs
    assert np.isfinite(slf.history[0]["loss"])


def test_alf_keeps_encoder_and_aff_changes_it(advcl_ckpt, pgd_encoder_state, P):
    alf = finetune(advcl_ckpt, "alf", P, data="sample", device="cpu", progress=False)
    assert _same_state(alf.model.encoder.state_dict(), pgd_encoder_state)
    assert "val_ra" in alf.val and alf.val["val_n"] > 0
    aff = finetune(advcl_ckpt, "aff", P, data="sample", device="cpu", progress=False)
    after = aff.model.encoder.state_dict()
    changed_w = [k for k in after if k.endswith("conv1.weight") and not torch.equal(after[k], pgd_encoder_state[k])]
    changed_bn = [k for k in after if k.endswith("running_mean") and not torch.equal(after[k], pgd_encoder_state[k])]
    assert changed_w and changed_bn
    assert {"loss_ce", "loss_kl"} <= set(aff.history[0]) and aff.history[0]["loss_kl"] >= 0


def test_encoder_object_passed_in_is_not_modified(P):
    torch.manual_seed(0)
    net = ContrastiveNet(4, ("normal", "pgd"))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = finetune(net, "aff", P, data="sample", device="cpu", progress=False)
    assert _same_state(net.state_dict(), before)
    assert res.meta["encoder"]["route"] == "pgd"


def test_validation_split_is_disjoint_and_test_never_read(P, monkeypatch):
    train_full = load_dataset("sample", "train")
    test = load_dataset("sample", "test")
    tr, va = finetune_splits(train_full, P)
    assert len(tr) + len(va) == P.ft_subset
    assert set(va.labels.tolist()) == set(range(10))             # stratified: every class validated
    h_tr, h_va, h_te = _hashes(tr), _hashes(va), _hashes(test)
    assert not (h_tr & h_va) and not (h_va & h_te) and not (h_tr & h_te)
    real = ftm.load_dataset

    def no_test(src, split="train", **kw):
        assert split != "test", "finetuning must never read the test split"
        return real(src, split, **kw)
    monkeypatch.setattr(ftm, "load_dataset", no_test)
    res = finetune(ContrastiveNet(4), "slf", P, data="sample", device="cpu", progress=False)
    assert res.meta["num_train"] == len(tr) and res.meta["num_val"] == len(va) and res.meta["val"] != res.meta["train"]


def test_best_epoch_is_chosen_on_validation(advcl_ckpt, P):
    p = P.replace(ft_epochs=5, ft_lr=0.5)
    res = finetune(advcl_ckpt, "slf", p, data="sample", device="cpu", progress=False)
    scores = [h["val_sa"] for h in res.history]
    assert res.best_epoch == 1 + scores.index(max(scores))        # first epoch with the best score
    _, val = finetune_splits(load_dataset("sample", "train"), p)
    again = evaluate(res.model, val, progress=False)
    assert again["sa"] == pytest.approx(res.history[res.best_epoch - 1]["val_sa"])   # the returned model IS that epoch
    assert [round(h["lr"], 6) for h in res.history] == [0.5, 0.5, 0.5, 0.05, 0.005]  # /10 at 60 % and 80 %


def test_lr_milestones():
    assert lr_milestones(25) == [15, 20]
    assert lr_milestones(10) == [6, 8]


# --------------------------------------------------------------------------- checkpoints

def test_load_finetuned_roundtrip_and_strictness(slf, advcl_ckpt, tmp_path):
    model, meta = load_finetuned(slf.checkpoint)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), slf.model(x), atol=1e-6)
    assert meta["best_epoch"] == slf.best_epoch and meta["classes"][0] == "airplane" and meta["num_classes"] == 10
    assert meta["encoder"]["path"] == str(advcl_ckpt) and meta["encoder"]["method"] == "advcl"
    assert meta["history"] == slf.history
    with pytest.raises(CheckpointError, match="'finetune'"):
        load_finetuned(advcl_ckpt)                               # a pretraining checkpoint is the wrong kind
    ck = torch.load(slf.checkpoint, weights_only=True)
    ck["state_dict"].pop("fc.bias")
    torch.save(ck, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_finetuned(tmp_path / "broken.pt")


def test_get_or_finetune_caches(advcl_ckpt, P, tmp_path):
    a = get_or_finetune(advcl_ckpt, "slf", P, tmp_path / "ft", data="sample", device="cpu", progress=False)
    b = get_or_finetune(advcl_ckpt, "slf", P, tmp_path / "ft", data="sample", device="cpu", progress=False)
    assert not a.cached and b.cached and b.history == a.history
    c = get_or_finetune(advcl_ckpt, "slf", P.replace(ft_lr=0.05), tmp_path / "ft", data="sample", device="cpu",
                        progress=False)
    assert not c.cached and c.meta["preset"]["ft_lr"] == 0.05


class TinyUserEncoder(nn.Module):
    feature_dim = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean((2, 3))


def test_user_brought_encoder(P, tmp_path):
    torch.manual_seed(0)
    enc = TinyUserEncoder()
    res = finetune(enc, "alf", P, data="sample", out_dir=tmp_path, device="cpu", progress=False)
    assert isinstance(res.model.encoder, FeatureExtractor) and res.meta["encoder"]["class"] == "TinyUserEncoder"
    with pytest.raises(CheckpointError, match="encoder="):
        load_finetuned(res.checkpoint)
    model, _ = load_finetuned(res.checkpoint, encoder=TinyUserEncoder())
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), res.model(x))

    class NoDim(nn.Module):
        def forward(self, x):
            return x.mean((2, 3))
    with pytest.raises(ValueError, match="feature_dim"):
        finetune(NoDim(), "slf", P, data="sample", device="cpu", progress=False)


# --------------------------------------------------------------------------- transfer

def test_transfer_to_another_dataset(advcl_ckpt, P, tmp_path, monkeypatch):
    """Pretrain on the CIFAR-10 sample, finetune and evaluate on a 3-class ImageFolder of drawn shapes."""
    monkeypatch.setenv("ADVCL_CACHE", str(tmp_path / "cache"))
    folder = _image_folder(tmp_path / "shapes")
    p = P.replace(ft_subset=None, val_fraction=0.2, ft_epochs=3, ft_lr=0.1)
    res = finetune(advcl_ckpt, "slf", p, data=str(folder), out_dir=tmp_path / "ft", device="cpu", progress=False)
    assert res.meta["classes"] == ["circle", "square", "stripes"] and res.meta["num_classes"] == 3
    assert res.meta["dataset_name"] == "shapes" and res.meta["encoder"]["pretrain_meta"]["dataset"].startswith("cifar10")
    assert res.meta["num_train"] == 24 and res.meta["num_val"] == 6
    test = load_dataset(str(folder), "test")
    r = evaluate(res.model, test, attack="pgd20", progress=False)
    assert r["n"] == 12 and r["ra"] == r["robust"] / 12
    # the same through the CLI, evaluating with the dataset recorded in the checkpoint
    assert main(["evaluate", "--model", str(res.checkpoint), "--attack", "none", "--device", "cpu",
                 "--no-progress"]) == 0


def test_image_size_mismatch_is_a_clear_error(advcl_ckpt, P, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVCL_CACHE", str(tmp_path / "cache"))
    folder = _image_folder(tmp_path / "big", size=40, n_train=4, n_test=2)
    with pytest.raises(DataError, match=r"32x32.*image_size=32"):
        finetune(advcl_ckpt, "slf", P, data=str(folder), device="cpu", progress=False)
    res = finetune(advcl_ckpt, "slf", P.replace(ft_subset=None, val_fraction=0.25), data=str(folder), image_size=32,
                   out_dir=tmp_path / "ft", device="cpu", progress=False)
    assert res.meta["image_size"] == 32 and res.meta["resize"] == 32
    # evaluate re-applies the finetuning resize to the test split
    assert main(["evaluate", "--model", str(res.checkpoint), "--attack", "none", "--device", "cpu"]) == 0


# --------------------------------------------------------------------------- CLI

def test_cli_finetune_then_evaluate(advcl_ckpt, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["finetune", "--encoder", str(advcl_ckpt), "--scheme", "alf", "--preset", "smoke", "--data", "sample",
               "--device", "cpu", "--no-progress", "--out", str(out)] + CLI_SET)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scheme"] == "alf" and metrics["best_epoch"] == 1 and "val_ra" in metrics["val_metrics"]
    assert "validation" in capsys.readouterr().out
    rc = main(["evaluate", "--model", str(out / "model.pt"), "--attack", "pgd20", "--n", "16", "--device", "cpu",
               "--preset", "smoke", "--no-progress", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 16 and r["ra"] == r["robust"] / 16 and r["scheme"] == "alf" and "steps=20" in r["attack"]
    rc = main(["evaluate", "--model", str(out / "model.pt"), "--attack", "none", "--n", "16", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and "SA " in text and "(n=16)" in text


@pytest.mark.parametrize("command", ["finetune", "evaluate"])
def test_cli_refuses_corrupt_checkpoint(command, advcl_ckpt, tmp_path, capsys):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(advcl_ckpt.read_bytes()[:300])
    args = (["--encoder", str(bad), "--scheme", "slf", "--out", str(tmp_path / "o")] if command == "finetune"
            else ["--model", str(bad), "--n", "4"])
    assert main([command, *args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(bad) in err[0] and "Traceback" not in err[0]


def test_cli_refuses_wrong_kind_and_missing(advcl_ckpt, tmp_path, capsys):
    assert main(["evaluate", "--model", str(advcl_ckpt), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'pretrain' checkpoint" in err[0] and str(advcl_ckpt) in err[0]
    assert main(["finetune", "--encoder", str(tmp_path / "nope.pt"), "--scheme", "slf", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pt" in err[0] and "does not exist" in err[0]


def test_an_interrupted_finetuning_run_resumes_to_the_same_model(advcl_ckpt, P, tmp_path, monkeypatch):
    """AFF (everything trains, BN included) for 2 epochs; a run killed in its second epoch, after its first epoch's
    state was kept, continues from resume.pt and ends with the same weights, history and best epoch; resume.pt is
    then gone."""
    Q = P.replace(ft_epochs=2)
    kw = dict(data="sample", device="cpu", progress=False)
    full = finetune(advcl_ckpt, "aff", Q, out_dir=tmp_path / "full", **kw)
    real, calls = ftm._val_metrics, []

    def dies_in_epoch_2(model, val, scheme, p, dev, epoch):
        calls.append(epoch)
        if epoch == 2:
            raise KeyboardInterrupt
        return real(model, val, scheme, p, dev, epoch)
    monkeypatch.setattr(ftm, "_val_metrics", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        finetune(advcl_ckpt, "aff", Q, out_dir=tmp_path / "cut", **kw)
    assert (tmp_path / "cut" / ftm.RESUME_NAME).exists() and not (tmp_path / "cut" / "model.pt").exists()
    calls.clear()
    monkeypatch.setattr(ftm, "_val_metrics", lambda *a: calls.append(a[-1]) or real(*a))
    resumed = finetune(advcl_ckpt, "aff", Q, out_dir=tmp_path / "cut", **kw)
    assert calls == [2]                                  # epoch 1 came from resume.pt
    assert _same_state(full.model.state_dict(), resumed.model.state_dict())
    assert resumed.best_epoch == full.best_epoch and len(resumed.history) == 2
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert not (tmp_path / "cut" / ftm.RESUME_NAME).exists()
    with pytest.raises(CheckpointError, match="another configuration"):
        monkeypatch.setattr(ftm, "_val_metrics", dies_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):   # interrupted at beta 6, continued at beta 3: refused
            finetune(advcl_ckpt, "aff", Q, out_dir=tmp_path / "cut2", **kw)
        monkeypatch.setattr(ftm, "_val_metrics", real)
        finetune(advcl_ckpt, "aff", Q.replace(trades_beta=3.0), out_dir=tmp_path / "cut2", **kw)
    # get_or_finetune (the notebooks' path) keeps that interrupted run aside and trains the one asked for
    res = get_or_finetune(advcl_ckpt, "aff", Q.replace(trades_beta=3.0, ft_epochs=1), tmp_path / "cut2", **kw)
    assert res.meta["config"]["preset"]["trades_beta"] == 3.0 and not (tmp_path / "cut2" / ftm.RESUME_NAME).exists()
    assert list((tmp_path / "cut2" / "superseded").glob(f"*/{ftm.RESUME_NAME}"))


def test_slf_on_cached_features_trains_the_head_on_features_computed_once(advcl_ckpt, P, tmp_path, monkeypatch):
    """slf_cached_features: the encoder's features of the training images are computed once, stored beside the
    model with their key, reused by a second run (the encoder is not called again), and the head learns."""
    Q = P.replace(slf_cached_features=True, ft_epochs=2)
    kw = dict(data="sample", device="cpu", progress=False)
    first = finetune(advcl_ckpt, "slf", Q, out_dir=tmp_path / "a", **kw)
    assert (tmp_path / "a" / ftm.FEATURES_NAME).exists()
    assert first.meta["config"]["preset"]["slf_cached_features"] is True
    assert first.history[-1]["loss"] < first.history[0]["loss"] + 0.5 and 0 <= first.val["val_sa"] <= 1
    monkeypatch.setattr(ftm, "extract_features", lambda *a, **k: pytest.fail("features recomputed"))
    (tmp_path / "a" / "model.pt").unlink()
    again = finetune(advcl_ckpt, "slf", Q, out_dir=tmp_path / "a", **kw)
    assert _same_state(first.model.state_dict(), again.model.state_dict())     # same features, same head
