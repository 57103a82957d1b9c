"""How the library runs: one device choice, seeding, mixed precision, progress bars, environment switches.

Everything in advcl_lite that needs a device calls :func:`resolve_device`;
nothing calls ``.cuda()`` directly. The ``ADVCL_*`` switches of how things run are read here:

* ``ADVCL_DEVICE``: the device ``"auto"`` resolves to (``cpu``, ``cuda``, ``cuda:1``, ``mps``);
* ``ADVCL_PROGRESS=0``: no progress bars (the tour and the tests set it);
* ``ADVCL_HEADLESS=1``: no frontend will answer a widget (set by the tour's notebook runner);
* ``ADVCL_DEBUG=1``: the command line raises with a traceback instead of printing one line.

The variables that name folders are read where the folder is used: ``ADVCL_CACHE`` (decoded
ImageFolder data, :mod:`advcl_lite.data`), ``ADVCL_ENCODERS`` (a re-made encoder set,
:mod:`advcl_lite.pretrained`), ``ADVCL_NOTEBOOKS`` and ``ADVCL_RECORD_FILE`` (:mod:`advcl_lite.tour`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import random
from typing import Any, Iterator

import numpy as np
import torch

def _installed_version() -> str:
    """The version of the installed distribution (pyproject.toml's, as pip recorded it)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("advcl-lite")
    except PackageNotFoundError:        # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()
_VALID = ("auto", "cpu", "cuda", "mps")
DEVICE_ENV = "ADVCL_DEVICE"
PROGRESS_ENV = "ADVCL_PROGRESS"
HEADLESS_ENV = "ADVCL_HEADLESS"   # set by tour.run_notebook: executed without a frontend (papermill)
DEBUG_ENV = "ADVCL_DEBUG"         # the command line shows tracebacks instead of one-line errors


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to use.

    ``None`` or ``"auto"`` picks CUDA, then Apple MPS, then the CPU; the
    environment variable ``ADVCL_DEVICE`` overrides the automatic choice.
    An explicit ``"cuda"``/``"cuda:1"``/``"mps"`` that is not available is an
    error rather than a silent fallback.
    """
    if isinstance(device, torch.device):
        return device
    src = ""
    if device is None or device == "auto":
        device = os.environ.get(DEVICE_ENV, "auto")
        src = f" (from the environment variable {DEVICE_ENV}={device}; unset it or set it to cpu)" \
            if device != "auto" else ""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    fix = src or "; use --device cpu or auto"
    kind = str(device).split(":")[0]
    if kind not in _VALID:
        raise ValueError(f"unknown device {device!r}{src}; use one of auto, cpu, cuda, cuda:N, mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but CUDA is not available here{fix}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"device 'mps' was asked for but MPS is not available here{fix}")
    return torch.device(device)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DataParallel/DistributedDataParallel wrapper."""
    return getattr(model, "module", model)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with torch's RNG seeded to ``seed`` (CPU, and the CUDA device in use) without
    disturbing the caller's random state; ``seed=None`` leaves the RNG alone."""
    if seed is None:
        yield
        return
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def autocast(device: torch.device, amp: str):
    """The autocast context of a preset's ``amp`` field: ``"none"`` (fp32), ``"bf16"`` or ``"fp16"``."""
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def progress_enabled(progress: bool | None) -> bool:
    """Whether to draw progress bars: ``progress`` if given, else unless ``ADVCL_PROGRESS`` is 0/false/no."""
    if progress is not None:
        return bool(progress)
    return os.environ.get(PROGRESS_ENV, "1") not in ("0", "false", "no")


def debug_enabled() -> bool:
    """True when ``ADVCL_DEBUG`` asks for tracebacks (anything but unset, 0, false or no)."""
    return os.environ.get(DEBUG_ENV, "0") not in ("0", "", "false", "no")


def headless() -> bool:
    """True when no frontend can answer a widget (``ADVCL_HEADLESS=1``: papermill runs)."""
    return os.environ.get(HEADLESS_ENV, "0") == "1"


def progress_bar(iterable, *, total: int | None = None, desc: str = "", progress: bool | None = None,
                 **kwargs: Any):
    """A tqdm bar with the library's settings (off per :func:`progress_enabled`, not left behind, at most
    one redraw every 2 s); ``kwargs`` override them (e.g. ``disable=True``).

    In a notebook the bar is a widget while it runs and a line of text once it closes
    (:func:`_notebook_bar`), so a saved notebook holds no dead widget ("model not found" on reopening).
    """
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    opts = {"disable": not progress_enabled(progress), "leave": False, "mininterval": 2.0, **kwargs}
    if issubclass(tqdm, notebook_tqdm):      # tqdm.auto found a Jupyter kernel
        return _notebook_bar()(iterable, total=total, desc=desc, **opts)
    return tqdm(iterable, total=total, desc=desc, **opts)


@functools.lru_cache(maxsize=1)
def _notebook_bar():
    """A ``tqdm.notebook`` bar shown under a display id; on close it is replaced by one text line
    (``desc: n/total in 0:12``), or ``stopped at n/total`` when it did not finish."""
    from IPython.display import display
    from tqdm.notebook import tqdm as notebook_tqdm

    class TextOnCloseBar(notebook_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, display=False, **kwargs)
            self._handle = None
            if not self.disable:
                self._handle = display(self.container, display_id=True)
                self.displayed = True

        def close(self):
            handle, self._handle = getattr(self, "_handle", None), None
            super().close()
            if handle is not None:
                d = self.format_dict
                done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
                state = "" if not self.total or self.n >= self.total else "stopped at "
                line = f"{self.desc + ': ' if self.desc else ''}{state}{done} in {self.format_interval(d['elapsed'])}"
                handle.update({"text/plain": line}, raw=True)

    return TextOnCloseBar


def describe_device(device: torch.device, wants_gpu: bool = False) -> str:
    """One line for a notebook's set-up cell, its first output: the device in use and the environment a result
    depends on (advcl_lite, torch, CPU threads, Python), and, when ``wants_gpu`` (a preset made for a GPU) but
    only a CPU was found, how to get one."""
    import platform
    line = (f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
            + f" | advcl_lite {__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
              f"Python {platform.python_version()}")
    if wants_gpu and device.type == "cpu":
        line += (". This preset is meant for a GPU and would take days here: in a hosted runtime choose "
                 "Runtime > Change runtime type > GPU and run the notebook again; locally, run it on a machine "
                 "with CUDA, or pick the 'quick' preset")
    return line


def param_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def model_device(model: torch.nn.Module, device=None) -> torch.device:
    """``device`` if given (the model is moved there), else the device of the model's parameters."""
    if device is not None:
        dev = resolve_device(device)
        model.to(dev)
        return dev
    return param_device(model)


@contextlib.contextmanager
def model_mode(model: torch.nn.Module, mode: str | None):
    """Temporarily set ``model`` to train (``"train"``) or eval (``"eval"``); ``None`` keeps it.

    On exit every submodule gets back its own flag, so a model whose parts were in
    different modes (e.g. a frozen encoder in eval under a head in train) is restored exactly.
    """
    if mode not in ("train", "eval", None):
        raise ValueError(f"mode must be 'train', 'eval' or None, got {mode!r}")
    flags = [(m, m.training) for m in model.modules()]
    if mode is not None:
        model.train(mode == "train")
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


ETA_THRESHOLD_S = 60.0    # stages expected to take longer than this announce their time when they start


def announce_eta(label: str, first_seconds: float, units: int, progress: bool | None = None,
                 threshold: float = ETA_THRESHOLD_S) -> float:
    """After the first of ``units`` equal steps of a stage took ``first_seconds``, print one line with the time
    the whole stage will take, when that is over ``threshold`` seconds and progress is shown (a paper-width
    encoder on a CPU: minutes to hours). Returns the estimate in seconds."""
    total = float(first_seconds) * max(1, int(units))
    if total > threshold and progress_enabled(progress):
        when = f"{total / 60:.0f} min" if total < 5400 else f"{total / 3600:.1f} h"
        print(f"{label}: about {when} on this machine ({units} steps, the first took {first_seconds:.1f} s)",
              flush=True)
    return total
