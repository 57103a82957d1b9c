"""Pretraining: every method learns, routes are separate, runs resume exactly, failures keep good checkpoints."""
import hashlib
import json
import math

import pytest
import torch

from advcl_lite import methods
from advcl_lite import pretrain as pt
from advcl_lite.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from advcl_lite.cli import main as cli_main
from advcl_lite.data import load_sample
from advcl_lite.models import RoutedBatchNorm2d
from advcl_lite.presets import get_preset

# tiny runs: 64 sample images, 2 steps of 32 per epoch, width-4 encoder, PGD-2 (the smoke preset's)
TINY = dict(train_subset=64, batch_size=32, base_width=4)


@pytest.fixture(scope="module")
def sample():
    return load_sample("train")


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lr_schedule_warms_up_from_one_percent_and_ends_near_one_thousandth():
    f = [pt.lr_factor(s, 10, 100) for s in range(100)]      # per step, from 0.01 to 1e-3
    assert f[0] == pytest.approx(0.01) and f[5] == pytest.approx(0.01 + 0.99 * 0.5)
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))            # cosine decays monotonically
    assert pt.lr_factor(100, 10, 100) == pytest.approx(1e-3)
    assert f[55] == pytest.approx(1e-3 + (1 - 1e-3) * 0.5, rel=1e-6)   # half-way through the cosine
    assert pt.lr_factor(0, 0, 100) == pytest.approx(1.0)


# --------------------------------------------------------------------------- whole runs

@pytest.fixture(scope="module")
def advcl_runs(sample, tmp_path_factory):
    """An uninterrupted 2-epoch AdvCL run, and the same run interrupted after epoch 1 and resumed."""
    root = tmp_path_factory.mktemp("advcl-runs")
    kw = dict(data=sample, device="cpu", progress=False, epochs=2, **TINY)
    full = pt.pretrain("advcl", "smoke", out_dir=root / "full", **kw)
    part = pt.pretrain("advcl", "smoke", out_dir=root / "resumed", max_epochs=1, ckpt_every=5, **kw)
    part.files = sorted(f.name for f in (root / "resumed").iterdir())    # before resuming
    part.labels = sorted(str(f.relative_to(root / "resumed")) for f in (root / "resumed" / "pseudo-labels").rglob("*.pt"))
    resumed = pt.pretrain("advcl", "smoke", out_dir=root / "resumed", **kw)
    return full, part, resumed, kw


def test_resuming_an_interrupted_run_reaches_the_same_weights(advcl_runs):
    full, part, resumed, _ = advcl_runs
    # stopped after epoch 1: last.pt written although ckpt_every=5, no final.pt yet
    assert part.checkpoint.name == "last.pt" and part.meta["epoch"] == 1
    assert part.files == ["history.json", "last.pt", "pseudo-labels"]   # AdvCL made its own pseudo-labels
    assert part.labels == ["pseudo-labels/pretrain/simclr/final.pt", "pseudo-labels/pretrain/simclr/last.pt",
                           "pseudo-labels/pseudo_labels/simclr.pt"]
    assert resumed.checkpoint.name == "final.pt" and resumed.meta["epoch"] == 2
    assert _states_equal(full.net, resumed.net)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    assert [h["lr"] for h in full.history] == [h["lr"] for h in resumed.history]


def test_history_json_sits_beside_the_checkpoints(advcl_runs):
    full, *_ = advcl_runs
    hist = json.loads((full.checkpoint.parent / "history.json").read_text())
    assert hist == json.loads(json.dumps(full.history))
    assert [h["epoch"] for h in hist] == [1, 2]
    for h in hist:
        assert {"loss", "loss_cl", "lr", "seconds", "images_per_s"} <= set(h)
        assert h["images_per_s"] > 0
    assert full.train_seconds == pytest.approx(sum(h["seconds"] for h in hist))


def test_advcl_routes_are_separate_and_the_encoder_loads_strictly(advcl_runs):
    full, *_ = advcl_runs
    net, meta = pt.load_pretrained(full.checkpoint)
    assert net.routes == ("normal", "pgd", "pgd_ce") and meta["eval_route"] == "pgd"
    assert meta["config"]["training"]["attack_mode"] == "train"     # the smoke preset attacks as the original
    assert meta["config"]["pseudo"] and meta["pseudo_ks"] == [2, 10]   # the original's Ks up to N/2 = 32
    assert meta["config"]["training"]["base_temperature"] == 0.07
    bns = [m for m in net.modules() if isinstance(m, RoutedBatchNorm2d)]
    assert len(bns) == 20                                           # 17 block BNs + 3 shortcut BNs
    assert all(not torch.allclose(m.bns["normal"].running_mean, m.bns["pgd"].running_mean) for m in bns)
    assert _states_equal(net, full.net)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        z = net(x, "pgd")
    assert z.shape == (5, 128)
    assert torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)


def test_mismatched_configuration_does_not_resume(advcl_runs):
    full, _, _, kw = advcl_runs
    with pytest.raises(CheckpointError, match=r"different configuration.*training\.lr: 0\.0625 -> 0\.2.*resume=False"):
        pt.pretrain("advcl", "smoke", out_dir=full.checkpoint.parent, **{**kw, "lr": 0.2})
    with pytest.raises(CheckpointError, match=r"view: 'hfc' -> 'none'"):
        pt.pretrain("advcl", "smoke", out_dir=full.checkpoint.parent, view="none", **kw)


def test_load_pretrained_is_strict(advcl_runs, tmp_path):
    full, *_ = advcl_runs
    ck = load_checkpoint(full.checkpoint)
    sd = dict(ck["state_dict"])
    sd.pop(next(iter(sd)))
    save_checkpoint(tmp_path / "missing.pt", kind="pretrain", state_dict=sd, meta=ck["meta"])
    with pytest.raises(CheckpointError, match="missing keys"):
        pt.load_pretrained(tmp_path / "missing.pt")
    save_checkpoint(tmp_path / "width.pt", kind="pretrain", state_dict=ck["state_dict"],
                    meta={**ck["meta"], "base_width": 8})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        pt.load_pretrained(tmp_path / "width.pt")
    save_checkpoint(tmp_path / "method.pt", kind="pretrain", state_dict=ck["state_dict"],
                    meta={**ck["meta"], "routes": ["normal"]})         # the architecture is rebuilt from the metadata
    with pytest.raises(CheckpointError, match="unexpected keys"):
        pt.load_pretrained(tmp_path / "method.pt")
    save_checkpoint(tmp_path / "kind.pt", kind="finetune", state_dict=ck["state_dict"], meta=ck["meta"])
    with pytest.raises(CheckpointError, match="'pretrain' checkpoint is needed"):
        pt.load_pretrained(tmp_path / "kind.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        pt.load_pretrained(tmp_path / "nothing.pt")


def test_simclr_has_one_route_and_acl_two(sample, tmp_path):
    kw = dict(data=sample, device="cpu", progress=False, epochs=1, **TINY)
    simclr = pt.pretrain("simclr", "smoke", out_dir=tmp_path / "s", **kw)
    assert simclr.net.routes == ("normal",) and simclr.meta["eval_route"] == "normal"
    assert simclr.meta["head"] == "acl" and simclr.meta["config"]["training"]["acl_optimizer"] == "lars"
    acl = pt.pretrain("acl", "smoke", out_dir=tmp_path / "a", **kw)
    assert acl.net.routes == ("normal", "pgd") and acl.meta["eval_route"] == "pgd"
    assert acl.meta["head"] == "acl" and not (tmp_path / "a" / "pseudo-labels").exists()
    assert acl.meta["config"]["training"]["attack_mode"] == "eval"     # ACL's original attacks in eval mode
    assert set(acl.history[0]) >= {"loss", "loss_clean", "loss_adv"}


# --------------------------------------------------------------------------- failures keep good checkpoints

def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(sample, tmp_path, monkeypatch):
    kw = dict(data=sample, device="cpu", progress=False, epochs=2, **TINY)
    pt.pretrain("simclr", "smoke", out_dir=tmp_path, max_epochs=1, **kw)
    last = tmp_path / "last.pt"
    digest = _sha(last)
    real_view = methods.simclr_view
    monkeypatch.setattr(methods, "simclr_view", lambda x, g=None: real_view(x, g) * float("nan"))
    with pytest.raises(pt.NonFiniteLossError, match=r"non-finite loss.*epoch 2.*last good checkpoint .*last\.pt"):
        pt.pretrain("simclr", "smoke", out_dir=tmp_path, **kw)
    assert _sha(last) == digest
    assert load_checkpoint(last)["meta"]["epoch"] == 1
    assert not (tmp_path / "final.pt").exists()
    assert len(json.loads((tmp_path / "history.json").read_text())) == 1
    monkeypatch.undo()
    done = pt.pretrain("simclr", "smoke", out_dir=tmp_path, **kw)          # resumes from the good state
    assert done.meta["epoch"] == 2 and done.checkpoint.name == "final.pt"


def test_non_finite_weights_are_never_written(sample, tmp_path):
    # lr = inf: the first loss is finite, the update makes the weights inf/NaN, the save must refuse. The
    # preset refuses lr=inf where it enters (--set, get_preset); a Preset built past that check still must
    # never write non-finite weights
    import dataclasses
    P = dataclasses.replace(get_preset("smoke", epochs=1, train_subset=32, batch_size=32, base_width=4),
                            lr=float("inf"))
    with pytest.raises(pt.NonFiniteLossError, match=r"weights .* non-finite.*nothing was written.*this run wrote no checkpoint yet"):
        pt.pretrain("advcl", P, out_dir=tmp_path, data=sample, device="cpu", progress=False, pseudo_labels=False)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "final.pt").exists()


# --------------------------------------------------------------------------- get_or_train and the CLI

def test_get_or_train_reuses_a_finished_run_and_retrains_on_change(sample, tmp_path):
    P = get_preset("smoke", epochs=1, **TINY)
    first = pt.get_or_train("simclr", P, tmp_path, data=sample, device="cpu", progress=False)
    assert not first.cached and first.checkpoint == tmp_path / "pretrain" / "simclr" / "final.pt"
    again = pt.get_or_train("simclr", P, tmp_path, data=sample, device="cpu", progress=False)
    assert again.cached and _states_equal(first.net, again.net) and again.history == json.loads(
        json.dumps(first.history))
    # finetuning/evaluation settings do not change a pretraining run
    assert pt.get_or_train("simclr", P.replace(eval_n=7, ft_epochs=3), tmp_path, data=sample, device="cpu",
                           progress=False).cached
    # AdvCL's SGD lr does not enter a LARS run; ACL's lr does
    assert pt.get_or_train("simclr", P, tmp_path, data=sample, device="cpu", progress=False, lr=0.05).cached
    changed = pt.get_or_train("simclr", P, tmp_path, data=sample, device="cpu", progress=False, acl_lr=0.05)
    assert not changed.cached and not _states_equal(first.net, changed.net)
    assert load_checkpoint(changed.checkpoint)["meta"]["config"]["training"]["acl_lr"] == 0.05
    # the run it replaced is set aside, not deleted
    (kept,) = (tmp_path / "pretrain" / "simclr" / "superseded").iterdir()
    assert load_checkpoint(kept / "final.pt")["meta"]["config"]["training"]["acl_lr"] == P.acl_lr
    assert (kept / "history.json").exists()


def test_get_or_train_starts_over_when_a_partial_run_has_another_configuration(sample, tmp_path):
    P = get_preset("smoke", epochs=2, **TINY)
    out = tmp_path / "pretrain" / "simclr"
    pt.pretrain("simclr", P.replace(acl_lr=0.3), out_dir=out, data=sample, device="cpu", progress=False, max_epochs=1)
    res = pt.get_or_train("simclr", P, tmp_path, data=sample, device="cpu", progress=False)
    assert not res.cached and res.meta["epoch"] == 2
    assert load_checkpoint(res.checkpoint)["meta"]["config"]["training"]["acl_lr"] == P.acl_lr


def test_bad_arguments_raise_clear_errors(sample, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'moco'"):
        pt.pretrain("moco", "smoke", out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown view 'mid'"):
        pt.pretrain("advcl", "smoke", out_dir=tmp_path, view="mid")
    with pytest.raises(ValueError, match="AdvCL only"):
        pt.pretrain("simclr", "smoke", out_dir=tmp_path, data=sample, pseudo_labels=tmp_path / "x.pt")
    with pytest.raises(ValueError, match="unknown preset field 'epoch'"):
        pt.pretrain("simclr", "smoke", out_dir=tmp_path, epoch=3)


def test_cli_pretrain_at_smoke(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--preset", "smoke", "--method", "advcl", "--view", "none", "--out", str(out),
            "--device", "cpu", "--no-progress", "--recompute-anchors", "--no-pseudo-labels",
            "--set", "train_subset=64", "--set", "batch_size=32", "--set", "base_width=4"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'final.pt'} (epoch 1/1, final loss" in printed
    net, meta = pt.load_pretrained(out / "final.pt")
    assert meta["run_name"] == "advcl-none-nopl" and meta["recompute_anchors"] is True and meta["view"] == "none"
    assert meta["pseudo_ks"] == [] and not meta["config"]["pseudo"] and "pgd_ce" not in meta["routes"]
    assert (out / "history.json").exists()
    # a different configuration into the same folder is one clear error line (exit 2)
    assert cli_main(args + ["--set", "lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "different configuration" in err and "--no-resume" in err
    assert cli_main(args + ["--set", "lr=0.5", "--no-resume"]) == 0


# --------------------------------------------------------------------------- the notebook

@pytest.mark.slow
def test_notebook_02_smoke(run_nb):
    rec = run_nb("02")
    for m in ("simclr", "acl", "advcl"):
        assert math.isfinite(rec[f"{m}_final_loss"]) and rec[f"{m}_final_loss"] > 0, m
        assert rec[f"{m}_seconds"] > 0 and rec[f"{m}_images_per_s"] > 0, m
    assert rec["preset"] == "smoke"
    assert rec["x_cl_linf"] <= 8 / 255 + 1e-6
    assert rec["attack_loss_gain"] > 0             # x_cl raised the 4-view loss above the clean o
    assert rec["h_min"] < 0 < rec["h_max"]         # h is signed, unclipped


# --------------------------------------------------------------------------- fidelity to the original codes


def test_presets_keep_the_originals_method_settings():
    for name in ("smoke", "quick", "benchmark", "paper"):
        p = get_preset(name)
        assert (p.pgd_steps, p.attack_mode, p.base_temperature, p.pseudo_lambda) == (5, "train", 0.07, 0.2), name
        assert p.pseudo_ks == (2, 10, 50, 100, 500) and p.acl_optimizer == "lars" and p.acl_head == "acl", name
        assert (p.ft_pgd_steps, p.eval_pgd_steps) == (10, 20), name
        assert p.amp == "none", f"{name}: the originals train in fp32; bf16 is the switch --set amp=bf16"
        assert p.warmup_epochs == pytest.approx(p.epochs / 100) or name == "smoke", name
        assert p.lr == pytest.approx(0.5 * p.batch_size / 512) and p.acl_lr == pytest.approx(5.0 * p.batch_size / 512)
    assert get_preset("paper").advcl_lr_per_epoch is True


def test_advcl_builds_pseudo_label_heads_by_default_and_the_ablation_is_explicit(sample, tmp_path):
    P = get_preset("smoke", epochs=1, **TINY)
    with_pl = pt.get_or_train("advcl", P, tmp_path, data=sample, device="cpu", progress=False)
    assert with_pl.checkpoint == tmp_path / "pretrain" / "advcl" / "final.pt"
    assert with_pl.net.pseudo_ks == (2, 10) and "pgd_ce" in with_pl.net.routes
    assert (tmp_path / "pretrain" / "simclr" / "final.pt").exists()          # the labels' source encoder
    assert (tmp_path / "pseudo_labels" / "simclr.pt").exists()
    assert set(with_pl.history[0]) >= {"loss", "loss_cl", "loss_ps"}
    without = pt.get_or_train("advcl", P, tmp_path, data=sample, device="cpu", progress=False, pseudo_labels=False)
    assert without.checkpoint == tmp_path / "pretrain" / "advcl-nopl" / "final.pt"
    assert without.net.pseudo_ks == () and "pgd_ce" not in without.net.routes
    with pytest.raises(ValueError, match="labels_dir=.*pseudo_labels=False"):
        pt.ensure_pseudo_labels(pt.plan_run("advcl", P, sample), None)


def test_auto_pseudo_labels_never_replace_a_simclr_run_of_another_configuration(sample, tmp_path):
    P = get_preset("smoke", epochs=1, **TINY)
    mine = pt.get_or_train("simclr", P.replace(acl_lr=0.3), tmp_path, data=sample, device="cpu", progress=False)
    digest = _sha(mine.checkpoint)
    with pytest.raises(ValueError, match=r"was trained with another configuration.*acl_lr.*--pseudo-labels FILE"):
        pt.get_or_train("advcl", P, tmp_path, data=sample, device="cpu", progress=False)
    assert _sha(mine.checkpoint) == digest


def test_a_run_is_planned_without_training_and_its_labels_are_a_visible_step(sample, tmp_path, monkeypatch):
    """plan_run checks and describes a run and trains nothing; only ensure_pseudo_labels makes AdvCL's labels."""
    monkeypatch.setattr(pt, "_train", lambda *a, **k: pytest.fail("planning trained something"))
    spec = pt.plan_run("advcl", get_preset("smoke", **TINY), sample)
    assert spec.needs_labels and spec.name == "advcl" and spec.folder(tmp_path) == tmp_path / "pretrain" / "advcl"
    with pytest.raises(ValueError, match="ensure_pseudo_labels"):
        spec.config()
    nopl = pt.plan_run("advcl", get_preset("smoke", **TINY), sample, pseudo_labels=False)
    assert nopl.name == "advcl-nopl" and nopl.config()["pseudo"] is False
    assert pt.ensure_pseudo_labels(nopl, None) is nopl
    assert not (tmp_path / "pretrain").exists()
    with pytest.raises(ValueError, match="unknown method"):
        pt.plan_run("moco", "smoke", sample)
