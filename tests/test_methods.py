"""The methods' steps: each lowers its loss, AdvCL's loss is the original's composition, the attacks
move the BN statistics the originals move, and each step draws its views in the original's order."""
import math

import pytest
import torch

from advcl_lite.attacks import ContrastivePGD, PairPGD, PseudoLabelPGD
from advcl_lite.data import load_sample
from advcl_lite.methods import ACL_ATTACK_MODE, EVAL_ROUTE, METHOD_CLASSES, METHODS, AdvCL, build_net, make_step
from advcl_lite.models import RoutedBatchNorm2d
from advcl_lite.presets import get_preset
from advcl_lite.views import crop_flip, simclr_view


@pytest.fixture(scope="module")
def sample():
    return load_sample("train")


@pytest.mark.parametrize("method, view, ks", [
    ("simclr", "hfc", ()),
    ("acl", "hfc", ()),
    ("advcl", "hfc", ()),
    ("advcl", "none", ()),          # view ablation: no fourth view
    ("advcl", "lfc", (2, 5)),       # LFC ablation, with pseudo-label heads
])
def test_each_method_lowers_its_loss_on_a_fixed_batch(sample, method, view, ks):
    x = sample.tensors(16)[0]
    P = get_preset("smoke", base_width=4, pgd_steps=2, lr=0.05)
    torch.manual_seed(0)
    net = build_net(method, 4, ks).train()
    step = make_step(method, net, P, view, 8.0, use_pseudo=bool(ks))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator()
    targets = [torch.randint(0, k, (16,), generator=g.manual_seed(k)) for k in ks] or None
    losses = []
    for _ in range(8):
        g.manual_seed(0)                 # the same views and the same attack starts at every step
        torch.manual_seed(1)
        out = step(x, g, targets)
        assert out["loss"].dtype == torch.float32 and out["loss"].ndim == 0
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, losses
    expected = {"simclr": {"loss"}, "acl": {"loss", "loss_clean", "loss_adv"},
                "advcl": {"loss", "loss_cl"} | ({"loss_ps"} if ks else set())}[method]
    assert set(out) == expected
    if method == "acl":
        assert out["loss"].item() == pytest.approx(0.5 * (out["loss_clean"] + out["loss_adv"]).item(), rel=1e-6)


def test_advcl_step_runs_under_bf16_autocast_with_float32_losses(sample):
    x = sample.tensors(8)[0]
    P = get_preset("smoke", base_width=4, pgd_steps=1, amp="bf16", channels_last=False)
    torch.manual_seed(0)
    net = build_net("advcl", 4).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = make_step("advcl", net, P)(x, torch.Generator().manual_seed(0))
    assert out["loss"].dtype == torch.float32 and math.isfinite(out["loss"].item())
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def _route_stats(net, route):
    return [m.bns[route].running_mean.clone() for m in net.modules() if isinstance(m, RoutedBatchNorm2d)]


def _moved(before, after):
    return any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("attack_mode", ["train", "eval"])
def test_advcl_attack_mode_decides_whether_running_statistics_move(sample, attack_mode):
    """Train mode (the original's net.train()) updates the attacked routes' running statistics, eval mode does not."""
    x = sample.tensors(8)[0]
    torch.manual_seed(0)
    net = build_net("advcl", 4, (2, 5)).train()
    t1, t2, o = x, x.flip(3), x.roll(1, 2)
    before = {r: _route_stats(net, r) for r in ("normal", "pgd", "pgd_ce")}
    ContrastivePGD(net, 8 / 255, 2 / 255, 2, mode=attack_mode)(o, anchors=[t1, t2])
    PseudoLabelPGD(net, 8 / 255, 2 / 255, 2, mode=attack_mode)(o, targets=[torch.zeros(8, dtype=torch.long)] * 2)
    after = {r: _route_stats(net, r) for r in ("normal", "pgd", "pgd_ce")}
    for r in ("normal", "pgd", "pgd_ce"):
        assert _moved(before[r], after[r]) == (attack_mode == "train"), r
    assert net.training                                    # the attack restores the mode


def test_acl_attack_leaves_running_statistics_unchanged(sample):
    x = sample.tensors(8)[0]
    net = build_net("acl", 4, head="acl").train()
    before = {r: _route_stats(net, r) for r in ("normal", "pgd")}
    PairPGD(net, 8 / 255, 2 / 255, 2, mode=ACL_ATTACK_MODE)(x, x.flip(3))
    assert all(not _moved(before[r], _route_stats(net, r)) for r in ("normal", "pgd"))


def test_advcl_loss_is_the_originals_composition(sample):
    """L = (tau / base_temperature) * L_CL + lambda * L_PS, as pretraining_advCL.py with SupConLoss."""
    x = sample.tensors(8)[0]
    ks = (2, 5)
    targets = [torch.randint(0, k, (8,), generator=torch.Generator().manual_seed(k)) for k in ks]
    for base_t, scale in ((0.07, 0.5 / 0.07), (0.5, 1.0)):
        P = get_preset("smoke", base_width=4, pgd_steps=1, base_temperature=base_t)
        torch.manual_seed(0)
        net = build_net("advcl", 4, ks).train()
        out = make_step("advcl", net, P, use_pseudo=True)(x, torch.Generator().manual_seed(0), targets)
        assert out["loss"].item() == pytest.approx(scale * out["loss_cl"].item() + 0.2 * out["loss_ps"].item(),
                                                   rel=1e-6)


def test_every_method_has_a_class_and_unknown_names_are_refused():
    assert tuple(METHOD_CLASSES) == METHODS and set(EVAL_ROUTE) == set(METHODS)
    P = get_preset("smoke", base_width=4)
    with pytest.raises(ValueError, match="unknown method 'moco'"):
        make_step("moco", build_net("simclr", 4), P)
    with pytest.raises(ValueError, match="unknown view 'mid'"):
        make_step("advcl", build_net("advcl", 4), P, view="mid")
    assert "PairPGD(" in repr(make_step("acl", build_net("acl", 4), P))


def test_advcl_draws_t1_t2_then_o_from_one_generator(sample):
    x = sample.tensors(8)[0]
    step = AdvCL(build_net("advcl", 4), get_preset("smoke", base_width=4))
    got = step.views(x, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    want = [simclr_view(x, g), simclr_view(x, g), crop_flip(x, g)]
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, want))


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("view, ks", [("hfc", ()), ("hfc", (2, 5)), ("none", ())])
def test_batched_update_forward_equals_separate_forwards(sample, view, ks):
    """One backbone pass over the update's views, each BN chunk on its own route: the same losses, gradients
    and running statistics as a forward per view (the original's)."""
    x = sample.tensors(8)[0]
    targets = [torch.randint(0, k, (8,), generator=torch.Generator().manual_seed(k)) for k in ks] or None
    P = get_preset("smoke", base_width=4, pgd_steps=2, channels_last=False)
    out, grads, states = {}, {}, {}
    for batched in (False, True):
        torch.manual_seed(0)
        net = build_net("advcl", 4, ks).train()
        step = AdvCL(net, P, view=view, use_pseudo=bool(ks), batched=batched)
        torch.manual_seed(1)
        out[batched] = step(x, torch.Generator().manual_seed(0), targets)
        out[batched]["loss"].backward()
        grads[batched], states[batched] = _grads(net), net.state_dict()
    assert out[True].keys() == out[False].keys()
    for k in out[False]:
        torch.testing.assert_close(out[True][k], out[False][k], rtol=1e-5, atol=1e-6)
    assert grads[True].keys() == grads[False].keys()
    for k in grads[False]:
        torch.testing.assert_close(grads[True][k], grads[False][k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    for k, v in states[False].items():
        torch.testing.assert_close(states[True][k], v, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_views_forward_refuses_a_route_the_network_lacks():
    net = build_net("advcl", 4)
    with pytest.raises(ValueError, match="unknown BN route 'pgd_ce'"):
        net([torch.rand(2, 3, 8, 8)] * 2, ["normal", "pgd_ce"])
    assert all(m.chunks is None for m in net.modules() if isinstance(m, RoutedBatchNorm2d))


def test_a_new_method_is_one_class_registered_in_one_place(monkeypatch, tmp_path):
    """A toy method (SimCLR on two crop+flip views, its own run name) defined here and registered in
    METHOD_CLASSES trains, checkpoints and loads back through pretrain() with nothing else edited."""
    from advcl_lite import methods as mm
    from advcl_lite.models import load_pretrained
    from advcl_lite.pretrain import pretrain
    from advcl_lite.views import MultiView

    class CropFlipCL(mm.SimCLR):
        name = "cropflip"

        def __init__(self, net, preset):
            super().__init__(net, preset)
            self.augment = MultiView(crop_flip, crop_flip)

        @classmethod
        def run_name(cls, view="hfc", pseudo=True, radius=None, air=False):
            return "crop-flip-cl"

    monkeypatch.setitem(mm.METHOD_CLASSES, "cropflip", CropFlipCL)
    run = pretrain("cropflip", "smoke", out_dir=tmp_path, data="sample", device="cpu", progress=False,
                   train_subset=64, batch_size=32, base_width=4, epochs=2)
    assert run.meta["run_name"] == "crop-flip-cl" and run.meta["config"]["method"] == "cropflip"
    assert run.history[-1]["loss"] < run.history[0]["loss"] + 1.0 and len(run.history) == 2
    net, meta = load_pretrained(run.checkpoint)
    assert net.routes == ("normal",) and meta["eval_route"] == "normal"
