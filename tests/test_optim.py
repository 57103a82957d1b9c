"""advcl_lite.optim: LARS as ACL's code runs it, the two original schedules, and the loss-scale identity."""
import copy
import math

import pytest
import torch

from advcl_lite.optim import LARS, lr_factor


def test_lars_step_matches_a_hand_computation_of_the_trust_ratio():
    w0 = torch.tensor([[3.0, -4.0], [0.0, 0.0]])          # ||w|| = 5
    g = torch.tensor([[0.6, 0.8], [0.0, 0.0]])            # ||g|| = 1
    p = torch.nn.Parameter(w0.clone())
    opt = LARS([p], lr=2.0, momentum=0.9, weight_decay=0.1, eta=1e-3)
    p.grad = g.clone()
    opt.step()
    local = 1e-3 * 5.0 / (1.0 + 0.1 * 5.0)                # eta ||w|| / (||g|| + wd ||w||)
    step1 = 2.0 * local * (g + 0.1 * w0)
    assert torch.allclose(p.detach(), w0 - step1, atol=1e-7)
    # second step: the momentum buffer carries the scaled step (lr inside the buffer, as in ACL's lars.py)
    w1 = p.detach().clone()
    p.grad = g.clone()
    opt.step()
    local2 = 1e-3 * w1.norm() / (1.0 + 0.1 * w1.norm())
    buf = 0.9 * step1 + 2.0 * local2 * (g + 0.1 * w1)
    assert torch.allclose(p.detach(), w1 - buf, atol=1e-7)


def test_lars_uses_trust_one_for_zero_weights_or_gradients():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = LARS([p], lr=0.5, momentum=0.0, weight_decay=0.0)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(p.detach(), -0.5 * torch.ones(3))     # local = 1: a plain SGD step
    q = torch.nn.Parameter(torch.ones(2))
    LARS([q], lr=0.5, momentum=0.0)                              # no gradient: untouched
    with pytest.raises(ValueError, match="LARS lr must be >= 0"):
        LARS([q], lr=-1.0)


def test_acl_schedule_warms_up_from_zero_and_ends_at_its_floor():
    f = [lr_factor(s, 10, 100, start=0.0, end=2e-7) for s in range(101)]
    assert f[0] == 0.0 and f[5] == pytest.approx(0.5) and f[10] == pytest.approx(1.0)
    assert f[100] == pytest.approx(2e-7)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_advcl_per_epoch_cosine_is_constant_within_an_epoch_as_the_original():
    spe, epochs = 10, 5
    f = [lr_factor(s, 0, spe * epochs, steps_per_epoch=spe) for s in range(spe * epochs)]
    # adjust_learning_rate(epoch + 1): epoch e uses the cosine at (e + 1) / E
    for e in range(epochs):
        want = 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * (e + 1) / epochs))
        assert f[e * spe:(e + 1) * spe] == pytest.approx([want] * spe)
    # warm-up over 2 epochs: per step from `start` to the cosine at 2 / E (warmup_learning_rate's warmup_to)
    w = [lr_factor(s, 20, 50, start=0.02, steps_per_epoch=spe) for s in range(21)]
    top = 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * 2 / 5))
    assert w[0] == pytest.approx(0.02) and w[10] == pytest.approx(0.02 + (top - 0.02) / 2)
    assert w[20] == pytest.approx(1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * 3 / 5)))


def test_sgd_step_with_scaled_loss_equals_scaled_lr_and_divided_weight_decay():
    """The original's x7.14 on L_CL: with plain SGD (momentum 0), loss * s == lr * s with weight decay / s."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    s, lr, wd = 0.5 / 0.07, 0.05, 1e-2
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    opt_a = torch.optim.SGD(a.parameters(), lr=lr, weight_decay=wd)
    opt_b = torch.optim.SGD(b.parameters(), lr=lr * s, weight_decay=wd / s)
    (s * torch.nn.functional.cross_entropy(a(x), y)).backward()
    torch.nn.functional.cross_entropy(b(x), y).backward()
    opt_a.step()
    opt_b.step()
    for pa, pb, p0 in zip(a.parameters(), b.parameters(), net.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
        assert not torch.allclose(pa, p0)          # the step did something
