"""Every attack of the package, shaped like torchattacks attacks.

One base class, :class:`Attack` (``attack(images, ...)`` checks the inputs, sets the model's mode and
calls ``forward``; ``repr`` prints every setting), and one PGD loop, :class:`LinfPGD`, whose subclasses
say only what they maximise and, where it differs, how they start and step:

* :class:`PGD` - supervised: ``PGD(model, eps, alpha, steps)(images, labels)``
  maximises cross-entropy (or a CW margin). Used for PGD-10 finetuning and
  PGD-20 evaluation.
* :class:`TradesPGD` - TRADES' inner maximisation (KL to the clean prediction).
* :class:`ContrastivePGD` - label-free: maximises the multi-view contrastive
  loss of the adversarial view against fixed clean anchor views,
  ``ContrastivePGD(net, ...)(o, anchors=[t1, t2, h])`` (AdvCL's x_cl).
* :class:`PairPGD` - ACL's attack: two views perturbed jointly against each other,
  ``PairPGD(net, ...)(t1, t2) -> (a1, a2)``.
* :class:`PseudoLabelPGD` - maximises the mean pseudo-label cross-entropy of the
  heads (AdvCL's x_ce).
* :class:`BandLimitedPGD` - PGD whose perturbation stays (approximately) in one frequency
  band (notebook 05's band attacks).
* :class:`AutoAttackHook` - AutoAttack (Croce & Hein, 2020) through the authors' package, and
  :func:`make_attack`, which turns ``"pgd20"`` / ``"pgd<K>"`` / ``"autoattack"`` / a callable into a hook.

All take inputs in [0, 1] (a clear error otherwise), start uniformly in the
eps-ball (``random_start``, clipped to [0, 1]), take sign-gradient steps of
``alpha``, project to the eps-ball and [0, 1] (:func:`project_linf`), infer the device from the inputs,
and restore every submodule's train/eval flag afterwards. ``mode`` says how the
model runs during the attack: ``"eval"`` (the default for the supervised attacks),
``"train"`` (AdvCL's pretraining attacks, as the original: batch statistics) or
``None`` (as it is). Parameter gradients are not touched (``autograd.grad`` on the
inputs only).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import gather_detached
from .frequency import apply_mask, band_filter
from .losses import multiview_contrastive_loss, pseudo_label_loss
from .runtime import model_mode, param_device, resolve_device

EPS = 8 / 255          # the paper's L-inf budget
PGD_ALPHA = 2 / 255    # its PGD step


def check_attack_params(eps: float, alpha: float, steps: int) -> None:
    if not 0.0 <= float(eps) <= 1.0:
        raise ValueError(f"eps={eps} is outside [0, 1]: inputs are in [0, 1], so write 8/255 (= {8/255:.4f}), not 8")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha={alpha} is outside [0, 1]: write e.g. 2/255 (= {2/255:.4f})")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps={steps} must be a whole number >= 0")


def check_inputs(x: torch.Tensor, name: str = "images") -> None:
    """Attacks take a float batch (N, C, H, W) in [0, 1] (normalisation belongs inside the model)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"attacks take a float batch (N, C, H, W) of {name}, got {shape}")
    if x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ValueError(f"{name} must be in [0, 1] (got values in [{lo:.3g}, {hi:.3g}]); attacks work on "
                             f"raw images - put any mean/std normalisation inside the model")


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """The projection every L-inf PGD here takes after a step: into the eps-ball around ``x``, then into [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


class Attack:
    """The base of every attack, as torchattacks shapes it: ``attack(images, ...)`` checks that the images are
    a float batch in [0, 1], puts the model in ``mode`` for the duration (every submodule's flag is restored
    afterwards), and calls the subclass's :meth:`forward` on the detached images; ``repr`` lists
    :meth:`settings`."""

    def __init__(self, model: nn.Module, mode: str | None = "eval"):
        if mode not in ("train", "eval", None):
            raise ValueError(f"mode must be 'train', 'eval' or None, got {mode!r}")
        self.model, self.mode = model, mode

    def __call__(self, x: torch.Tensor, *args, **kwargs):
        check_inputs(x)
        with model_mode(self.model, self.mode):
            return self.forward(x.detach(), *args, **kwargs)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        raise NotImplementedError

    def settings(self) -> dict:
        return {"mode": self.mode}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"


class LinfPGD(Attack):
    """The L-inf PGD loop that every attack here but AutoAttack runs: ``steps`` times, the gradient of
    :meth:`_objective` at the adversarial images, then :meth:`_step` (sign step of ``alpha`` and
    :func:`project_linf`). A subclass says what it maximises (``_objective``, with what :meth:`_prepare`
    computes once per batch) and, where it differs, how it starts (``_start``) and steps.

    The loop carries a ``state``: the adversarial images themselves (``_adv`` returns them as they are),
    or, for :class:`BandLimitedPGD`, the perturbation.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, mode: str | None = "eval"):
        super().__init__(model, mode)
        check_attack_params(eps, alpha, steps)
        self.eps, self.alpha, self.steps, self.random_start = float(eps), float(alpha), int(steps), bool(random_start)

    def _prepare(self, x: torch.Tensor, *args, **kwargs):
        return None

    def _objective(self, x_adv: torch.Tensor, ctx) -> torch.Tensor:
        raise NotImplementedError

    def _start(self, x: torch.Tensor, ctx) -> torch.Tensor:
        x_adv = x.clone()
        if self.random_start and self.eps > 0:
            x_adv = (x_adv + torch.empty_like(x_adv).uniform_(-self.eps, self.eps)).clamp(0, 1)
        return x_adv

    def _adv(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return state

    def _step(self, x: torch.Tensor, state: torch.Tensor, grad: torch.Tensor, ctx) -> torch.Tensor:
        return project_linf(state + self.alpha * grad.sign(), x, self.eps)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        ctx = self._prepare(x, *args, **kwargs)
        state = self._start(x, ctx)
        for _ in range(self.steps):
            x_adv = self._adv(x, state).requires_grad_(True)
            grad, = torch.autograd.grad(self._objective(x_adv, ctx), x_adv)
            with torch.no_grad():
                state = self._step(x, state, grad, ctx)
        return self._finish(x, state).detach()

    def _finish(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self._adv(x, state)

    def settings(self) -> dict:
        return {"eps": _Budget(self.eps), "alpha": _Budget(self.alpha), "steps": self.steps,
                "random_start": self.random_start, "mode": self.mode}


class _Budget(float):
    """A budget in [0, 1] that prints as ``0.03137 (8/255)``."""

    def __repr__(self) -> str:
        return f"{float(self):.5f} ({float(self) * 255:.3g}/255)"


class PGD(LinfPGD):
    """Supervised L-inf PGD: ``PGD(model, eps=8/255, alpha=2/255, steps=20)(images, labels)``.

    ``loss="ce"`` (Madry) or ``"cw"`` (margin). The model maps [0, 1] images to logits.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, loss: str = "ce", mode: str | None = "eval"):
        super().__init__(model, eps, alpha, steps, random_start, mode)
        if loss not in ("ce", "cw"):
            raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")
        self.loss = loss

    def _prepare(self, x, labels):
        return labels

    def _objective(self, x_adv, labels):
        logits = self.model(x_adv).float()
        if self.loss == "ce":
            return F.cross_entropy(logits, labels, reduction="sum")
        onehot = F.one_hot(labels, logits.shape[1]).bool()
        correct = logits[onehot]
        other = logits.masked_fill(onehot, float("-inf")).max(1).values
        return (other - correct).clamp(max=50).sum()

    def settings(self):
        return {**super().settings(), "loss": self.loss}


class TradesPGD(LinfPGD):
    """TRADES inner maximisation: maximise KL(p(x) || p(x_adv)), started near x (0.001 * N(0,1)).

    ``TradesPGD(model, eps, alpha, steps)(images)``; labels, if passed, are ignored."""

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps=10, mode: str | None = "eval"):
        super().__init__(model, eps, alpha, steps, random_start=False, mode=mode)

    def _prepare(self, x, *args):
        with torch.no_grad():
            return F.softmax(self.model(x).float(), 1)

    def _start(self, x, p_clean):
        return (x + 0.001 * torch.randn_like(x)).clamp(0, 1)   # TRADES starts from a tiny Gaussian perturbation

    def _objective(self, x_adv, p_clean):
        return F.kl_div(F.log_softmax(self.model(x_adv).float(), 1), p_clean, reduction="sum")



class ContrastivePGD(LinfPGD):
    """Label-free PGD on the multi-view contrastive loss (AdvCL's x_cl).

    ``ContrastivePGD(net, eps, alpha, steps, route="pgd", anchor_route="normal")(o, anchors=[t1, t2, h])``
    finds, from a uniform random start,

        x_cl = argmax_{||x - o||_inf <= eps, x in [0,1]} L_CL([z(x; route)] + [z(a; anchor_route) for a in anchors])

    with the anchors clean and fixed (h is not clipped and never perturbed). Each view
    is embedded by its own forward pass, as in the original, so in train mode each gets
    its own batch statistics.

    ``recompute_anchors=False`` (default) embeds the anchors once per batch;
    ``True`` re-embeds them at every step, as the original code does. The anchors'
    values do not change between steps (train mode: batch statistics of the same
    images; eval mode: fixed running statistics), so both give the same perturbation;
    the original's schedule costs ``steps`` extra anchor forward passes and, in train
    mode, moves the anchor route's running statistics ``steps`` times instead of once.

    Under ``torchrun`` the loss is that of the global batch: the other ranks' embeddings enter
    detached (:func:`~advcl_lite.distributed.gather_detached`), which gives this rank's images
    exactly their gradient of the global loss.

    ``mode="train"`` is the original's setting (BN uses batch statistics during the
    attack and the attacked route's running statistics move at each step); ``"eval"``
    attacks with the running statistics. ``net`` is a
    :class:`~advcl_lite.models.ContrastiveNet` (``net(x, route)`` -> z).
    """

    def __init__(self, net: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 5,
                 random_start: bool = True, route: str = "pgd", anchor_route: str = "normal",
                 temperature: float = 0.5, recompute_anchors: bool = False, mode: str | None = "train"):
        super().__init__(net, eps, alpha, steps, random_start, mode)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.route, self.anchor_route, self.temperature = route, anchor_route, float(temperature)
        self.recompute_anchors = bool(recompute_anchors)

    def _embed_anchors(self, anchors):
        with torch.no_grad():
            return [gather_detached(self.model(a, self.anchor_route)) for a in anchors]

    def _prepare(self, x, anchors=()):
        anchors = [a.detach() for a in anchors]
        if not anchors:
            raise ValueError("ContrastivePGD needs at least one anchor view, e.g. anchors=[t1, t2, h]")
        if any(a.shape[0] != x.shape[0] for a in anchors):
            raise ValueError(f"every anchor view needs the batch size of the attacked images ({x.shape[0]}), "
                             f"got {[a.shape[0] for a in anchors]}")
        return {"anchors": anchors, "z": None if self.recompute_anchors else self._embed_anchors(anchors)}

    def _objective(self, x_adv, ctx):
        z_anchor = self._embed_anchors(ctx["anchors"]) if self.recompute_anchors else ctx["z"]
        return multiview_contrastive_loss([gather_detached(self.model(x_adv, self.route))] + z_anchor, self.temperature)

    def settings(self):
        return {**super().settings(), "route": self.route, "anchor_route": self.anchor_route,
                "temperature": self.temperature, "recompute_anchors": self.recompute_anchors}


class PairPGD(LinfPGD):
    """ACL's attack: perturb two views jointly to maximise NT-Xent between them,
    ``PairPGD(net, eps, alpha, steps, route="pgd")(x1, x2) -> (a1, a2)``.

    The pair goes through ``route`` in one forward pass (``torch.cat([a1, a2])``, so in train mode the two
    share batch statistics, as in ACL's ``PGD_contrastive``); each view has its own uniform random start and
    its own eps-ball. ``mode="eval"`` is ACL's original setting (the attack uses the running statistics).
    """

    def __init__(self, net: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 5,
                 random_start: bool = True, route: str = "pgd", temperature: float = 0.5,
                 mode: str | None = "eval"):
        super().__init__(net, eps, alpha, steps, random_start, mode)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.route, self.temperature = route, float(temperature)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_inputs(x2, "x2")
        if x1.shape != x2.shape:
            raise ValueError(f"the two views need the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
        a1, a2 = super().forward(torch.cat([x1, x2.detach()])).chunk(2)
        return a1, a2

    def _start(self, x, ctx):
        if not (self.random_start and self.eps > 0):
            return x.clone()
        noise = [torch.empty_like(v).uniform_(-self.eps, self.eps) for v in x.chunk(2)]   # one draw per view
        return (x + torch.cat(noise)).clamp(0, 1)

    def _objective(self, x_adv, ctx):
        views = [gather_detached(z) for z in self.model(x_adv, self.route).chunk(2)]
        return multiview_contrastive_loss(views, self.temperature)

    def settings(self):
        return {**super().settings(), "route": self.route, "temperature": self.temperature}


class PseudoLabelPGD(LinfPGD):
    """PGD on the mean pseudo-label CE of the heads (AdvCL's x_ce), through BN route ``route``.

    ``PseudoLabelPGD(net, ...)(o, targets=[y_K for K in ks])``.
    """

    def __init__(self, net: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 5,
                 random_start: bool = True, route: str = "pgd_ce", mode: str | None = "train"):
        super().__init__(net, eps, alpha, steps, random_start, mode)
        self.route = route

    def _prepare(self, x, targets=()):
        return list(targets)

    def _objective(self, x_adv, targets):
        return pseudo_label_loss(self.model(x_adv, self.route, output="pseudo"), targets)

    def settings(self):
        return {**super().settings(), "route": self.route}


class JointPGD(LinfPGD):
    """AdvCL's two attacks in one loop, as the original runs them: x_cl (:class:`ContrastivePGD`) and x_ce
    (:class:`PseudoLabelPGD`) from the same o, with one batched forward per step
    (``net([x_cl, x_ce], [route, ce_route], ["z", "pseudo"])``, every BN normalising each chunk on its
    own route). ``JointPGD(cl, ce)(o, anchors=[t1, t2, h], targets=[...]) -> (x_cl, x_ce)``.

    The objective is L_CL(x_cl) + L_PS(x_ce); the two terms depend on disjoint inputs, so each input's
    gradient, its sign step and its projection are those of its own attack, and the random starts are drawn
    in the same order as running the two attacks in turn: the result is theirs (``tests/test_attacks.py``).
    """

    def __init__(self, cl: ContrastivePGD, ce: PseudoLabelPGD):
        same = ("eps", "alpha", "steps", "random_start", "mode")
        if any(getattr(cl, k) != getattr(ce, k) for k in same) or cl.model is not ce.model:
            raise ValueError(f"JointPGD needs two attacks on the same network with the same {', '.join(same)}")
        super().__init__(cl.model, cl.eps, cl.alpha, cl.steps, cl.random_start, cl.mode)
        self.cl, self.ce = cl, ce

    def forward(self, x: torch.Tensor, anchors=(), targets=()) -> tuple[torch.Tensor, torch.Tensor]:
        x_cl, x_ce = super().forward(torch.cat([x, x]), anchors, targets).chunk(2)
        return x_cl, x_ce

    def _prepare(self, xx, anchors=(), targets=()):
        o = xx[: len(xx) // 2]
        return {"cl": self.cl._prepare(o, anchors), "targets": self.ce._prepare(o, targets)}

    def _start(self, xx, ctx):
        a, b = xx.chunk(2)
        return torch.cat([self.cl._start(a, ctx["cl"]), self.ce._start(b, ctx["targets"])])   # cl's draw first

    def _objective(self, x_adv, ctx):
        a, b = x_adv.chunk(2)
        z, logits = self.model([a, b], [self.cl.route, self.ce.route], ["z", "pseudo"])
        z_anchor = self.cl._embed_anchors(ctx["cl"]["anchors"]) if self.cl.recompute_anchors else ctx["cl"]["z"]
        l_cl = multiview_contrastive_loss([gather_detached(z)] + z_anchor, self.cl.temperature)
        return l_cl + pseudo_label_loss(logits, ctx["targets"])

    def settings(self):
        return {"cl": self.cl, "ce": self.ce}


# --------------------------------------------------------------------------- band-limited PGD (notebook 05)

class BandLimitedPGD(PGD):
    """L-inf PGD whose perturbation lives in one frequency band:
    ``BandLimitedPGD(model, eps, alpha, steps, band="low", radius=8)(images, labels)``.

    Each step, in this order:

    1. ``d = P(sign(grad))``, with ``P`` the band filter, rescaled per image so that
       ``max |d| = 1`` (a band-limited step then moves as far in L-inf as an ordinary
       PGD step, whatever the band's width);
    2. ``delta <- delta + alpha * d``;
    3. projection, repeated ``refine`` times: ``delta <- P(delta)``, clip to
       ``[-eps, eps]``, clip so that ``x + delta`` is in [0, 1].

    Guarantees: the returned ``x_adv`` is in the eps-ball around ``x`` and in [0, 1]
    exactly. It is in the band only approximately: clipping is the last operation, and
    clipping re-creates a little out-of-band energy; the alternating projections
    (``refine``) push delta towards the intersection of the band and the boxes, and
    :func:`out_of_band_fraction` measures what is left (in this package's tests, under
    0.1% of delta's energy with the default ``refine=10``, about 1% with ``refine=1``).
    ``band="full"`` is ordinary PGD (no filter, no rescaling: the same steps as
    :class:`~advcl_lite.attacks.PGD`).
    The random start is uniform in the eps-ball, then projected the same way.
    The loop's state is the perturbation ``delta`` (the images are ``x + delta``).
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 band="low", radius: float = 8.0, random_start: bool = True, refine: int = 10, loss: str = "ce",
                 mode: str | None = "eval"):
        super().__init__(model, eps, alpha, steps, random_start, loss, mode)
        band_filter(8, band, radius)  # validates band and radius
        if int(refine) != refine or refine < 1:
            raise ValueError(f"refine={refine} must be a whole number >= 1")
        self.band, self.radius, self.refine = band, float(radius), int(refine)

    def _project(self, x: torch.Tensor, delta: torch.Tensor, mask) -> torch.Tensor:
        for _ in range(self.refine if mask is not None else 1):
            if mask is not None:
                delta = apply_mask(delta, mask)
            delta = delta.clamp(-self.eps, self.eps)
            delta = (x + delta).clamp(0, 1) - x
        return delta

    def _prepare(self, x, labels):
        return {"labels": labels, "mask": band_filter(tuple(x.shape[-2:]), self.band, self.radius, x.device)}

    def _objective(self, x_adv, ctx):
        return super()._objective(x_adv, ctx["labels"])

    def _start(self, x, ctx):
        if self.random_start and self.eps > 0:
            return self._project(x, torch.empty_like(x).uniform_(-self.eps, self.eps), ctx["mask"])
        return torch.zeros_like(x)

    def _adv(self, x, delta):
        return x + delta

    def _step(self, x, delta, grad, ctx):
        d, mask = grad.sign(), ctx["mask"]
        if mask is not None:
            d = apply_mask(d, mask)
            d = d / d.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-12)
        return self._project(x, delta + self.alpha * d, mask)

    def _finish(self, x, delta):
        return (x + delta).clamp(0, 1)

    def settings(self):
        return {**super().settings(), "band": self.band, "radius": self.radius, "refine": self.refine}


# --------------------------------------------------------------------------- AutoAttack, and attacks by name

def _import_autoattack():
    try:
        from pyautoattack import AutoAttack  # the PyPI package `pyautoattack`
    except ImportError:
        try:
            from autoattack import AutoAttack  # the authors' GitHub install
        except ImportError:
            raise ImportError("AutoAttack is not installed; pip install pyautoattack") from None
    return AutoAttack


@contextmanager
def _quiet_logger(name: str, quiet: bool):
    import logging
    log = logging.getLogger(name)
    old = log.level
    if quiet:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


class AutoAttackHook(Attack):
    """AutoAttack (Croce & Hein, 2020), L-inf, as an attack hook ``hook(images, labels) -> adv_images``.

    Runs the authors' package with an explicit device and seed; ``version="standard"`` is
    APGD-CE, APGD-T, FAB-T and Square. With fewer than 10 classes the targeted attacks use
    all C - 1 other classes instead of 9; the targeted DLR loss needs at least 4 classes.
    Quiet unless ``verbose=True``.
    """

    def __init__(self, model: nn.Module, eps: float = EPS, version: str = "standard", device=None, seed: int = 0,
                 verbose: bool = False):
        super().__init__(model, "eval")
        check_attack_params(eps, 0.0, 0)
        AutoAttack = _import_autoattack()
        self.eps, self.version, self.seed, self.verbose = float(eps), version, int(seed), verbose
        self.device = resolve_device(device) if device is not None else param_device(model)
        self.aa = AutoAttack(model, norm="Linf", eps=self.eps, version=version, device=self.device, seed=self.seed)
        self.aa.verbose = verbose
        self._classes = None

    def _fit_classes(self, x: torch.Tensor) -> None:
        with torch.no_grad(), model_mode(self.model, "eval"):
            c = int(self.model(x[:1]).shape[1])
        if c < 4 and self.version == "standard":
            raise ValueError(f"AutoAttack's standard version needs at least 4 classes (targeted DLR loss); this "
                             f"model has {c}. Use attack='pgd20', or AutoAttackHook(..., version='custom') with "
                             f"aa.attacks_to_run = ['apgd-ce', 'square']")
        t = min(9, c - 1)
        self.aa.apgd_targeted.n_target_classes = t
        self.aa.fab.n_target_classes = t
        self._classes = c

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._classes is None:
            self._fit_classes(images)
        with _quiet_logger("auto-attack", not self.verbose):
            x_adv, _ = self.aa.run_standard_evaluation(images, labels, batch_size=len(images))
        return x_adv.detach()

    def __repr__(self) -> str:
        return (f"AutoAttack(norm='Linf', eps={self.eps:.5f} ({self.eps * 255:.3g}/255), version={self.version!r}, "
                f"seed={self.seed}, device='{self.device}')")


def make_attack(model: nn.Module, attack, eps: float = EPS, device=None, seed: int = 0) -> Callable | None:
    """Turn an attack spec into a hook: None, "none", "pgd20", "pgd<K>", "autoattack", or a callable (returned as is)."""
    if attack is None or (isinstance(attack, str) and attack.lower() in ("none", "clean")):
        return None
    if isinstance(attack, str):
        a = attack.lower()
        m = re.fullmatch(r"pgd-?(\d+)", a)
        if m:
            return PGD(model, eps, PGD_ALPHA, int(m.group(1)), random_start=True, mode="eval")
        if a in ("autoattack", "aa"):
            return AutoAttackHook(model, eps, device=device, seed=seed)
        raise ValueError(f"unknown attack {attack!r}; use none, pgd20 (or pgd<K>), autoattack, or a callable "
                         f"attack(images, labels) -> adversarial images")
    if not callable(attack):
        raise TypeError(f"attack must be a name or a callable attack(images, labels), got {type(attack).__name__}")
    return attack
