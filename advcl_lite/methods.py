"""The three pretraining methods, one class each, every step readable top to bottom.

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

Under ``torchrun`` each rank holds B/N images; every contrastive loss is that of the global batch
(:func:`~advcl_lite.distributed.gather`, whose backward sums the ranks' gradients), the pseudo-label
loss is the mean over this rank's images (DDP's gradient average makes it the global mean), and with
:class:`~advcl_lite.distributed.SyncedBatchNorm` one step on N ranks computes the step of one process on
the whole batch (``tests/test_distributed.py``).

The training loop, the optimisers and the runs are in :mod:`advcl_lite.pretrain`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .attacks import ContrastivePGD, JointPGD, PairPGD, PseudoLabelPGD
from .distributed import gather
from .frequency import HighPass, LowPass
from .losses import multiview_contrastive_loss, pseudo_label_loss
from .models import METHODS, is_channels_last
from .presets import Preset
from .runtime import unwrap
from .views import MultiView, crop_flip, simclr_view

VIEWS = ("hfc", "lfc", "none")
ACL_ATTACK_MODE = "eval"   # ACL's original attacks with the running statistics; AdvCL's follows preset.attack_mode


class Method:
    """What the three methods share: the network, the preset, and the views in the network's memory format.

    ``eval_route``: the BN route whose statistics the finetuned encoder keeps (:func:`models.export_encoder`).
    """

    name = ""
    eval_route = "normal"

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
    name, eval_route = "acl", "pgd"

    def __init__(self, net: nn.Module, preset: Preset):
        super().__init__(net, preset)
        p = preset
        self.attack = PairPGD(self.attack_net, p.eps, p.alpha, p.pgd_steps, route="pgd", temperature=p.temperature,
                              mode=ACL_ATTACK_MODE)

    def __call__(self, x, g, targets=None):
        tau = self.p.temperature
        t1, t2 = self.views(x, g)
        a1, a2 = self.attack(t1, t2)
        zc = self.net(torch.cat([t1, t2]), "normal")
        za = self.net(torch.cat([a1, a2]), "pgd")
        lc = multiview_contrastive_loss([gather(v) for v in zc.chunk(2)], tau)
        la = multiview_contrastive_loss([gather(v) for v in za.chunk(2)], tau)
        return {"loss": 0.5 * (lc + la), "loss_clean": lc, "loss_adv": la}

    def __repr__(self) -> str:
        return f"ACL(views={self.augment!r}, attack={self.attack!r})"


class AdvCL(Method):
    name, eval_route = "advcl", "pgd"

    def __init__(self, net: nn.Module, preset: Preset, view: str = "hfc", radius: float = 8.0,
                 use_pseudo: bool = False, recompute_anchors: bool = False, batched: bool = False):
        super().__init__(net, preset)
        self.batched = bool(batched)    # one batched forward per attack step and for the update (same math)
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


METHOD_CLASSES = {c.name: c for c in (SimCLR, ACL, AdvCL)}
EVAL_ROUTE = {name: c.eval_route for name, c in METHOD_CLASSES.items()}


def make_step(method: str, net: nn.Module, preset: Preset, view: str = "hfc", radius: float = 8.0,
              use_pseudo: bool = False, recompute_anchors: bool = False, batched: bool = False) -> Method:
    """The step of ``method`` on ``net`` (the view, radius and pseudo-label settings are AdvCL's only)."""
    if method not in METHOD_CLASSES:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
    if method == "advcl":
        return AdvCL(net, preset, view, radius, use_pseudo, recompute_anchors, batched)
    return METHOD_CLASSES[method](net, preset)
