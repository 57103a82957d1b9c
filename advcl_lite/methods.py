"""The pretraining methods, one class each, every step readable top to bottom.

A method turns a batch into its loss, attack included: ``step = make_step("advcl", net, preset)``, then
``step(x, g, targets)`` -> a dict of scalar losses with the one to minimise under ``"loss"``. ``x`` is a
batch (N, 3, H, W) in [0, 1], ``g`` the CPU generator of the data augmentations, ``targets`` the
batch's pseudo-labels (AdvCL with pseudo-labels only). The network must be in train mode; the attacks
restore it. Every view is embedded by its own forward pass unless said otherwise, so in train mode each
gets its own batch statistics (Fan et al. 2021, sections 3-4; ``pretraining_advCL.py``):

* :class:`SimCLR`: NT-Xent between two SimCLR views t1, t2 (route ``normal``, one forward pass of the
  pair), as ACL's ``train_simCLR.py`` trains it.
* :class:`ACL`: t1, t2 and their jointly attacked copies a1, a2 (:class:`~advcl_lite.attacks.PairPGD`
  through route ``pgd``, the network in eval mode as in ACL's ``PGD_contrastive``); loss = mean of the
  clean NT-Xent (route ``normal``) and the adversarial one (route ``pgd``).
* :class:`AdvCL`: views t1, t2 (SimCLR), o (crop+flip) and h = HFC(o) (clean, unclipped, never
  perturbed). x_cl = ContrastivePGD from o against the clean anchors [t1, t2, h] (route ``pgd``; network
  mode ``preset.attack_mode``, "train" as the original's ``net.train()``); x_ce = PseudoLabelPGD from o on
  its own route ``pgd_ce``. Loss, as ``pretraining_advCL.py`` computes it with ``SupConLoss``::

      L = (temperature / base_temperature) * L_CL(t1, t2, x_cl, h) + lambda * L_PS(x_ce)

  with 0.5 / 0.07 = 7.14 and lambda = 0.2. Ablations: ``view="lfc"`` (LFC instead of HFC),
  ``view="none"`` (no fourth view), ``use_pseudo=False`` (no L_PS), ``radius``.
* :class:`DynACL`: ACL with DynACL's annealed augmentations, moving loss weight and momentum encoder (Luo et
  al., ICLR 2023); ``preset.air`` adds AIR's two regularisers (Xu et al., NeurIPS 2023) to ACL or DynACL.

Under ``torchrun`` each rank holds B/N images; every contrastive loss is that of the global batch
(:func:`~advcl_lite.distributed.gather`, whose backward sums the ranks' gradients), the pseudo-label
loss is the mean over this rank's images (DDP's gradient average makes it the global mean), and with
:class:`~advcl_lite.distributed.SyncedBatchNorm` one step on N ranks computes the step of one process on
the whole batch (``tests/test_distributed.py``).

The training loop, the optimisers and the runs are in :mod:`advcl_lite.pretrain`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .attacks import ContrastivePGD, JointPGD, PairPGD, PseudoLabelPGD
from .distributed import gather
from .frequency import HighPass, LowPass
from .losses import air_regularizers, multiview_contrastive_loss, pseudo_label_loss
from .models import IMAGENET_NORM, ContrastiveNet, is_channels_last
from .optim import LARS, lr_factor
from .presets import Preset
from .runtime import unwrap
from .views import DynamicView, MultiView, crop_flip, simclr_view

VIEWS = ("hfc", "lfc", "none")
ACL_ATTACK_MODE = "eval"   # ACL's original attacks with the running statistics; AdvCL's follows preset.attack_mode


class Method:
    """What the methods share: the network, the preset, and the views in the network's memory format.

    Each method class also owns what is its own, read by the training loop, the CLI and the notebooks
    (``METHOD_CLASSES``): its network (BN ``routes``, projection :meth:`head`, ``input_norm``, :meth:`build`),
    its optimiser and schedule (:meth:`make_optimizer`, :meth:`lr_lambda`), the preset fields that determine
    its weights (:meth:`training_config`), its run folder's name (:meth:`run_name`), the history key of its
    contrastive loss (``cl_key``) and the views in that loss (:meth:`n_views`).
    ``eval_route``: the BN route whose statistics the finetuned encoder keeps (:func:`models.export_encoder`).
    Adding a method is one subclass here, registered in ``METHOD_CLASSES`` (DEVELOPING.md).
    """

    name = ""
    eval_route = "normal"
    routes: tuple[str, ...] = ("normal",)   # the backbone's BN routes (AdvCL adds pgd_ce with pseudo-label heads)
    input_norm = None                        # (mean, std) when the network normalises its own input
    optimizer = "lars"           # ACL's code: LARS (``preset.acl_optimizer="sgd"`` switches); "sgd": AdvCL's SGD
    attacks = False              # attacks during pretraining (eps, alpha, pgd_steps determine its weights)
    takes_air = False            # AIR's regularisers apply (``preset.air``)
    takes_pseudo_labels = False  # AdvCL's pseudo-label heads
    takes_view = False           # AdvCL's fourth view (``view``, ``radius``)
    cl_key = "loss"              # the history key of the (unscaled) contrastive loss

    @classmethod
    def head(cls, preset: Preset) -> str:
        """The projection head it trains with: ``preset.acl_head`` (ACL's three layers by default)."""
        return preset.acl_head

    @classmethod
    def n_views(cls, view: str = "hfc") -> int:
        """Views of each image in one contrastive term."""
        return 2

    @classmethod
    def momentum_copy(cls, preset: Preset) -> bool:
        return False

    @classmethod
    def build(cls, preset: Preset, pseudo_ks=()) -> ContrastiveNet:
        """The method's network at ``preset`` (``pseudo_ks``: AdvCL's pseudo-label heads)."""
        return build_net(cls.name, preset.base_width, pseudo_ks, cls.head(preset), cls.momentum_copy(preset))

    @classmethod
    def uses_lars(cls, preset: Preset) -> bool:
        return cls.optimizer == "lars" and preset.acl_optimizer == "lars"

    @classmethod
    def make_optimizer(cls, net: nn.Module, preset: Preset) -> torch.optim.Optimizer:
        """LARS (lr ``acl_lr``, weight decay ``acl_weight_decay``, trust ``lars_eta``) or SGD (lr ``lr``, weight
        decay ``weight_decay``), momentum ``momentum``."""
        if cls.uses_lars(preset):
            return LARS(net.parameters(), lr=preset.acl_lr, momentum=preset.momentum,
                        weight_decay=preset.acl_weight_decay, eta=preset.lars_eta)
        return torch.optim.SGD(net.parameters(), lr=preset.lr, momentum=preset.momentum,
                               weight_decay=preset.weight_decay)

    @classmethod
    def lr_lambda(cls, preset: Preset, steps_per_epoch: int):
        """The learning-rate factor at each optimisation step. LARS: ACL's ``cosine_annealing``, warm-up from 0,
        cosine to an absolute 1e-6, per step; SGD: AdvCL's warm-up from an absolute 0.01 and cosine to lr * 1e-3
        (per epoch when ``advcl_lr_per_epoch``)."""
        warm = round(preset.warmup_epochs * steps_per_epoch)
        total = max(1, preset.epochs * steps_per_epoch)
        if cls.uses_lars(preset):
            return lambda step: lr_factor(step, warm, total, start=0.0, end=1e-6 / preset.acl_lr)
        spe = steps_per_epoch if preset.advcl_lr_per_epoch else None
        return lambda step: lr_factor(step, warm, total, start=min(1.0, 0.01 / preset.lr), end=1e-3,
                                      steps_per_epoch=spe)

    @classmethod
    def attack_mode(cls, preset: Preset) -> str:
        return ACL_ATTACK_MODE

    @classmethod
    def training_config(cls, preset: Preset, pseudo: bool = False) -> dict:
        """The preset fields (and the attack's mode) that determine the method's weights: compared on resume
        and by ``get_or_train``. Fields that do not change them are left out, so changing them does not retrain."""
        keys = ["train_subset", "base_width", "batch_size", "epochs", "momentum", "warmup_epochs", "temperature",
                "amp", "seed"]
        if cls.uses_lars(preset):
            keys += ["acl_optimizer", "acl_lr", "acl_weight_decay", "lars_eta"]
        else:
            keys += ["lr", "weight_decay", "advcl_lr_per_epoch"] + (["acl_optimizer"] if cls.optimizer == "lars" else [])
        keys += cls._own_keys(preset)
        if cls.attacks:
            keys += ["eps", "alpha", "pgd_steps"]
        if cls.takes_air and preset.air:      # absent when off, so runs made before AIR existed still resume
            keys += ["air", "air_lambda1", "air_lambda2"]
        training = {k: getattr(preset, k) for k in keys}
        if cls.attacks:
            training["attack_mode"] = cls.attack_mode(preset)
        if pseudo:
            training["pseudo_lambda"] = preset.pseudo_lambda
        return training

    @classmethod
    def _own_keys(cls, preset: Preset) -> list[str]:
        return ["acl_head"]

    @classmethod
    def run_name(cls, view: str = "hfc", pseudo: bool = True, radius: float | None = None, air: bool = False) -> str:
        """The run's folder name: the method's name, ``-air`` with AIR's terms."""
        return cls.name + ("-air" if air and cls.takes_air else "")

    def __init__(self, net: nn.Module, preset: Preset):
        self.net, self.p = net, preset
        self.attack_net = unwrap(net)          # attacks run on the module itself, never through a DDP wrapper
        self.nhwc = preset.channels_last and is_channels_last(unwrap(net))   # batches follow the network's format
        self.augment = MultiView(simclr_view, simclr_view)

    def views(self, x: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        """The method's random views of the batch, drawn from ``g`` in a fixed order."""
        return [self._cl(v) for v in self.augment(x, g)]

    def _cl(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.nhwc else x

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training loop before epoch ``epoch`` (1-based) of ``epochs``; DynACL's schedule."""

    def epoch_record(self) -> dict[str, float]:
        """What the method's schedule set for this epoch, recorded in the run's history (DynACL's strength, w)."""
        return {}

    def __call__(self, x: torch.Tensor, g: torch.Generator, targets=None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(views={self.augment!r}, temperature={self.p.temperature})"


class SimCLR(Method):
    name, eval_route = "simclr", "normal"

    def __call__(self, x, g, targets=None):
        t1, t2 = self.views(x, g)
        z = self.net(torch.cat([t1, t2]), "normal")
        return {"loss": multiview_contrastive_loss([gather(v) for v in z.chunk(2)], self.p.temperature)}


class ACL(Method):
    name, eval_route, routes, attacks, takes_air = "acl", "pgd", ("normal", "pgd"), True, True

    def __init__(self, net: nn.Module, preset: Preset):
        super().__init__(net, preset)
        p = preset
        self.weight = 0.0            # w: the clean term weighs 1 - w and the adversarial one 1 + w (DynACL)
        self.attack = PairPGD(self.pair_net(), p.eps, p.alpha, p.pgd_steps, route="pgd", temperature=p.temperature,
                              mode=ACL_ATTACK_MODE)

    def pair_net(self) -> nn.Module:
        """What embeds a pair ``torch.cat([v1, v2])`` for the attack: the network itself."""
        return self.attack_net

    def embed_pair(self, v1: torch.Tensor, v2: torch.Tensor, route: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The projections of two views through ``route``, in one forward pass (shared batch statistics)."""
        z1, z2 = self.net(torch.cat([v1, v2]), route).chunk(2)
        return z1, z2

    def __call__(self, x, g, targets=None):
        p, w = self.p, self.weight
        t1, t2 = self.views(x, g)
        a1, a2 = self.attack(t1, t2)
        zc, za = self.embed_pair(t1, t2, "normal"), self.embed_pair(a1, a2, "pgd")
        lc = multiview_contrastive_loss([gather(v) for v in zc], p.temperature)
        la = multiview_contrastive_loss([gather(v) for v in za], p.temperature)
        out = {"loss_clean": lc, "loss_adv": la}
        if p.air:     # AIR's pretraining.py: the weighted sum (not halved) plus its two regularisers
            zo = self.net(self._cl(x), "normal")      # the un-augmented image, a third forward through `normal`
            sir, air = air_regularizers(*(gather(v) for v in (*zc, zo, *za)), temperature=p.temperature)
            out["loss"] = (1 - w) * lc + (1 + w) * la + p.air_lambda1 * sir + p.air_lambda2 * air
            out["loss_sir"], out["loss_air"] = sir, air
        else:         # ACL's mean of the two terms; DynACL's weighted mean
            out["loss"] = 0.5 * ((1 - w) * lc + (1 + w) * la)
        self.after_loss()
        return {"loss": out.pop("loss"), **out}

    def after_loss(self) -> None:
        """Called once the step's loss is computed, before its backward pass."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(views={self.augment!r}, attack={self.attack!r}, air={self.p.air})"


def dynacl_period(epochs: int, stages: int) -> int:
    """Epochs per augmentation-strength stage: the original re-sets the strength every 50 of its 1,000 epochs
    (``--reload_frequency 50``, 20 stages); a run of ``epochs`` keeps ``stages`` stages, at least one epoch each."""
    return max(1, math.ceil(epochs / stages))


def strength_at(epoch: int, epochs: int, period: int) -> float:
    """``1 - (e0 - 1) / epochs`` where e0 is the first epoch of the ``period``-epoch stage that holds ``epoch``
    (1-based): the strength ``train_DynACL.py`` sets when it reloads the data, every ``period`` epochs."""
    return 1.0 - ((epoch - 1) // period) * period / epochs


def dynacl_strength(epoch: int, epochs: int, stages: int = 20) -> float:
    """DynACL's augmentation strength in epoch ``epoch`` (1-based) of a run of ``epochs`` in ``stages`` stages
    (1.0, 0.95, ... at paper scale: 1,000 epochs, re-set every 50)."""
    return strength_at(epoch, epochs, dynacl_period(epochs, stages))


def dynacl_weight(epoch: int, epochs: int, stages: int = 20, swap: float = 2 / 3, air: bool = False) -> float:
    """w of DynACL's loss ``((1 - w) L_clean + (1 + w) L_adv) / 2`` in epoch ``epoch`` (1-based).

    ``train_DynACL.py``: ``weight_adv = min(1 + (epoch // K) * (K / epochs) * swap, 2)``, w = weight_adv - 1,
    which steps at multiples of K, one epoch before the strength does (kept, as released). AIR's code
    (``air=True``): ``w = swap * (1 - strength)``, in step with the strength."""
    if air:
        return swap * (1.0 - dynacl_strength(epoch, epochs, stages))
    k = dynacl_period(epochs, stages)
    return min((epoch // k) * (k / epochs) * swap, 1.0)


def per_epoch_cosine(epoch: int, epochs: int, warmup: float, end: float) -> float:
    """ACL's ``cosine_annealing`` evaluated at the epoch (0-based) as DynACL's scheduler steps it: ``(epoch + 1) /
    warmup`` during the warm-up epochs (10 in the original; at most 1, so that a warm-up shorter than an epoch,
    as the CPU presets' 1 % of the run, is none), then a cosine from 1 to ``end`` over the remaining epochs."""
    if epoch < warmup:
        return min(1.0, (epoch + 1) / warmup)
    t = min(1.0, max(0.0, (epoch - warmup) / max(1e-9, epochs - warmup)))
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))


class _SwapPair(nn.Module):
    """DynACL's ``forward(..., swap=True)``: of a pair ``torch.cat([v1, v2])``, v1 goes through the network and
    v2 through its momentum copy ``net.key`` (which takes no gradient)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, route: str = "normal") -> torch.Tensor:
        v1, v2 = x.chunk(2)
        return torch.cat([self.net(v1, route), self.net.key(v2, route)])


class DynACL(ACL):
    """DynACL (Luo, Wang & Wang, ICLR 2023; ``train_DynACL.py`` of PKU-ML/DYNACL): ACL whose augmentations weaken
    over training and whose loss moves its weight from the clean to the adversarial term.

    * Views: :func:`~advcl_lite.views.dynamic_view` at strength ``s`` = :func:`dynacl_strength` (set each epoch).
    * Loss: ``((1 - w) L_clean + (1 + w) L_adv) / 2`` with w = :func:`dynacl_weight` (0 -> 2/3 over the run).
    * Momentum encoder (the released code, beyond the paper; ``preset.dynacl_momentum`` = 0.99): the second view
      of every pair, clean and attacked, goes through ``net.key``, a copy that follows the network by
      ``key = 0.99 key + 0.01 net`` after each step's forward and takes no gradient; the attack does the same.
      The exported encoder is the copy (``model_encoder_k.pt``, what DynACL's finetuning loads), route ``pgd``.
      ``dynacl_momentum=0`` trains one network, as AIR's DynACL does.
    * ``preset.air``: AIR's regularisers (:func:`~advcl_lite.losses.air_regularizers`), the loss then summed as
      in AIR's code and w in step with the strength.
    * The network normalises its input with ImageNet's mean and std, as DynACL's.
    """

    name, eval_route, input_norm = "dynacl", "pgd", IMAGENET_NORM

    @classmethod
    def momentum_copy(cls, preset):
        return preset.dynacl_momentum > 0

    @classmethod
    def lr_lambda(cls, preset, steps_per_epoch):
        """``train_DynACL.py`` steps ACL's cosine once per epoch (:func:`per_epoch_cosine`)."""
        if not cls.uses_lars(preset):
            return super().lr_lambda(preset, steps_per_epoch)
        return lambda step: per_epoch_cosine(step // max(1, steps_per_epoch), preset.epochs, preset.warmup_epochs,
                                             1e-6 / preset.acl_lr)

    @classmethod
    def _own_keys(cls, preset):
        return ["acl_head", "dynacl_stages", "dynacl_swap", "dynacl_momentum"]

    def __init__(self, net: nn.Module, preset: Preset):
        self.momentum = float(preset.dynacl_momentum)
        has_key = getattr(unwrap(net), "key", None) is not None
        if has_key != (self.momentum > 0):
            raise ValueError(f"DynACL with dynacl_momentum={self.momentum:g} needs a network "
                             f"{'with' if self.momentum > 0 else 'without'} a momentum copy; build it with "
                             f"build_net('dynacl', ..., momentum_copy={self.momentum > 0})")
        super().__init__(net, preset)
        self.view = DynamicView(1.0)
        self.augment = MultiView(self.view, self.view)
        self.set_epoch(1, preset.epochs)

    def pair_net(self) -> nn.Module:
        return _SwapPair(self.attack_net) if self.momentum > 0 else self.attack_net

    def set_epoch(self, epoch: int, epochs: int) -> None:
        p = self.p
        self.view.strength = dynacl_strength(epoch, epochs, p.dynacl_stages)
        self.weight = dynacl_weight(epoch, epochs, p.dynacl_stages, p.dynacl_swap, air=p.air)

    def epoch_record(self) -> dict[str, float]:
        return {"strength": self.view.strength, "w": self.weight}

    def embed_pair(self, v1, v2, route):
        if self.momentum <= 0:
            return super().embed_pair(v1, v2, route)
        with torch.no_grad():
            z2 = self.attack_net.key(v2, route)
        return self.net(v1, route), z2

    def after_loss(self) -> None:
        if self.momentum > 0:
            self.attack_net.update_momentum_copy(self.momentum)

    def __repr__(self) -> str:
        return (f"DynACL(views={self.augment!r}, w={self.weight:.3f}, momentum={self.momentum:g}, "
                f"attack={self.attack!r}, air={self.p.air})")


class AdvCL(Method):
    name, eval_route, routes, optimizer, attacks = "advcl", "pgd", ("normal", "pgd"), "sgd", True
    takes_pseudo_labels, takes_view, cl_key = True, True, "loss_cl"

    @classmethod
    def head(cls, preset):
        return "advcl"

    @classmethod
    def n_views(cls, view="hfc"):
        return 3 if view == "none" else 4

    @classmethod
    def attack_mode(cls, preset):
        return preset.attack_mode        # "train", as the original's net.train()

    @classmethod
    def _own_keys(cls, preset):
        return ["base_temperature"]

    @classmethod
    def run_name(cls, view="hfc", pseudo=True, radius=None, air=False):
        """``advcl`` (with pseudo-labels, the paper's method), ``advcl-nopl``, ``advcl-lfc``, ``advcl-none-nopl``,
        ``advcl-r4`` ..."""
        name = "advcl" + ("" if view == "hfc" else f"-{view}") + ("" if pseudo else "-nopl")
        return name + (f"-r{radius:g}" if radius is not None else "")

    def __init__(self, net: nn.Module, preset: Preset, view: str = "hfc", radius: float = 8.0,
                 use_pseudo: bool = False, recompute_anchors: bool = False, batched: bool = False):
        super().__init__(net, preset)
        # one batched forward per attack step and for the update (same math): a speed variant measured by
        # benchmarks/advcl_step.py and gpu_step.py; pretrain() runs the unbatched step, the original's order
        self.batched = bool(batched)
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
        p = preset
        self.augment = MultiView(simclr_view, simclr_view, crop_flip)
        self.view_fn = {"hfc": HighPass(radius), "lfc": LowPass(radius), "none": None}[view]
        self.use_pseudo = bool(use_pseudo)
        self.cl_attack = ContrastivePGD(self.attack_net, p.eps, p.alpha, p.pgd_steps, route="pgd", anchor_route="normal",
                                        temperature=p.temperature, recompute_anchors=recompute_anchors,
                                        mode=p.attack_mode)
        self.ce_attack = PseudoLabelPGD(self.attack_net, p.eps, p.alpha, p.pgd_steps, route="pgd_ce", mode=p.attack_mode)

    def fourth_view(self, o: torch.Tensor) -> list[torch.Tensor]:
        """``[h]`` with h = HFC(o) (or LFC(o)); ``[]`` for the ablation without a fourth view."""
        return [self._cl(self.view_fn(o))] if self.view_fn is not None else []

    def contrastive_loss(self, t1, t2, x_cl, h: list) -> torch.Tensor:
        """L_CL of the views, unscaled; ``pretraining_advCL.py`` stacks x_cl, t1, t2, h, and the loss does not
        depend on the order of the views."""
        net = self.net
        views = [net(t1, "normal"), net(t2, "normal"), net(x_cl, "pgd")] + [net(v, "normal") for v in h]
        return multiview_contrastive_loss([gather(v) for v in views], self.p.temperature)

    def __call__(self, x, g, targets=None):
        p = self.p
        t1, t2, o = self.views(x, g)
        h = self.fourth_view(o)
        if self.batched and self.use_pseudo:     # both attacks in one loop, one forward per step (same result)
            x_cl, x_ce = JointPGD(self.cl_attack, self.ce_attack)(o, anchors=[t1, t2] + h, targets=targets)
        else:
            x_cl = self.cl_attack(o, anchors=[t1, t2] + h)
            x_ce = self.ce_attack(o, targets=targets) if self.use_pseudo else None
        if self.batched:        # one forward of every view of the update (x_ce included)
            extra = [x_ce] if self.use_pseudo else []
            outs = self.net([t1, t2, x_cl] + h + extra, ["normal", "normal", "pgd"] + ["normal"] * len(h)
                            + ["pgd_ce"] * len(extra), ["z"] * (3 + len(h)) + ["pseudo"] * len(extra))
            l_cl = multiview_contrastive_loss([gather(v) for v in outs[:3 + len(h)]], p.temperature)
            pseudo_logits = outs[-1] if extra else None
        else:
            l_cl = self.contrastive_loss(t1, t2, x_cl, h)
            pseudo_logits = self.net(x_ce, "pgd_ce", output="pseudo") if self.use_pseudo else None
        # the original's SupConLoss multiplies L_CL by temperature / base_temperature (0.5 / 0.07)
        out = {"loss": (p.temperature / p.base_temperature) * l_cl, "loss_cl": l_cl}
        if self.use_pseudo:
            l_ps = pseudo_label_loss(pseudo_logits, targets)
            out["loss"] = out["loss"] + p.pseudo_lambda * l_ps
            out["loss_ps"] = l_ps
        return out

    def __repr__(self) -> str:
        return (f"AdvCL(views={self.augment!r}, fourth_view={self.view_fn!r}, use_pseudo={self.use_pseudo}, "
                f"cl_attack={self.cl_attack!r}, ce_attack={self.ce_attack!r})")


METHOD_CLASSES = {c.name: c for c in (SimCLR, ACL, AdvCL, DynACL)}
METHODS = tuple(METHOD_CLASSES)          # what the CLI offers, the notebooks loop over, build_net builds
EVAL_ROUTE = {name: c.eval_route for name, c in METHOD_CLASSES.items()}


def method_class(method: str) -> type[Method]:
    if method not in METHOD_CLASSES:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    return METHOD_CLASSES[method]


def build_net(method: str, base_width: int, pseudo_ks=(), head: str = "advcl", momentum_copy: bool = False) -> ContrastiveNet:
    """The ContrastiveNet of ``method``: its BN routes (+ ``pgd_ce`` with pseudo-label heads), projection head
    ``head`` (:meth:`Method.head`), its input normalisation, and (``momentum_copy``, DynACL) a momentum copy."""
    cls = method_class(method)
    routes = cls.routes + (("pgd_ce",) if pseudo_ks else ())
    net = ContrastiveNet(base_width, routes, pseudo_ks=tuple(pseudo_ks), head=head, input_norm=cls.input_norm)
    return net.add_momentum_copy() if momentum_copy else net


def make_step(method: str, net: nn.Module, preset: Preset, view: str = "hfc", radius: float = 8.0,
              use_pseudo: bool = False, recompute_anchors: bool = False, batched: bool = False) -> Method:
    """The step of ``method`` on ``net`` (the view, radius and pseudo-label settings are AdvCL's only)."""
    method_class(method)
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
    if method == "advcl":
        return AdvCL(net, preset, view, radius, use_pseudo, recompute_anchors, batched)
    return METHOD_CLASSES[method](net, preset)
