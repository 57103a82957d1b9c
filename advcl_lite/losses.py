"""Contrastive losses.

:func:`multiview_contrastive_loss` takes V views of the same B images (each a
(B, d) tensor of L2-normalised embeddings). Every one of the V*B embeddings is
an anchor; its positives are the V-1 other views of the same image, its
negatives the (V*B - V) views of the other images. Per anchor the loss is the
mean over positives of ``-log softmax(sim / tau)``, averaged over anchors:

    L = -1/(VB) sum_a 1/(V-1) sum_{p in P(a)} log( exp(s_ap/tau) / sum_{k != a} exp(s_ak/tau) )

where ``s_ak = z_a . z_k`` (cosine similarity for unit vectors). With V = 2
this is SimCLR's NT-Xent. The loss does not depend on the order of the views
nor on the order of the images. The original AdvCL code (``losses.py``,
``SupConLoss``) multiplies it by temperature / base_temperature = 0.5 / 0.07 ~ 7.14;
that factor is applied by AdvCL's training step (``advcl_lite.pretrain``,
preset field ``base_temperature``), not here: with SGD it is a 7.14x larger step on
the contrastive term, not a harmless rescaling.

All three losses are computed in float32 even inside an autocast region
(bf16 similarities would cost the contrastive loss two significant digits).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or weights; the last good checkpoint is kept."""


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float()


def _check_views(views) -> list[torch.Tensor]:
    if isinstance(views, torch.Tensor) or not isinstance(views, Sequence):
        raise ValueError("views must be a list of (B, d) tensors, one per view, e.g. [z1, z2]; "
                         f"got {type(views).__name__}")
    views = list(views)
    if len(views) < 2:
        raise ValueError(f"need at least 2 views per image, got {len(views)}")
    for i, v in enumerate(views):
        if not isinstance(v, torch.Tensor) or v.ndim != 2:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"view {i} must be a (B, d) tensor of embeddings, got {shape}")
    if len({v.shape for v in views}) != 1:
        raise ValueError(f"all views need the same shape (B, d), got {[tuple(v.shape) for v in views]}")
    if views[0].shape[0] < 1:
        raise ValueError("views are empty (batch size 0)")
    return views


def multiview_contrastive_loss(views: list[torch.Tensor] | tuple[torch.Tensor, ...], temperature: float = 0.5,
                               reduction: str = "mean") -> torch.Tensor:
    """Multi-view SimCLR loss over V >= 2 views of B images.

    ``views``: V tensors of shape (B, d), row i of every view coming from image i.
    ``reduction="mean"`` returns a scalar; ``"none"`` the per-anchor losses, shape (V*B,),
    in the order of ``torch.cat(views)``. The embeddings are expected to be L2-normalised
    (a projection head's output); the loss does not normalise them itself.
    """
    views = _check_views(views)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    nv, b = len(views), views[0].shape[0]
    with torch.autocast(views[0].device.type, enabled=False):
        z = torch.cat([_fp32(v) for v in views], 0)                 # (V*B, d)
        sim = (z @ z.t()) / temperature
        n = nv * b
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        logp = F.log_softmax(sim.masked_fill(eye, float("-inf")), dim=1)   # softmax over k != a
        ids = torch.arange(b, device=z.device).repeat(nv)                # image id of each row
        pos = (ids[:, None] == ids[None, :]) & ~eye                      # the V-1 other views of the image
        per_anchor = -logp.masked_fill(~pos, 0.0).sum(1) / (nv - 1)
    return per_anchor if reduction == "none" else per_anchor.mean()


def air_regularizers(zi: torch.Tensor, zj: torch.Tensor, z_orig: torch.Tensor, zi_adv: torch.Tensor,
                     zj_adv: torch.Tensor, temperature: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """AIR's two regularisers (Xu et al., NeurIPS 2023), as ``AIR_Loss`` in ``AIR.py`` of its released code
    computes them; the inputs are the (B, d) L2-normalised projections of the two clean views, of the
    un-augmented image and of the two adversarial views, row i from image i.

    Each "distribution" is a softmax over the batch of one similarity per image:
    ``p_i = softmax_k(<zi_k, zo_k> / t)`` and ``p_j`` likewise;
    ``q_i = softmax_k(<zi_adv_k, zo_k> / t) * softmax_k(<zi_adv_k, zi_k> / t)`` (a product, not renormalised)
    and ``q_j`` likewise. SIR = ``F.kl_div(p_i, log p_j, log_target=True, reduction="sum")`` and
    AIR = ``F.kl_div(q_i, log q_j, ...)``: the released code hands ``kl_div`` probabilities where it expects
    log-probabilities, so each term is ``sum_k P_j,k (log P_j,k - P_i,k)``, not a textbook KL; this function
    computes what the released code computes. Nothing is detached. Returns ``(sir, air)``, float32 scalars.
    """
    views = _check_views([zi, zj, z_orig, zi_adv, zj_adv])
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(views[0].device.type, enabled=False):
        zi, zj, zo, zi_adv, zj_adv = (_fp32(v) for v in views)

        def sim(a, b):
            return (a * b).sum(1) / temperature

        p_i, log_p_j = F.softmax(sim(zi, zo), 0), F.log_softmax(sim(zj, zo), 0)
        sir = F.kl_div(p_i, log_p_j, reduction="sum", log_target=True)
        q_i = F.softmax(sim(zi_adv, zo), 0) * F.softmax(sim(zi_adv, zi), 0)
        q_j = F.softmax(sim(zj_adv, zo), 0) * F.softmax(sim(zj_adv, zj), 0)
        air = F.kl_div(q_i, torch.log(q_j), reduction="sum", log_target=True)
    return sir, air


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent for two views (the V = 2 case of the multi-view loss)."""
    return multiview_contrastive_loss([z1, z2], temperature)


def pseudo_label_loss(logits: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """L_PS: mean over granularities K of CE(head_K, pseudo-label_K) (each CE a batch mean)."""
    logits, targets = list(logits), list(targets)
    if len(logits) != len(targets) or not logits:
        raise ValueError(f"need one target per head, got {len(logits)} heads and {len(targets)} targets")
    for lo, t in zip(logits, targets):
        if lo.ndim != 2 or t.shape != lo.shape[:1]:
            raise ValueError(f"pseudo-label head logits (N, K) and targets (N,) do not match: "
                             f"{tuple(lo.shape)} vs {tuple(t.shape)}")
    with torch.autocast(logits[0].device.type, enabled=False):
        return torch.stack([F.cross_entropy(_fp32(lo), t) for lo, t in zip(logits, targets)]).mean()


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """TRADES' robustness term: KL(p_clean || p_adv), batch mean."""
    with torch.autocast(logits_adv.device.type, enabled=False):
        return F.kl_div(F.log_softmax(_fp32(logits_adv), 1), F.softmax(_fp32(logits_clean), 1),
                        reduction="batchmean")
