"""CIFAR ResNet-18 with named BatchNorm routes, projection and pseudo-label heads.

Every BatchNorm2d of the backbone (shortcut BNs included) exists once per
*route*: AdvCL uses ``("normal", "pgd", "pgd_ce")``, ACL ``("normal", "pgd")``,
SimCLR ``("normal",)``. The caller picks the route of each forward pass:
``net(x, route="pgd")``. ``routes=None`` builds a plain network with ordinary
BatchNorm2d, which is what :func:`export_encoder` returns for finetuning.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import CheckpointError, load_checkpoint, load_weights
from .runtime import resolve_device

# ImageNet's mean and std, with which DynACL's network normalises its input (NormalizeByChannelMeanStd in
# PKU-ML/DYNACL models/resnet_multi_bn.py); advcl_lite's other methods take [0, 1] images as they are
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class RoutedBatchNorm2d(nn.Module):
    """One BatchNorm2d per route; ``self.route`` selects which one runs.

    ``self.chunks = [(route, n), ...]`` (set by :meth:`ResNet18.features_of_views`) normalises consecutive
    chunks of the batch each with its own route and its own batch statistics, exactly as separate forwards
    of the chunks would (the running statistics of each route are updated once per chunk, in order)."""

    bn_class = nn.BatchNorm2d

    def __init__(self, num_features: int, routes: tuple[str, ...]):
        super().__init__()
        self.bns = nn.ModuleDict({r: self.bn_class(num_features) for r in routes})
        self.route = routes[0]
        self.chunks: list[tuple[str, int]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.chunks is None:
            return self.bns[self.route](x)
        parts = x.split([n for _, n in self.chunks])
        return torch.cat([self.bns[r](part) for (r, _), part in zip(self.chunks, parts)])


class RoutedBatchNorm1d(RoutedBatchNorm2d):
    """One BatchNorm1d per route (ACL's projection head)."""

    bn_class = nn.BatchNorm1d


def _bn(c: int, routes: tuple[str, ...] | None) -> nn.Module:
    return nn.BatchNorm2d(c) if routes is None else RoutedBatchNorm2d(c, routes)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, routes):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout, routes)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout, routes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout, routes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class InputNormalize(nn.Module):
    """``(x - mean) / std`` per channel, inside a network: ACL's and DynACL's encoders (``normalize.mean`` and
    ``normalize.std``, ImageNet statistics) take [0, 1] images and normalise them themselves."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(-1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stem, stride 1, no max-pool, stages [2,2,2,2] of widths w, 2w, 4w, 8w.

    Input (N, 3, H, W) in [0, 1]; ``features`` returns the pooled (N, 8w) vector.
    ``num_classes`` adds a linear classifier (``forward`` then returns logits). ``input_norm=(mean, std)``
    normalises the input first (an imported ACL or DynACL encoder; advcl_lite's own and AdvCL's take [0, 1]
    images as they are); ``self.input_norm`` keeps it, so the architecture can be rebuilt from metadata.
    """

    def __init__(self, base_width: int = 64, routes: tuple[str, ...] | None = None, num_classes: int | None = None,
                 input_norm=None):
        super().__init__()
        self.base_width = base_width
        self.routes = tuple(routes) if routes else None
        self.input_norm = None if input_norm is None else ([float(v) for v in input_norm[0]],
                                                           [float(v) for v in input_norm[1]])
        self.normalize = InputNormalize(*self.input_norm) if self.input_norm else None
        w = base_width
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = _bn(w, self.routes)
        layers, cin = [], w
        for i, (cout, stride) in enumerate([(w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)]):
            blocks = [BasicBlock(cin, cout, stride, self.routes), BasicBlock(cout, cout, 1, self.routes)]
            cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.feature_dim = 8 * w
        self.fc = nn.Linear(self.feature_dim, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def set_route(self, route: str) -> None:
        if self.routes is None:  # a plain network has one BN set; nothing to switch
            return
        if route not in self.routes:
            raise ValueError(f"unknown BN route {route!r}; this network has routes {self.routes}")
        for m in self.modules():
            if isinstance(m, RoutedBatchNorm2d):
                m.route = route

    def features(self, x: torch.Tensor, route: str | None = None) -> torch.Tensor:
        if self.routes is not None:
            self.set_route(route or self.routes[0])
        return self._features(x)

    def features_of_views(self, views: list[torch.Tensor], routes: list[str]) -> list[torch.Tensor]:
        """The features of several views, each through its own route, with the convolutions run once on their
        concatenation; every BatchNorm normalises each view's chunk with that view's route and batch
        statistics, so the result equals ``[self.features(v, r) for v, r in zip(views, routes)]``."""
        if self.routes is None or len(views) != len(routes):
            raise ValueError("features_of_views needs a network with BN routes and one route per view")
        for r in routes:
            if r not in self.routes:
                raise ValueError(f"unknown BN route {r!r}; this network has routes {self.routes}")
        sizes = [len(v) for v in views]
        bns = [m for m in self.modules() if isinstance(m, RoutedBatchNorm2d)]
        for m in bns:
            m.chunks = list(zip(routes, sizes))
        try:
            return list(self._features(torch.cat(views)).split(sizes))
        finally:
            for m in bns:
                m.chunks = None

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor, route: str | None = None) -> torch.Tensor:
        f = self.features(x, route)
        return self.fc(f) if self.fc is not None else f


class ProjectionHead(nn.Module):
    """AdvCL's head: Linear d->d, BN1d, ReLU, Linear d->out, then L2 normalisation (BN shared by all routes)."""

    def __init__(self, dim: int, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, out_dim))

    def forward(self, f: torch.Tensor, route: str | None = None) -> torch.Tensor:
        return F.normalize(self.net(f), dim=1)


class ACLProjectionHead(nn.Module):
    """ACL's head (``models/resnet_multi_bn.py``, ``proj_head``): three d->d linear layers, each followed
    by a BN1d **per route**, ReLU between them (the second and third linear layers have no bias); the
    output (d-dimensional) is L2-normalised, which is what ACL's cosine-similarity NT-Xent does."""

    def __init__(self, dim: int, routes: tuple[str, ...]):
        super().__init__()
        self.routes = tuple(routes)
        self.fc1, self.bn1 = nn.Linear(dim, dim), RoutedBatchNorm1d(dim, self.routes)
        self.fc2, self.bn2 = nn.Linear(dim, dim, bias=False), RoutedBatchNorm1d(dim, self.routes)
        self.fc3, self.bn3 = nn.Linear(dim, dim, bias=False), RoutedBatchNorm1d(dim, self.routes)

    def forward(self, f: torch.Tensor, route: str | None = None) -> torch.Tensor:
        route = route or self.routes[0]
        for bn in (self.bn1, self.bn2, self.bn3):
            bn.route = route
        x = F.relu(self.bn1(self.fc1(f)))
        x = F.relu(self.bn2(self.fc2(x)))
        return F.normalize(self.bn3(self.fc3(x)), dim=1)


HEADS = ("advcl", "acl")


class ContrastiveNet(nn.Module):
    """Backbone with BN routes + projection head + optional pseudo-label heads (one per K).

    ``head="advcl"``: :class:`ProjectionHead` (d -> d -> ``proj_dim``, one BN shared by the routes);
    ``"acl"``: :class:`ACLProjectionHead` (d -> d -> d -> d, one BN per route)."""

    def __init__(self, base_width: int = 16, routes: tuple[str, ...] = ("normal",), proj_dim: int = 128,
                 pseudo_ks: tuple[int, ...] = (), head: str = "advcl", input_norm=None):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.backbone = ResNet18(base_width, routes, input_norm=input_norm)
        self.head_type = head
        d = self.backbone.feature_dim
        self.head = ProjectionHead(d, proj_dim) if head == "advcl" else ACLProjectionHead(d, self.backbone.routes)
        self.pseudo_ks = tuple(int(k) for k in pseudo_ks)
        self.pseudo_heads = nn.ModuleList([nn.Linear(self.backbone.feature_dim, k) for k in self.pseudo_ks])

    @property
    def routes(self) -> tuple[str, ...]:
        return self.backbone.routes

    def features(self, x: torch.Tensor, route: str) -> torch.Tensor:
        return self.backbone.features(x, route)

    def forward(self, x, route="normal", output="z"):
        """Through BN route ``route``: ``output="z"`` gives the normalised projection (N, proj_dim);
        ``"pseudo"`` the list of pseudo-label logits, one (N, K) per head. (Both go through
        ``forward`` so that a DDP wrapper sees every forward.)

        Several views at once: ``x`` a list of batches, ``route`` and ``output`` lists of the same length;
        returns the list of their outputs, equal to separate forwards (the backbone runs once on the
        concatenation, see :meth:`ResNet18.features_of_views`; the heads run per view)."""
        if isinstance(x, (list, tuple)):
            outputs = list(output) if isinstance(output, (list, tuple)) else [output] * len(x)
            feats = self.backbone.features_of_views(list(x), list(route))
            return [self._head(f, r, o) for f, r, o in zip(feats, route, outputs)]
        return self._head(self.backbone.features(x, route), route, output)

    def _head(self, f: torch.Tensor, route: str, output: str):
        if output == "z":
            return self.head(f, route)
        if output == "pseudo":
            return [h(f) for h in self.pseudo_heads]
        raise ValueError(f"output must be 'z' or 'pseudo', got {output!r}")

    def pseudo_logits(self, x: torch.Tensor, route: str = "pgd_ce") -> list[torch.Tensor]:
        return self(x, route, output="pseudo")

    def add_momentum_copy(self) -> "ContrastiveNet":
        """Give the network ``self.key``: a copy of itself whose weights follow by a moving average
        (:meth:`update_momentum_copy`) and take no gradient, DynACL's ``encoder_k``. The copy is a submodule,
        so checkpoints, ``train()`` / ``eval()`` and devices carry it; :func:`export_encoder` exports it."""
        key = copy.deepcopy(self)
        key.requires_grad_(False)
        self.add_module("key", key)
        return self

    @torch.no_grad()
    def update_momentum_copy(self, m: float) -> None:
        """``key = m * key + (1 - m) * self`` for the parameters (DynACL's ``_momentum_update_key_encoder``);
        the copy's BN statistics are its own, gathered by its own forward passes."""
        own = dict(self.named_parameters())
        for name, pk in self.key.named_parameters():
            pk.mul_(m).add_(own[name].detach(), alpha=1.0 - m)


class Classifier(nn.Module):
    """Encoder + linear head on [0, 1] images; what finetuning trains and attacks evaluate."""

    def __init__(self, encoder: ResNet18, num_classes: int):
        super().__init__()
        if encoder.routes is not None:
            raise ValueError("Classifier needs a plain encoder; call export_encoder(net, route) first")
        self.encoder = encoder
        self.fc = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder.features(x))


def export_encoder(net: nn.Module, route: str = "pgd") -> ResNet18:
    """A plain single-BN ResNet18 holding the backbone weights and route ``route``'s BN statistics (of the
    momentum copy ``net.key`` when the network has one: the encoder DynACL's code saves and evaluates)."""
    net = getattr(net, "module", net)
    key = getattr(net, "key", None)
    net = key if key is not None else net
    backbone = net.backbone if isinstance(net, ContrastiveNet) else net
    if not isinstance(backbone, ResNet18):
        raise TypeError(f"expected a ContrastiveNet or ResNet18, got {type(net).__name__}")
    if backbone.routes is None:
        plain = ResNet18(backbone.base_width, input_norm=backbone.input_norm)
        plain.load_state_dict({k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")})
        return plain
    if route not in backbone.routes:
        raise ValueError(f"route {route!r} not in this encoder's routes {backbone.routes}")
    state = {}
    for k, v in backbone.state_dict().items():
        if k.startswith("fc."):
            continue
        if ".bns." in k:
            head, rest = k.split(".bns.", 1)
            r, param = rest.split(".", 1)
            if r != route:
                continue
            k = f"{head}.{param}"
        state[k] = v.clone()
    plain = ResNet18(backbone.base_width, input_norm=backbone.input_norm)
    plain.load_state_dict(state, strict=True)
    return plain


CHANNELS_LAST_MIN_CHANNELS = 12


def channels_last_safe(model: nn.Module) -> bool:
    """False when the model has a strided 1x1 convolution with fewer than 12 input channels (a ResNet-18
    of base width below 12). On torch 2.14.1's CPU build, its channels_last backward crashes the process
    (segmentation fault in oneDNN) for inputs of 48 px and more; widths 12 and up, and NCHW, are fine."""
    return not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                   and m.in_channels < CHANNELS_LAST_MIN_CHANNELS for m in model.modules())


def to_channels_last(model: nn.Module, enabled: bool = True) -> nn.Module:
    """``model`` in channels_last (NHWC) memory format when ``enabled`` and :func:`channels_last_safe`."""
    return model.to(memory_format=torch.channels_last) if enabled and channels_last_safe(model) else model


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's first convolution is stored channels_last (feed it NHWC batches then)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv is not None and conv.weight.is_contiguous(memory_format=torch.channels_last) \
        and not conv.weight.is_contiguous()


# --------------------------------------------------------------------------- reading a method's network back

def load_pretrained(path: str | os.PathLike, device=None) -> tuple[ContrastiveNet, dict[str, Any]]:
    """Rebuild the ContrastiveNet stored in a pretraining checkpoint (strict keys), in eval mode.

    Returns ``(net, meta)``; ``meta["history"]`` is the per-epoch history, ``meta["eval_route"]``
    the BN route to export for finetuning. Any key or shape mismatch raises CheckpointError.
    """
    ck = load_checkpoint(path, kind="pretrain", map_location="cpu")
    meta, state = ck["meta"], ck["state_dict"]
    try:        # the architecture from the metadata alone: a method's network is its routes, head and heads
        norm = None
        if "backbone.normalize.mean" in state:       # a network that normalises its input carries its statistics
            norm = tuple([float(f"{v:.7g}") for v in state[f"backbone.normalize.{k}"].tolist()] for k in ("mean", "std"))
        net = ContrastiveNet(int(meta["base_width"]), tuple(meta["routes"]), pseudo_ks=tuple(meta.get("pseudo_ks", ())),
                             head=meta.get("head", "advcl"), input_norm=norm)
        if meta.get("momentum_copy"):
            net.add_momentum_copy()
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: pretraining checkpoint metadata is incomplete ({e}); re-create it") from None
    load_weights(net, state, str(path))
    meta = dict(meta)
    meta["history"] = json.loads(ck.get("history", "[]"))
    meta["path"] = str(path)
    return net.to(resolve_device(device)).eval(), meta
