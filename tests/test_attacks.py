"""Attacks (PGD family, band-limited PGD): they raise their objective, stay in the eps-ball and [0, 1], restore modes, fail clearly."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advcl_lite.attacks import (PGD, Attack, BandLimitedPGD, ContrastivePGD, JointPGD, PairPGD, PseudoLabelPGD,
                                TradesPGD, model_mode)
from advcl_lite.frequency import high_pass, out_of_band_fraction
from advcl_lite.losses import multiview_contrastive_loss, pseudo_label_loss
from advcl_lite.models import ContrastiveNet
from helpers import images_with_saturated_pixels, tiny_convnet

EPS, ALPHA = 8 / 255, 2 / 255


def _net(seed=0, routes=("normal", "pgd"), pseudo_ks=()):
    torch.manual_seed(seed)
    return ContrastiveNet(4, routes, proj_dim=16, pseudo_ks=pseudo_ks)


def _views(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    o = torch.rand(n, 3, 32, 32, generator=g)
    o[0].zero_()            # saturated images exercise the [0, 1] clipping
    o[1].fill_(1.0)
    t1 = torch.rand(n, 3, 32, 32, generator=g)
    t2 = torch.rand(n, 3, 32, 32, generator=g)
    return o, t1, t2, high_pass(o, 8.0)


def _cl_loss(net, x, anchors, mode):
    with torch.no_grad(), model_mode(net, mode):
        return multiview_contrastive_loss([net(x, "pgd")] + [net(a, "normal") for a in anchors], 0.5).item()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_contrastive_pgd_raises_the_loss_and_stays_in_the_ball(mode):
    net = _net()
    o, t1, t2, h = _views()
    assert h.min() < 0                      # h is signed and unclipped; anchors are not range-checked
    torch.manual_seed(0)
    x_cl = ContrastivePGD(net, EPS, ALPHA, steps=5, mode=mode)(o, anchors=[t1, t2, h])
    clean, adv = _cl_loss(net, o, [t1, t2, h], mode), _cl_loss(net, x_cl, [t1, t2, h], mode)
    assert adv > clean + 0.01, (clean, adv)
    assert (x_cl - o).abs().max() <= EPS + 1e-6
    assert x_cl.min() >= 0 and x_cl.max() <= 1
    assert not x_cl.requires_grad
    assert all(p.grad is None for p in net.parameters())      # inputs only


def test_contrastive_pgd_more_steps_raise_the_loss_further():
    net = _net()
    o, t1, t2, h = _views()
    losses = []
    for steps in (0, 1, 5):
        torch.manual_seed(0)
        x = ContrastivePGD(net, EPS, ALPHA, steps=steps, mode="eval")(o, anchors=[t1, t2, h])
        losses.append(_cl_loss(net, x, [t1, t2, h], "eval"))
    assert losses[0] < losses[1] < losses[2], losses


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_anchor_schedules_give_the_same_perturbation(mode):
    """Embedding the clean views once per batch (ours) or at every step (the original) is the same attack."""
    calls = {"n": 0}
    net = _net()
    net.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    o, t1, t2, h = _views()
    out, n_calls = {}, {}
    for recompute in (False, True):
        calls["n"] = 0
        torch.manual_seed(123)
        out[recompute] = ContrastivePGD(net, EPS, ALPHA, steps=4, recompute_anchors=recompute, mode=mode)(
            o, anchors=[t1, t2, h])
        n_calls[recompute] = calls["n"]
    assert torch.equal(out[False], out[True])
    assert n_calls == {False: 3 + 4, True: 4 * (3 + 1)}     # 3 anchors once vs at each of the 4 steps


def test_train_mode_attack_moves_only_batch_norm_statistics_and_eval_mode_none():
    net = _net()
    o, t1, t2, h = _views()
    def pgd_mean():
        return net.backbone.bn1.bns["pgd"].running_mean.clone()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ContrastivePGD(net, EPS, ALPHA, steps=2, mode="eval")(o, anchors=[t1, t2])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    m0 = pgd_mean()
    ContrastivePGD(net, EPS, ALPHA, steps=2, mode="train")(o, anchors=[t1, t2])
    assert not torch.equal(m0, pgd_mean())                   # the original's train-mode attack updates BN stats
    params_after = dict(net.named_parameters())
    assert all(torch.equal(before[k], p) for k, p in params_after.items())


@pytest.mark.parametrize("attack_mode", ["train", "eval", None])
@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_attacks_restore_every_module_mode(attack_mode, start):
    net = _net()
    net.train(start != "eval")
    if start == "mixed":                     # e.g. a frozen encoder under a training head
        net.backbone.eval()
    before = {name: m.training for name, m in net.named_modules()}
    o, t1, t2, h = _views(4)
    ContrastivePGD(net, EPS, ALPHA, 1, mode=attack_mode)(o, anchors=[t1, t2, h])
    assert {name: m.training for name, m in net.named_modules()} == before
    PairPGD(net, EPS, ALPHA, 1, mode=attack_mode)(t1, t2)
    assert {name: m.training for name, m in net.named_modules()} == before


def test_model_mode_restores_on_error():
    net = _net()
    net.train()
    with pytest.raises(RuntimeError):
        with model_mode(net, "eval"):
            assert not net.training
            raise RuntimeError("boom")
    assert net.training and all(m.training for m in net.modules())


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": 8}, r"eps=8 is outside \[0, 1\].*8/255"),
    ({"eps": -0.01}, "outside"),
    ({"alpha": 2}, r"alpha=2 is outside \[0, 1\]"),
    ({"steps": -1}, "steps=-1 must be a whole number >= 0"),
    ({"steps": 2.5}, "whole number"),
    ({"mode": "test"}, "mode must be"),
])
def test_bad_settings_raise_clear_errors(kwargs, match):
    net = _net()
    for cls in (ContrastivePGD, PGD, PseudoLabelPGD, PairPGD, TradesPGD):
        with pytest.raises(ValueError, match=match):
            cls(net, **kwargs)


def test_bad_inputs_raise_clear_errors():
    net = _net()
    o, t1, t2, h = _views(4)
    attack = ContrastivePGD(net, EPS, ALPHA, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\].*normalisation inside the model"):
        attack((o - 0.5) / 0.25, anchors=[t1, t2])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        attack(o[0], anchors=[t1, t2])
    with pytest.raises(ValueError, match="at least one anchor"):
        attack(o, anchors=[])
    with pytest.raises(ValueError, match="batch size"):
        attack(o, anchors=[t1[:2], t2])
    with pytest.raises(ValueError, match="temperature"):
        ContrastivePGD(net, temperature=0)


def test_repr_prints_every_setting():
    r = repr(ContrastivePGD(_net(), EPS, ALPHA, 5, recompute_anchors=True, mode="train"))
    for part in ("ContrastivePGD(", "eps=0.03137 (8/255)", "alpha=0.00784 (2/255)", "steps=5", "random_start=True",
                 "mode='train'", "route='pgd'", "anchor_route='normal'", "temperature=0.5", "recompute_anchors=True"):
        assert part in r, (part, r)
    r = repr(PGD(nn.Linear(2, 2), 4 / 255, 1 / 255, 20, loss="cw"))
    assert "PGD(eps=0.01569 (4/255)" in r and "steps=20" in r and "loss='cw'" in r and "mode='eval'" in r
    assert "route='pgd_ce'" in repr(PseudoLabelPGD(_net()))


def test_pseudo_label_pgd_raises_the_cross_entropy():
    net = _net(routes=("normal", "pgd", "pgd_ce"), pseudo_ks=(2, 5))
    o, *_ = _views()
    g = torch.Generator().manual_seed(0)
    targets = [torch.randint(0, 2, (8,), generator=g), torch.randint(0, 5, (8,), generator=g)]
    torch.manual_seed(0)
    x_ce = PseudoLabelPGD(net, EPS, ALPHA, 5, mode="eval")(o, targets=targets)
    with torch.no_grad(), model_mode(net, "eval"):
        clean = pseudo_label_loss(net(o, "pgd_ce", output="pseudo"), targets).item()
        adv = pseudo_label_loss(net(x_ce, "pgd_ce", output="pseudo"), targets).item()
    assert adv > clean, (clean, adv)
    assert (x_ce - o).abs().max() <= EPS + 1e-6 and x_ce.min() >= 0 and x_ce.max() <= 1


def test_pair_attack_raises_nt_xent_and_stays_in_both_balls():
    net = _net()
    _, t1, t2, _ = _views()
    def loss(a, b):
        with torch.no_grad(), model_mode(net, "eval"):
            return multiview_contrastive_loss(list(net(torch.cat([a, b]), "pgd").chunk(2)), 0.5).item()
    torch.manual_seed(0)
    a1, a2 = PairPGD(net, EPS, ALPHA, 5)(t1, t2)
    assert loss(a1, a2) > loss(t1, t2) + 0.01
    for a, x in ((a1, t1), (a2, t2)):
        assert (a - x).abs().max() <= EPS + 1e-6 and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a1 - t1, a2 - t2)         # each view has its own perturbation


def _reference_pair_attack(net, x1, x2, eps, alpha, steps, route="pgd", temperature=0.5):
    """ACL's pair attack written out: two leaves, one forward of the pair, a random start per view."""
    with model_mode(net, "eval"):
        a1 = (x1 + torch.empty_like(x1).uniform_(-eps, eps)).clamp(0, 1)
        a2 = (x2 + torch.empty_like(x2).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            a1.requires_grad_(True)
            a2.requires_grad_(True)
            z = net(torch.cat([a1, a2]), route)
            g1, g2 = torch.autograd.grad(multiview_contrastive_loss(list(z.chunk(2)), temperature), [a1, a2])
            with torch.no_grad():
                a1 = torch.min(torch.max(a1 + alpha * g1.sign(), x1 - eps), x1 + eps).clamp(0, 1)
                a2 = torch.min(torch.max(a2 + alpha * g2.sign(), x2 - eps), x2 + eps).clamp(0, 1)
    return a1, a2


def test_pair_attack_on_the_shared_loop_is_the_written_out_attack_bit_for_bit():
    net = _net()
    _, t1, t2, _ = _views()
    torch.manual_seed(3)
    want = _reference_pair_attack(net, t1, t2, EPS, ALPHA, 3)
    torch.manual_seed(3)
    got = PairPGD(net, EPS, ALPHA, 3)(t1, t2)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_every_attack_shares_the_base_call_and_a_repr_of_its_settings():
    net = _net()
    for attack in (PGD(net), TradesPGD(net), ContrastivePGD(net), PairPGD(net), PseudoLabelPGD(net)):
        assert isinstance(attack, Attack) and type(attack).__call__ is Attack.__call__
        r = repr(attack)
        assert r.startswith(type(attack).__name__ + "(eps=0.03137 (8/255), alpha=0.00784 (2/255)"), r
        assert f"mode={attack.mode!r}" in r
    with pytest.raises(ValueError, match=r"x2 must be in \[0, 1\]"):
        PairPGD(net)(_views(2)[1], _views(2)[2] + 2)
    with pytest.raises(ValueError, match="the same shape"):
        PairPGD(net)(_views(2)[1], _views(3)[2])


class _TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 4).flatten(1))


def test_pgd_lowers_the_accuracy_of_a_tiny_classifier_far_more_than_noise():
    torch.manual_seed(0)
    model = _TinyClassifier().eval()
    x = torch.rand(64, 3, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)                   # labels the model gets right: clean accuracy 100%
    def acc(z):
        with torch.no_grad():
            return (model(z).argmax(1) == y).float().mean().item()
    noise = (x + EPS * torch.randint(0, 2, x.shape).float().mul(2).sub(1)).clamp(0, 1)
    model.train()                               # the attack must put it in eval mode and restore train mode
    x_adv = PGD(model, EPS, ALPHA, steps=10)(x, y)
    assert model.training and model.bn.training
    model.eval()
    assert acc(x) == 1.0
    assert acc(x_adv) < 0.5 * acc(noise), (acc(x_adv), acc(noise))
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    x_cw = PGD(model, EPS, ALPHA, steps=10, loss="cw")(x, y)
    assert acc(x_cw) < 0.5 * acc(noise)


def test_pgd_with_zero_eps_or_zero_steps():
    model = _TinyClassifier().eval()
    x, y = torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)
    assert torch.equal(PGD(model, 0.0, ALPHA, 5)(x, y), x)
    torch.manual_seed(0)
    start = PGD(model, EPS, ALPHA, 0)(x, y)               # random start only
    assert 0 < (start - x).abs().max() <= EPS + 1e-6


def test_trades_pgd_stays_in_the_ball_and_raises_the_kl():
    torch.manual_seed(0)
    model = _TinyClassifier().eval()
    x = torch.rand(16, 3, 16, 16)
    x_adv = TradesPGD(model, EPS, ALPHA, 5)(x)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), p, reduction="batchmean").item()
    assert kl > 1e-4


# --------------------------------------------------------------------------- band-limited PGD


@pytest.mark.parametrize("band", ["low", "high", (4, 12)])
def test_band_limited_pgd_stays_in_the_ball_the_box_and_near_the_band(band):
    net = tiny_convnet()
    x = images_with_saturated_pixels()
    y = torch.arange(len(x)) % 10
    eps = 8 / 255
    x_adv = BandLimitedPGD(net, eps, 2 / 255, 5, band=band, radius=8)(x, y)
    delta = x_adv - x
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert delta.abs().max() <= eps + 1e-6
    assert delta.abs().max() > 0.5 * eps                         # it does move
    leak = out_of_band_fraction(delta, band, 8)
    assert leak.max() < 1e-3, leak.max()                         # clipping leaves little outside the band
    once = BandLimitedPGD(net, eps, 2 / 255, 5, band=band, radius=8, refine=1)(x, y) - x
    assert out_of_band_fraction(once, band, 8).mean() > 3 * leak.mean()   # the alternating projections help
    # without the perturbation being projected, a plain PGD delta is far from band-limited
    plain = PGD(net, eps, 2 / 255, 5)(x, y) - x
    assert out_of_band_fraction(plain, band, 8).mean() > 5 * leak.mean()


def test_low_band_projection_alone_is_exactly_low_pass():
    # with an eps too large to clip and images far from the box, the projection is the filter itself
    net = tiny_convnet()
    x = torch.full((4, 3, 32, 32), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    delta = BandLimitedPGD(net, eps=0.45, alpha=0.01, steps=3, band="low", radius=8)(x, y) - x
    assert delta.abs().max() < 0.45
    assert out_of_band_fraction(delta, "low", 8).max() < 1e-10


def test_full_band_is_ordinary_pgd():
    net = tiny_convnet()
    x = images_with_saturated_pixels(8)
    y = torch.arange(8) % 10
    torch.manual_seed(3)
    a = BandLimitedPGD(net, 8 / 255, 2 / 255, 3, band="full")(x, y)
    torch.manual_seed(3)
    b = PGD(net, 8 / 255, 2 / 255, 3)(x, y)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_joint_attack_is_the_two_attacks_in_turn(mode):
    net = _net(routes=("normal", "pgd", "pgd_ce"), pseudo_ks=(2, 5)).train()
    o, t1, t2, h = _views(4)
    targets = [torch.randint(0, k, (4,), generator=torch.Generator().manual_seed(k)) for k in (2, 5)]
    cl, ce = ContrastivePGD(net, EPS, ALPHA, 3, mode=mode), PseudoLabelPGD(net, EPS, ALPHA, 3, mode=mode)
    torch.manual_seed(5)
    want = cl(o, anchors=[t1, t2, h]), ce(o, targets=targets)
    state_turn = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(_net(routes=("normal", "pgd", "pgd_ce"), pseudo_ks=(2, 5)).state_dict())
    torch.manual_seed(5)
    got = JointPGD(cl, ce)(o, anchors=[t1, t2, h], targets=targets)
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= 1e-6            # the same steps (a sign tie could differ by 2 alpha)
    for k, v in net.state_dict().items():             # the same running statistics of every route
        torch.testing.assert_close(v, state_turn[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="same network"):
        JointPGD(cl, PseudoLabelPGD(net, EPS, ALPHA, 2, mode=mode))
