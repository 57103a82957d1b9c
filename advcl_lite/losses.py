"""Contrastive losses.

:func:`multiview_contrastive_loss` takes V views of the same B images (each a
(B, d) tensor of L2-normalised embeddings). Every one of the V*B embeddings is
an anchor; its positives are the V-1 other views of the same image, its
negatives the (V*B - V) views of the other images. Per anchor the loss is the
mean over positives of ``-log softmax(sim / tau)``, averaged over anchors:

    L = -1/(VB) sum_a 1/(V-1) sum_{p in P(a)} log( exp(s_ap/tau) / sum_{k != a} exp(s_ak/tau) )

With V = 2 this is SimCLR's NT-Xent. (The original AdvCL code multiplies the
loss by 0.5/0.07 through an unchanged base-temperature default; we do not.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def multiview_contrastive_loss(views: list[torch.Tensor] | tuple[torch.Tensor, ...], temperature: float = 0.5,
                               reduction: str = "mean") -> torch.Tensor:
    """Multi-view SimCLR loss over V >= 2 views of B images; ``reduction`` "mean" or "none" (per anchor, (V*B,))."""
    if len(views) < 2:
        raise ValueError(f"need at least 2 views per image, got {len(views)}")
    b = views[0].shape[0]
    if any(v.shape[0] != b for v in views):
        raise ValueError(f"all views need the same batch size, got {[v.shape[0] for v in views]}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    nv = len(views)
    z = torch.cat(list(views), 0).float()                       # (V*B, d)
    sim = z @ z.t() / temperature
    n = nv * b
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    logp = F.log_softmax(sim, dim=1)
    ids = torch.arange(b, device=z.device).repeat(nv)
    pos = (ids[:, None] == ids[None, :]) & ~eye
    per_anchor = -(logp.masked_fill(~pos, 0.0).sum(1)) / (nv - 1)
    if reduction == "none":
        return per_anchor
    if reduction == "mean":
        return per_anchor.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent for two views (the V = 2 case of the multi-view loss)."""
    return multiview_contrastive_loss([z1, z2], temperature)


def pseudo_label_loss(logits: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """L_PS: mean over granularities K of CE(head_K, pseudo-label_K)."""
    if len(logits) != len(targets) or not logits:
        raise ValueError(f"need one target per head, got {len(logits)} heads and {len(targets)} targets")
    return torch.stack([F.cross_entropy(lo.float(), t) for lo, t in zip(logits, targets)]).mean()


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """TRADES' robustness term: KL(p_clean || p_adv), batch mean."""
    return F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits_clean.float(), 1), reduction="batchmean")
