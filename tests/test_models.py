"""CIFAR ResNet-18 with BatchNorm routes, heads, export_encoder and the classifier."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from advcl_lite.models import (Classifier, ContrastiveNet, ProjectionHead, ResNet18, RoutedBatchNorm2d,
                               export_encoder, to_channels_last)

ROUTES = ("normal", "pgd", "pgd_ce")


def images(n=4, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def routed_bns(m: nn.Module) -> dict[str, RoutedBatchNorm2d]:
    return {n: mod for n, mod in m.named_modules() if isinstance(mod, RoutedBatchNorm2d)}


def test_architecture_is_the_cifar_resnet18():
    net = ResNet18(64, num_classes=10)
    # the well-known parameter count of the CIFAR ResNet-18 (3x3 stem, no max-pool, [2, 2, 2, 2])
    assert sum(p.numel() for p in net.parameters()) == 11_173_962
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    small = ResNet18(4)
    assert small.feature_dim == 32 and small(images(2)).shape == (2, 32)


def test_every_batchnorm_has_every_route_shortcuts_included():
    plain_bns = [n for n, m in ResNet18(4).named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(plain_bns) == 20 and sum(".shortcut." in n for n in plain_bns) == 3
    net = ResNet18(4, routes=ROUTES)
    bns = routed_bns(net)
    assert sorted(bns) == sorted(plain_bns), "each plain BN position holds a routed BN"
    for mod in bns.values():
        assert tuple(mod.bns.keys()) == ROUTES
    # no ordinary BatchNorm2d left outside the routes
    outside = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d) and ".bns." not in n]
    assert outside == []


def test_train_mode_forward_updates_only_its_route():
    net = ResNet18(4, routes=ROUTES).train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running_mean" in k}
    net(images(8), route="pgd")
    after = {k: v for k, v in net.state_dict().items() if "running_mean" in k}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".bns.pgd." in k for k in changed)
    assert len(changed) == 20, "every BN (shortcuts included) ran on route pgd"


def test_routes_give_different_outputs_once_their_statistics_differ():
    net = ResNet18(4, routes=ROUTES).train()
    net(images(8, 1), route="normal")
    net(images(8, 2) * 0.3, route="pgd")          # other data: other running statistics
    net.eval()
    x = images(3, 3)
    f_n, f_p = net(x, route="normal"), net(x, route="pgd")
    assert not torch.allclose(f_n, f_p)
    torch.testing.assert_close(net(x, route="normal"), f_n)   # deterministic in eval mode
    with pytest.raises(ValueError, match="unknown BN route 'adv'"):
        net(x, route="adv")


def test_export_encoder_equals_the_route_in_eval_mode():
    net = ContrastiveNet(4, routes=ROUTES, pseudo_ks=(2, 5)).train()
    for r, s in zip(ROUTES, (1.0, 0.5, 0.2)):
        net(images(8, 7) * s, route=r)
    net.eval()
    x = images(3, 9)
    for r in ROUTES:
        plain = export_encoder(net, r).eval()
        assert plain.routes is None and not routed_bns(plain)
        torch.testing.assert_close(plain(x), net.features(x, r), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(export_encoder(net, "pgd").eval()(x), export_encoder(net, "normal").eval()(x))
    # the export is a copy: changing it does not touch the routed network
    p = export_encoder(net, "pgd")
    with torch.no_grad():
        p.conv1.weight.zero_()
    assert net.backbone.conv1.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="route 'pgd_x' not in"):
        export_encoder(net, "pgd_x")
    with pytest.raises(TypeError, match="ContrastiveNet or ResNet18"):
        export_encoder(nn.Linear(2, 2))
    # DataParallel wrappers are unwrapped
    torch.testing.assert_close(export_encoder(nn.DataParallel(net), "pgd").eval()(x), net.features(x, "pgd"),
                               rtol=1e-5, atol=1e-6)


def test_strict_loading_between_routed_and_plain_networks():
    routed = ResNet18(4, routes=("normal", "pgd"))
    plain = ResNet18(4)
    with pytest.raises(RuntimeError, match="Missing key"):
        plain.load_state_dict(routed.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        ResNet18(8).load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="export_encoder"):
        Classifier(routed, 10)


def test_contrastive_net_outputs_and_heads():
    net = ContrastiveNet(4, routes=("normal", "pgd", "pgd_ce"), pseudo_ks=(2, 10)).eval()
    x = images(5)
    z = net(x, "normal")
    assert z.shape == (5, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    logits = net.pseudo_logits(x)
    assert [tuple(t.shape) for t in logits] == [(5, 2), (5, 10)]
    with pytest.raises(ValueError, match="'z' or 'pseudo'"):
        net(x, "normal", output="features")
    head = ProjectionHead(32, 16)
    assert [type(m) for m in head.net] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert net.routes == ("normal", "pgd", "pgd_ce")


def test_classifier_and_channels_last_agree():
    torch.manual_seed(0)
    clf = Classifier(ResNet18(4), 10).eval()
    x = images(4)
    out = clf(x)
    assert out.shape == (4, 10)
    cl = to_channels_last(clf)
    torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), out, rtol=1e-4, atol=1e-5)
    assert to_channels_last(clf, enabled=False) is clf
    loss = nn.functional.cross_entropy(clf.train()(x), torch.arange(4))
    loss.backward()
    assert clf.encoder.conv1.weight.grad is not None and clf.fc.weight.grad is not None
