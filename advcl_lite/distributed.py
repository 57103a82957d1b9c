"""Several processes, one training: DistributedDataParallel under PyTorch's launcher (``torchrun``).

A command started by ``torchrun --nproc_per_node=N`` (or ``--nnodes``) finds ``WORLD_SIZE`` > 1 in its
environment; :func:`setup` then joins the process group (NCCL on CUDA, gloo on the CPU) and gives
each process its device (``cuda:LOCAL_RANK``). Without the launcher nothing here does anything: every
helper is the identity in a single process, so a single-process run computes exactly what it computed
before this module existed.

What makes N processes on B/N images each compute what one process computes on B images:

* :func:`gather` - the embeddings of every rank, concatenated in rank order, with a backward that sums
  the gradients of all ranks (every rank computes the same global loss, so each rank's own slice receives
  N times its gradient and DDP's averaging divides it back; a gather without the sum gives gradients
  1/N too small, lightly issue 1528 / solo-learn issue 253).
* :func:`gather_detached` - the same concatenation for an attack: only this rank's slice carries a
  gradient (an attack perturbs only its own images; the other ranks' embeddings enter as constants,
  which gives this rank's inputs exactly the gradient of the global loss).
* :class:`SyncedBatchNorm` - batch statistics over the global batch (as the original's Apex SyncBN):
  two all-reduces (mean, then centred variance) whose backward sums over the ranks, running
  statistics updated from the global statistics, so they stay equal on every rank.
  ``convert_sync_batchnorm`` swaps it in for every BatchNorm of a model; its state-dict keys are unchanged.
"""
from __future__ import annotations

import functools
import inspect
import os
import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

WORLD_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def launched() -> bool:
    """True when a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes checkpoints, histories and progress bars."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the launcher's process group (once) and return this process's device.

    Single process: ``device`` unchanged. Under ``torchrun``: NCCL with ``cuda:LOCAL_RANK`` when ``device``
    is CUDA, gloo with the CPU otherwise. A CUDA device with an explicit index (``cuda:1``) is refused:
    the launcher decides which GPU each process gets.
    """
    if not launched():
        if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
            _warn_once(f"{torch.cuda.device_count()} GPUs are visible and this process uses one ({device}); to use "
                       f"them all, start the same command with torchrun --nproc_per_node={torch.cuda.device_count()} "
                       f"-m advcl_lite ...")
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None and device.index != local:
            raise ValueError(f"--device {device} under torchrun: each process gets the GPU of its LOCAL_RANK; "
                             f"pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel inside a process group, else ``model`` itself.

    No buffer broadcast in the forward (``forward_sync_buffers=False``, formerly ``broadcast_buffers=False``;
    the buffers are still made equal once, when the wrapper is built): a step runs several forwards before its one backward, and DDP's
    per-forward broadcast of the BN buffers modifies, in place, tensors that earlier forwards saved for
    the backward (PyTorch issues 22095, 65907); with :class:`SyncedBatchNorm` the running statistics are
    equal on every rank without it. ``find_unused_parameters=False``: a method builds only the routes and
    heads it uses, so every parameter receives a gradient.
    """
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                      else {"broadcast_buffers": False})      # the name of torch >= 2.12, and of older releases
    return ddp(model, device_ids=ids, find_unused_parameters=False, **no_buffer_sync)


class _GatherSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.n = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)                       # the sum over ranks of d(loss)/d(all embeddings)
        r = dist.get_rank()
        return grad[r * ctx.n:(r + 1) * ctx.n]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the backward sums the ranks' gradients (every rank's input reaches every output)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (equal shapes), concatenated in rank order; the backward sums the ranks'
    gradients and returns this rank's slice. The identity in a single process."""
    return _GatherSum.apply(x) if active() else x


def gather_detached(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` in rank order, only this rank's slice differentiable. The identity in a single process."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of each value (the per-rank means of equal-sized batches). Unchanged in one process."""
    if not active():
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":        # NCCL reduces on this rank's GPU (cuda:LOCAL_RANK, set by setup)
        t = t.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``t`` (a copy; ``t`` itself in a single process)."""
    if not active():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (``obj`` in a single process)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a cache), then the others (which then read it)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def shard(n: int) -> slice:
    """This rank's contiguous slice of ``n`` items (``n`` divisible by the world size)."""
    w, r = world_size(), rank()
    if n % w:
        raise ValueError(f"a batch of {n} cannot be split evenly across {w} processes; choose a batch size "
                         f"divisible by the number of processes (--nproc_per_node)")
    k = n // w
    return slice(r * k, (r + 1) * k)


class SyncedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (1d or 2d) whose training-mode statistics are those of the global batch over all ranks.

    In a single process, or in eval mode, it is exactly ``nn.BatchNorm1d/2d``. In a process group it works
    on any device and backend (gloo on the CPU included), unlike ``nn.SyncBatchNorm``.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x   # statistics in fp32 at least
        n_local = xf.numel() // xf.shape[1]
        count = all_reduce_sum(torch.tensor([float(n_local)], device=x.device))
        mean = _AllReduceSum.apply(xf.sum(dims)) / count
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count      # biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                n = float(count)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (n / max(n - 1, 1))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm1d/2d replaced by a :class:`SyncedBatchNorm` holding the same
    parameters and buffers (same state-dict keys; in place for children, returns the new root if it is a BN)."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(module, SyncedBatchNorm):
        like = next(t for t in module.state_dict().values() if t.is_floating_point())
        new = SyncedBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, device=like.device, dtype=like.dtype)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module
