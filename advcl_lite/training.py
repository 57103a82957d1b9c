"""One epoch loop and one training state, shared by pretraining and finetuning.

* :class:`TrainState` - what a run carries from one epoch to the next: the network, the optimiser, the
  learning-rate schedule, the gradient scaler (fp16), the two random streams (``gen``: the order of the
  batches, the same on every rank; ``aug_gen``: the views, crops and attack starts, one per rank under
  ``torchrun``) and the per-epoch history. :meth:`TrainState.state_dict` is what a checkpoint stores beside
  the weights, :meth:`TrainState.load_state_dict` puts a resumed run back exactly where it stopped.
* :func:`run_epoch` - one pass over the batches: ``step(batch)`` under autocast gives the losses, a
  non-finite loss stops the run before the optimiser moves, then backward, the (scaled) optimiser step and,
  for a per-step schedule, the scheduler; the losses are averaged over the images (and the ranks).

:mod:`advcl_lite.pretrain` and :mod:`advcl_lite.finetune` build a state and a step and call :func:`run_epoch`
once per epoch; the methods' and the finetuning schemes' steps are in :mod:`advcl_lite.methods` and
:mod:`advcl_lite.finetune`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from . import distributed
from .runtime import autocast

RANK_SEED_STRIDE = 1_000_003      # rank r of a torchrun job draws its views from seed + r * this


def augmentation_stream(seed: int, gen: torch.Generator) -> torch.Generator:
    """The generator of a run's views, crops and attack starts: ``gen`` itself in one process; under
    ``torchrun`` each rank its own (and its own global torch stream, reseeded here, for the attacks)."""
    if distributed.world_size() == 1:
        return gen
    rank = distributed.rank()
    torch.manual_seed(seed + RANK_SEED_STRIDE * rank)
    return torch.Generator().manual_seed(seed + RANK_SEED_STRIDE * rank)


class EpochBatches:
    """A run's batches, epoch after epoch: ``batches()`` draws one epoch's, shuffled by ``gen`` (the same order on
    every rank), the last partial batch dropped, each rank taking ``part`` of every batch under ``torchrun``;
    ``steps``: batches per epoch."""

    def __init__(self, ds, bs: int, gen: torch.Generator, device, part=None):
        self.ds, self.bs, self.gen, self.device, self.part = ds, bs, gen, device, part
        self.steps = ds.num_batches(bs, drop_last=True)

    def __call__(self):
        return self.ds.batches(self.bs, shuffle=True, generator=self.gen, device=self.device, drop_last=True,
                               part=self.part)


@dataclass
class TrainState:
    """A run between two epochs (see the module docstring). ``history`` holds one record per finished epoch."""

    net: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    gen: torch.Generator
    aug_gen: torch.Generator
    device: torch.device
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        """Epochs finished."""
        return len(self.history)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def optimizer_step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights that a resumed run needs (every rank calls it: it gathers the ranks'
        random states)."""
        world = distributed.world_size()
        ranks = distributed.all_gather_object({"cpu": torch.get_rng_state().tolist(),
                                               "views": self.aug_gen.get_state().tolist()}) if world > 1 else []
        out = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
               "rng_cpu": torch.get_rng_state(), "rng_data": self.gen.get_state(), "history": json.dumps(self.history)}
        if self.scaler.is_enabled():
            out["scaler"] = self.scaler.state_dict()
        if self.device.type == "cuda":
            out["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if ranks:
            out["rng_ranks"] = json.dumps(ranks)
        return out

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` stored (the weights are loaded by the caller, strictly)."""
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        if "scaler" in ck and self.scaler.is_enabled():
            self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng_cpu"].cpu())
        self.gen.set_state(ck["rng_data"].cpu())
        if self.device.type == "cuda" and "rng_cuda" in ck:
            torch.cuda.set_rng_state(ck["rng_cuda"].cpu(), self.device)
        ranks = json.loads(ck.get("rng_ranks", "[]"))
        world = distributed.world_size()
        if world > 1 and len(ranks) == world:           # the same processes again: each its own streams
            mine = ranks[distributed.rank()]
            torch.set_rng_state(torch.tensor(mine["cpu"], dtype=torch.uint8))
            self.aug_gen.set_state(torch.tensor(mine["views"], dtype=torch.uint8))
        self.history = json.loads(ck["history"])


def run_epoch(state: TrainState, step: Callable[[tuple], dict[str, torch.Tensor]], batches: Iterable, *,
              amp: str = "none", nonfinite: Callable[[dict], Exception], per_step_schedule: bool,
              on_first_step: Callable[[float], Any] | None = None) -> dict[str, Any]:
    """One epoch: ``step(batch)`` -> losses (``"loss"`` is minimised; every value is averaged over the images),
    the optimiser step, and ``state.sched.step()`` after each batch when ``per_step_schedule``. A non-finite
    loss raises ``nonfinite(losses)`` before anything moves; ``on_first_step(seconds)`` hears how long the first
    batch took (for a time estimate). ``batches`` may be a progress bar (its postfix
    shows the loss; it is closed at the end). Returns the epoch's mean losses (over the ranks), the ``lr`` of
    its last step, ``seconds`` and ``images_per_s`` (all ranks)."""
    t0, sums, seen, lr_used = time.perf_counter(), {}, 0, state.lr
    for batch in batches:
        with autocast(state.device, amp):
            losses = step(batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise nonfinite(losses)
        state.optimizer_step(loss)
        lr_used = state.lr
        if per_step_schedule:
            state.sched.step()
        n = len(batch[0])
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v) * n
        seen += n
        if on_first_step is not None and seen == n:
            on_first_step(time.perf_counter() - t0)
        if hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    if hasattr(batches, "close"):
        batches.close()
    secs = time.perf_counter() - t0
    means = distributed.all_reduce_mean({k: v / max(seen, 1) for k, v in sums.items()})   # over the ranks
    seen *= distributed.world_size()
    return {**means, "lr": lr_used, "seconds": secs, "images_per_s": seen / max(secs, 1e-9)}
