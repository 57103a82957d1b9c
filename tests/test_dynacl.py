"""DynACL and AIR (issue 32): the schedule of the released code, the strength-scaled view, the momentum copy,
AIR's regularisers as released, and a DynACL run that resumes to the same weights and exports the copy."""
import math

import pytest
import torch

from advcl_lite import pretrain as pt
from advcl_lite.data import load_sample
from advcl_lite.losses import air_regularizers
from advcl_lite.methods import DynACL, dynacl_period, dynacl_strength, dynacl_weight, make_step
from advcl_lite.methods import build_net
from advcl_lite.models import IMAGENET_NORM, export_encoder, load_pretrained
from advcl_lite.presets import get_preset
from advcl_lite.views import dynamic_view, random_flip, random_resized_crop

TINY = dict(train_subset=64, batch_size=32, base_width=4, pgd_steps=2)


@pytest.fixture(scope="module")
def sample():
    return load_sample("train")


def test_the_schedule_at_paper_scale_is_the_released_codes():
    # train_DynACL.py, 1000 epochs, reload every 50: strength 1.0 for epochs 1-50, 0.95 from 51; w steps at 50
    assert dynacl_period(1000, 20) == 50
    assert [dynacl_strength(e, 1000) for e in (1, 50, 51, 100, 101, 1000)] == pytest.approx([1, 1, .95, .95, .9, .05])
    assert [dynacl_weight(e, 1000) for e in (1, 49, 50, 51, 1000)] == pytest.approx([0, 0, 1 / 30, 1 / 30, 2 / 3])
    # AIR's code: w in step with the strength
    assert dynacl_weight(50, 1000, air=True) == 0 and dynacl_weight(51, 1000, air=True) == pytest.approx(2 / 3 * .05)


def test_the_period_scales_with_the_run_and_keeps_at_least_one_epoch():
    assert dynacl_period(5, 20) == 1 and dynacl_period(40, 20) == 2 and dynacl_period(100, 20) == 5
    assert [dynacl_strength(e, 5) for e in range(1, 6)] == pytest.approx([1, .8, .6, .4, .2])
    s = [dynacl_strength(e, 40) for e in range(1, 41)]
    assert s == sorted(s, reverse=True) and len(set(s)) == 20 and s[0] == 1


def test_dynamic_view_at_strength_zero_only_crops_and_flips(sample):
    x = sample.tensors(8)[0]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    v = dynamic_view(x, g1, 0.0)
    ref = random_flip(random_resized_crop(x, scale=(1.0, 1.0), g=g2), 0.5, g2)
    assert torch.equal(v, ref)                       # no jitter, no grayscale at s = 0
    strong = dynamic_view(x, torch.Generator().manual_seed(3), 1.0)
    assert not torch.allclose(strong, v)
    with pytest.raises(ValueError, match="strength"):
        dynamic_view(x, None, 1.5)


def test_air_regularizers_compute_what_the_released_code_computes():
    torch.manual_seed(0)
    zi, zj, zo, ai, aj = (torch.nn.functional.normalize(torch.randn(6, 5), dim=1).requires_grad_() for _ in range(5))
    sir, air = air_regularizers(zi, zj, zo, ai, aj, 0.5)
    s = lambda a, b: (a * b).sum(1) / 0.5
    p_i, p_j = s(zi, zo).softmax(0), s(zj, zo).softmax(0)
    assert sir.item() == pytest.approx((p_j * (p_j.log() - p_i)).sum().item(), rel=1e-5)
    q_i = s(ai, zo).softmax(0) * s(ai, zi).softmax(0)
    q_j = s(aj, zo).softmax(0) * s(aj, zj).softmax(0)
    assert air.item() == pytest.approx((q_j * (q_j.log() - q_i)).sum().item(), rel=1e-5)
    (sir + air).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (zi, zj, zo, ai, aj))   # nothing detached


@pytest.mark.parametrize("air, momentum", [(False, 0.99), (True, 0.0)])
def test_dynacl_lowers_its_loss_and_the_copy_follows_by_momentum(sample, air, momentum):
    x = sample.tensors(16)[0]
    P = get_preset("smoke", base_width=4, pgd_steps=2, air=air, dynacl_momentum=momentum, epochs=5)
    torch.manual_seed(0)
    net = build_net("dynacl", 4, (), "acl", momentum_copy=momentum > 0).train()
    step = make_step("dynacl", net, P)
    assert isinstance(step, DynACL) and step.view.strength == 1.0 and step.weight == pytest.approx(0 if air else 2 / 15)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    g, losses = torch.Generator(), []
    for _ in range(8):
        g.manual_seed(0)
        torch.manual_seed(1)
        if momentum:
            q0 = net.backbone.conv1.weight.detach().clone()
            k0 = net.key.backbone.conv1.weight.detach().clone()
        out = step(x, g)
        if momentum:     # updated after the forward, before the optimiser step, from the pre-step weights
            assert torch.allclose(net.key.backbone.conv1.weight, 0.99 * k0 + 0.01 * q0, atol=1e-7)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, losses
    if air:
        assert set(out) == {"loss", "loss_clean", "loss_adv", "loss_sir", "loss_air"}
        w = step.weight
        want = (1 - w) * out["loss_clean"] + (1 + w) * out["loss_adv"] + 0.5 * out["loss_sir"] + 0.5 * out["loss_air"]
        assert out["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    else:
        assert all(p.grad is None for p in net.key.parameters())       # the copy takes no gradient


def test_acl_with_air_sums_its_terms_and_without_it_is_unchanged(sample):
    x = sample.tensors(8)[0]
    torch.manual_seed(0)
    net = build_net("acl", 4, (), "acl").train()
    out = make_step("acl", net, get_preset("smoke", pgd_steps=1, air=True))(x, torch.Generator().manual_seed(0))
    want = out["loss_clean"] + out["loss_adv"] + 0.5 * (out["loss_sir"] + out["loss_air"])
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-5)


def test_a_momentum_setting_that_does_not_match_the_network_is_refused():
    with pytest.raises(ValueError, match="momentum_copy=True"):
        make_step("dynacl", build_net("dynacl", 4, (), "acl"), get_preset("smoke", dynacl_momentum=0.99))


def test_the_momentum_copy_is_the_released_default_at_paper_scale_and_off_at_the_cpu_presets():
    assert get_preset("paper").dynacl_momentum == 0.99
    assert all(get_preset(n).dynacl_momentum == 0.0 for n in ("smoke", "quick", "benchmark"))


def test_a_dynacl_run_resumes_to_the_same_weights_and_exports_the_momentum_copy(sample, tmp_path):
    kw = dict(data=sample, device="cpu", progress=False, epochs=2, dynacl_momentum=0.99, **TINY)
    full = pt.pretrain("dynacl", "smoke", out_dir=tmp_path / "full", **kw)
    part = pt.pretrain("dynacl", "smoke", out_dir=tmp_path / "part", max_epochs=1, **kw)
    assert len(part.history) == 1
    resumed = pt.pretrain("dynacl", "smoke", out_dir=tmp_path / "part", **kw)
    sa, sb = full.net.state_dict(), resumed.net.state_dict()
    assert sa.keys() == sb.keys() and any(k.startswith("key.") for k in sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["strength"] for h in full.history] == pytest.approx([1.0, 0.5])
    assert [h["w"] for h in full.history] == pytest.approx([1 / 3, 2 / 3])
    net, meta = load_pretrained(full.checkpoint)
    assert meta["run_name"] == "dynacl" and meta["eval_route"] == "pgd" and meta["momentum_copy"]
    enc = export_encoder(net, "pgd")
    assert torch.equal(enc.conv1.weight, net.key.backbone.conv1.weight)
    assert not torch.equal(enc.conv1.weight, net.backbone.conv1.weight)
    assert enc.input_norm == tuple(list(v) for v in IMAGENET_NORM)
    air = pt.pretrain("dynacl", "smoke", out_dir=tmp_path / "air", air=True, max_epochs=1, **{**kw, "dynacl_momentum": 0.0})
    assert pt.run_name("dynacl", air=True) == "dynacl-air" and air.meta["config"]["training"]["air"] is True
    assert "loss_sir" in air.history[0] and not hasattr(air.net, "key")


@pytest.mark.slow
def test_notebook_06_smoke_trains_both_methods_and_reads_the_shipped_records(run_nb):
    """The tour runs this at smoke in CI (.ci/run); here it costs 26 s, so it is a slow test."""
    from advcl_lite.results import shipped_records
    rec = run_nb("06")
    assert set(rec["trained_here"]) == {"DynACL", "DynACL-AIR"}
    assert all(0 <= r["ra"] <= r["sa"] <= 1 and r["n"] == 64 for r in rec["trained_here"].values())
    assert rec["shipped_methods_records"] == len(shipped_records("methods"))
    spread = rec["leaderboard_spread_points"]        # the published AFF column is the narrowest
    assert spread["AFF"] < spread["ALF"] < spread["SLF"]


def test_the_per_epoch_cosine_warms_up_as_released_and_never_exceeds_the_base_lr():
    from advcl_lite.methods import per_epoch_cosine
    # train_DynACL.py: 10 warm-up epochs of 1000, (e + 1) / 10, then the cosine from 1 to 1e-6 / lr
    assert [per_epoch_cosine(e, 1000, 10, 1e-6) for e in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert per_epoch_cosine(10, 1000, 10, 1e-6) == pytest.approx(1.0)
    assert per_epoch_cosine(999, 1000, 10, 1e-6) < 1e-4
    # the CPU presets' warm-up (1 % of a 5-epoch run) is shorter than an epoch: no factor above 1
    f = [per_epoch_cosine(e, 5, 0.05, 1e-6) for e in range(5)]
    assert max(f) <= 1.0 and f == sorted(f, reverse=True)


def test_under_torchrun_with_syncbn_the_momentum_copy_still_takes_no_gradient(sample, monkeypatch):
    """convert_sync_batchnorm builds new BN parameters that take gradients; the copy's must not (DDP, with
    find_unused_parameters off, would wait for them at the second step)."""
    from advcl_lite import distributed
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    P = get_preset("smoke", dynacl_momentum=0.99, **TINY)
    state, _ = pt._training_state("dynacl", P, pt.pretrain_dataset(P, sample), None, torch.device("cpu"), True)
    key = state.net.key
    assert any(type(m).__name__ == "SyncedBatchNorm" for m in key.modules())
    assert not any(p.requires_grad for p in key.parameters())
    assert any(p.requires_grad for n, p in state.net.named_parameters() if not n.startswith("key."))


def test_air_is_refused_where_it_does_not_apply_and_names_the_cli_folder(sample, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="acl or dynacl, not to advcl"):
        pt.plan_run("advcl", get_preset("smoke", air=True), sample, pseudo_labels=False)
    from advcl_lite.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--method", "dynacl", "--preset", "smoke", "--set", "air=true", "--set", "epochs=1",
                 "--set", "train_subset=32", "--set", "batch_size=16", "--set", "base_width=4", "--set", "pgd_steps=1",
                 "--no-progress", "--device", "cpu"]) == 0
    assert (tmp_path / "runs" / "smoke" / "pretrain" / "dynacl-air" / "final.pt").exists()   # as get_or_train names it


def test_notebook_06_without_training_draws_the_leaderboard_and_the_shipped_records(run_nb):
    from advcl_lite.results import shipped_records
    rec = run_nb("06", train_here=False)
    assert "trained_here" not in rec and rec["shipped_methods_records"] == len(shipped_records("methods")) >= 8
    spread = rec["leaderboard_spread_points"]
    assert spread["AFF"] < spread["ALF"] < spread["SLF"]
