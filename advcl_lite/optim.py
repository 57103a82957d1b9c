"""Optimisers and learning-rate schedules of the original codes.

Two recipes, one per original repository:

* **AdvCL** (``LijieFan/AdvCL``, ``pretraining_advCL.py`` and ``utils.py``): SGD with
  momentum 0.9 and weight decay 1e-4. The learning rate follows a cosine from ``lr`` to
  ``lr * 1e-3`` that the original sets **once per epoch** (``adjust_learning_rate``), after
  a per-step linear warm-up from 0.01 to the cosine's value at the end of the warm-up
  (``warmup_learning_rate``).
* **ACL** (``VITA-Group/Adversarial-Contrastive-Learning``, ``train_simCLR.py`` and
  ``optimizer/lars.py``; the same script trains SimCLR): :class:`LARS` with lr 5.0 at
  batch 512, trust coefficient 1e-3 and weight decay 1e-6, per-step cosine from ``lr`` to
  an absolute 1e-6 after a linear warm-up from 0.

:func:`lr_factor` is the multiplier of the base lr at every optimisation step for both.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You, Gitman and Ginsburg, 2017) as ACL's code runs it.

    For every parameter tensor ``w`` with gradient ``g`` (one trust ratio per tensor, biases
    and BN parameters included)::

        local = eta * ||w|| / (||g|| + wd * ||w||)      (1 where ||w|| or ||g|| < 1e-15)
        buf   = momentum * buf + lr * local * (g + wd * w)
        w     = w - buf

    The momentum buffer holds the scaled step (lr inside it), as in ACL's ``optimizer/lars.py``.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 eta: float = 1e-3):
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay), ("eta", eta)):
            if not v >= 0:
                raise ValueError(f"LARS {name} must be >= 0, got {v}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["eta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                local = eta * w_norm / (g_norm + wd * w_norm)
                local = torch.where((w_norm < 1e-15) | (g_norm < 1e-15), torch.ones_like(local), local)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(mom).add_((g + wd * p) * (local * lr))
                p.sub_(buf)
        return loss


def lr_factor(step: int, warmup_steps: int, total_steps: int, *, start: float = 0.01, end: float = 1e-3,
              steps_per_epoch: int | None = None) -> float:
    """Multiplier of the base lr at optimisation step ``step`` (0-based).

    A cosine from 1 to ``end`` over the run, after a linear warm-up over ``warmup_steps``
    from ``start`` to the cosine's value where the warm-up ends. ``steps_per_epoch``: the
    cosine is evaluated once per epoch as AdvCL's ``adjust_learning_rate`` does (epoch ``e``,
    0-based, of ``E`` uses the value at ``(e + 1) / E``); ``None``: at every step (ACL).
    """
    def cosine(t: float) -> float:
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, t))))

    def at(s: int) -> float:
        if steps_per_epoch:
            epochs = max(1, total_steps // steps_per_epoch)
            return cosine((s // steps_per_epoch + 1) / epochs)
        return cosine((s - warmup_steps) / max(1, total_steps - warmup_steps))

    if warmup_steps and step < warmup_steps:
        top = cosine(warmup_steps / max(1, total_steps)) if steps_per_epoch else 1.0
        return start + (top - start) * step / warmup_steps
    return at(step)
