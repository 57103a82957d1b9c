"""One device choice for the whole library, and one seeding function.

Everything in advcl_lite that needs a device calls :func:`resolve_device`;
nothing calls ``.cuda()`` directly.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

_VALID = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to use.

    ``None`` or ``"auto"`` picks CUDA, then Apple MPS, then the CPU; the
    environment variable ``ADVCL_DEVICE`` overrides the automatic choice.
    An explicit ``"cuda"``/``"cuda:1"``/``"mps"`` that is not available is an
    error rather than a silent fallback.
    """
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        device = os.environ.get("ADVCL_DEVICE", "auto")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = str(device).split(":")[0]
    if kind not in _VALID:
        raise ValueError(f"unknown device {device!r}; use one of auto, cpu, cuda, cuda:N, mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu or auto")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device 'mps' was asked for but MPS is not available here; use --device cpu or auto")
    return torch.device(device)


def maybe_data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Wrap ``model`` in DataParallel when several CUDA devices are visible.

    Checkpoints always store the unwrapped module (see :func:`unwrap`).
    """
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return torch.nn.DataParallel(model)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DataParallel/DistributedDataParallel wrapper."""
    return getattr(model, "module", model)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(n: int | None) -> None:
    """Limit intra-op CPU threads (``None`` leaves torch's default)."""
    if n:
        torch.set_num_threads(int(n))
