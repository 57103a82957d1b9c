"""The multi-view contrastive loss against a direct per-pair computation, and its invariances."""
import math

import pytest
import torch
import torch.nn.functional as F

from advcl_lite.losses import multiview_contrastive_loss, nt_xent, pseudo_label_loss, trades_kl


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _reference(views, tau):
    """The multi-view loss, one anchor and one positive at a time, in plain Python loops."""
    nv, b = len(views), views[0].shape[0]
    items = [(v, i) for v in range(nv) for i in range(b)]          # (view, image) of every embedding
    total = 0.0
    for (va, ia) in items:
        za = views[va][ia]
        denom = sum(math.exp(float(za @ views[vk][ik]) / tau) for (vk, ik) in items if (vk, ik) != (va, ia))
        terms = [-math.log(math.exp(float(za @ views[vp][ia]) / tau) / denom) for vp in range(nv) if vp != va]
        total += sum(terms) / len(terms)
    return total / len(items)


@pytest.mark.parametrize("nv", [2, 3, 4])
@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_matches_per_pair_reference(nv, tau):
    views = list(_unit(nv, 5, 8, seed=nv).unbind(0))
    got = multiview_contrastive_loss(views, tau)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_reference(views, tau), rel=1e-5)


def test_per_anchor_reduction_averages_to_the_loss():
    views = list(_unit(3, 4, 6).unbind(0))
    per = multiview_contrastive_loss(views, 0.5, reduction="none")
    assert per.shape == (12,)
    assert per.mean().item() == pytest.approx(multiview_contrastive_loss(views, 0.5).item(), rel=1e-6)
    assert bool((per > 0).all())


def test_invariant_to_view_order_and_batch_order():
    views = list(_unit(4, 6, 8, seed=3).unbind(0))
    base = multiview_contrastive_loss(views, 0.5)
    for order in ([3, 1, 0, 2], [1, 0, 2, 3], [2, 3, 1, 0]):
        assert torch.allclose(multiview_contrastive_loss([views[i] for i in order], 0.5), base, atol=1e-6)
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    assert torch.allclose(multiview_contrastive_loss([v[perm] for v in views], 0.5), base, atol=1e-6)
    # permuting one view alone breaks the pairing, so the loss must change
    assert not torch.allclose(multiview_contrastive_loss([views[0][perm]] + views[1:], 0.5), base, atol=1e-3)


def _nt_xent_independent(z1, z2, tau):
    """SimCLR's NT-Xent written the textbook way: 2B-way cross-entropy with the other view as the label."""
    b = z1.shape[0]
    z = torch.cat([z1, z2]).double()
    logits = z @ z.t() / tau
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(logits, target)


def test_two_views_equal_nt_xent():
    z1, z2 = _unit(2, 7, 16, seed=5).unbind(0)
    ref = _nt_xent_independent(z1, z2, 0.5).item()
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(ref, rel=1e-5)
    assert multiview_contrastive_loss([z1, z2], 0.5).item() == pytest.approx(ref, rel=1e-5)


def test_aligned_views_give_a_lower_loss_than_random_ones():
    z = _unit(8, 16, seed=1)
    noise = _unit(8, 16, seed=2)
    aligned = multiview_contrastive_loss([z, z, z], 0.5)
    unrelated = multiview_contrastive_loss([z, noise, _unit(8, 16, seed=3)], 0.5)
    assert aligned < unrelated


def test_gradient_is_finite_and_float32_under_bf16_autocast():
    z1, z2, z3 = (t.float().requires_grad_(True) for t in _unit(3, 6, 8, seed=4).unbind(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = multiview_contrastive_loss([z1, z2, z3], 0.5)
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in (z1, z2, z3))
    ref = multiview_contrastive_loss([z1.detach(), z2.detach(), z3.detach()], 0.5)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("views, kwargs, match", [
    ([torch.zeros(4, 8)], {}, "at least 2 views"),
    ([torch.zeros(4, 8), torch.zeros(3, 8)], {}, "same shape"),
    ([torch.zeros(4, 8), torch.zeros(4, 6)], {}, "same shape"),
    ([torch.zeros(4, 8, 1), torch.zeros(4, 8, 1)], {}, r"\(B, d\)"),
    (torch.zeros(2, 4, 8), {}, "list of"),
    ([torch.zeros(4, 8), torch.zeros(4, 8)], {"temperature": 0.0}, "temperature"),
    ([torch.zeros(4, 8), torch.zeros(4, 8)], {"temperature": -0.5}, "temperature"),
    ([torch.zeros(4, 8), torch.zeros(4, 8)], {"reduction": "sum"}, "reduction"),
])
def test_bad_inputs_raise_clear_errors(views, kwargs, match):
    with pytest.raises(ValueError, match=match):
        multiview_contrastive_loss(views, **kwargs)


def test_pseudo_label_loss_is_the_mean_of_the_heads_ce():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(5, 2, generator=g), torch.randn(5, 10, generator=g)]
    targets = [torch.randint(0, 2, (5,), generator=g), torch.randint(0, 10, (5,), generator=g)]
    want = 0.5 * (F.cross_entropy(logits[0], targets[0]) + F.cross_entropy(logits[1], targets[1]))
    assert pseudo_label_loss(logits, targets).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="one target per head"):
        pseudo_label_loss(logits, targets[:1])
    with pytest.raises(ValueError, match="do not match"):
        pseudo_label_loss(logits, [targets[0], targets[1][:3]])


def test_trades_kl_is_zero_on_equal_logits_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    assert trades_kl(a, a).item() == pytest.approx(0.0, abs=1e-6)
    p, q = F.softmax(b, 1), F.softmax(a, 1)
    want = (p * (p.log() - q.log())).sum(1).mean()
    assert trades_kl(a, b).item() == pytest.approx(want.item(), rel=1e-5)
