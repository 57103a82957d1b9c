"""Encoders that advcl_lite itself trained, shipped inside the package.

A course cannot pretrain adversarially in class: the encoders that make robustness transfer
visible take tens of CPU-minutes. The package therefore installs a small set trained by its
own :mod:`advcl_lite.pretrain` with the original codes' settings (SimCLR, ACL, AdvCL with its
pseudo-labels, AdvCL without them, and a random-init encoder as the floor), in
``advcl_lite/_data/encoders/``:

* ``<name>.pt`` - a checkpoint of kind ``encoder``: the plain ResNet-18 (the BN route used for
  finetuning, ``pgd`` for ACL/AdvCL) as an fp16 state dict;
* ``<name>.json`` - its manifest: method, every training setting, data, epochs, images seen,
  wall time and machine, the command that made it, the file's SHA-256, and its SLF clean and
  PGD-20 robust accuracy on the CIFAR-10 test set with 95 % intervals, measured on the shipped
  (fp16) file.

``load_pretrained_encoder("acl")`` checks the hash, loads strictly with ``weights_only=True``
and returns the encoder in float32, eval mode. ``advcl-lite pretrained list|verify`` does the
same from the command line. ``benchmarks/make_encoder_set.py`` re-makes the set (the
manifest's ``command``).
"""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint, sha256_file, write_json
from .models import ResNet18
from .runtime import resolve_device

KIND = "encoder"
ORDER = ("random", "simclr", "acl", "advcl-nopl", "advcl")   # the floor first, the paper's method last
REMAKE = "python benchmarks/make_encoder_set.py (see the manifest's 'command')"
# the row names the notebooks and benchmarks/results.py use for each shipped encoder
LABELS = {"random": "Random init", "simclr": "SimCLR", "acl": "ACL", "advcl-nopl": "AdvCL without pseudo-labels",
          "advcl": "AdvCL"}
ENCODER_CHOICES = ("auto", "pretrained", "train")
PRETRAINED_PRESETS = ("quick",)   # where encoders="auto" means the shipped set


class EncoderError(CheckpointError):
    """A shipped encoder is missing, altered or truncated; the message names the file and how to re-make it."""


def encoder_dir() -> Path:
    """The folder of the shipped encoders (``ADVCL_ENCODERS`` overrides it, e.g. for a re-made set)."""
    env = os.environ.get("ADVCL_ENCODERS")
    if env:
        return Path(env)
    return Path(str(resources.files("advcl_lite") / "_data" / "encoders"))


def available(folder: str | os.PathLike | None = None) -> list[str]:
    """Names of the encoders with a manifest in ``folder`` (default :func:`encoder_dir`), in ``ORDER``."""
    folder = Path(folder) if folder is not None else encoder_dir()
    names = {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()
    return [n for n in ORDER if n in names] + sorted(names - set(ORDER))


def manifest(name: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest of encoder ``name``."""
    folder = Path(folder) if folder is not None else encoder_dir()
    path = folder / f"{name}.json"
    if not path.exists():
        have = available(folder)
        raise EncoderError(f"no shipped encoder {name!r} in {folder} (have: {', '.join(have) or 'none'}); "
                           f"re-make the set with {REMAKE}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EncoderError(f"manifest {path} cannot be read ({e}); re-make it with {REMAKE}") from None


def verify_file(name: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """Check that ``<name>.pt`` exists and matches its manifest's SHA-256; return the manifest."""
    folder = Path(folder) if folder is not None else encoder_dir()
    m = manifest(name, folder)
    path = folder / f"{name}.pt"
    if not path.exists():
        raise EncoderError(f"shipped encoder {path} is missing; reinstall advcl_lite or re-make it with {REMAKE}")
    digest = sha256_file(path)
    if digest != m.get("sha256"):
        raise EncoderError(f"shipped encoder {path} does not match its manifest (sha256 {digest[:12]}... instead of "
                           f"{str(m.get('sha256'))[:12]}...): it was altered or truncated; reinstall advcl_lite "
                           f"or re-make it with {REMAKE}")
    return m


def load_pretrained_encoder(name: str, device=None, folder: str | os.PathLike | None = None) -> ResNet18:
    """Shipped encoder ``name`` (see :func:`available`) as a float32 ResNet-18 in eval mode.

    The file's hash is checked against the manifest first, then it is loaded with
    ``weights_only=True`` and strict keys; the result carries ``.manifest``."""
    folder = Path(folder) if folder is not None else encoder_dir()
    m = verify_file(name, folder)
    path = folder / f"{name}.pt"
    try:
        ck = load_checkpoint(path, kind=KIND)
    except CheckpointError as e:
        raise EncoderError(f"{e}; re-make it with {REMAKE}") from None
    try:
        width = int(m["architecture"]["base_width"])
    except (KeyError, TypeError, ValueError):
        raise EncoderError(f"manifest {folder / (name + '.json')} lacks architecture.base_width (the network's "
                           f"width); re-make it with {REMAKE}") from None
    enc = ResNet18(width)
    load_weights(enc, {k: v.float() for k, v in ck["state_dict"].items()}, str(path))
    enc.manifest = m
    return enc.to(resolve_device(device)).eval()


def load_encoder_file(path: str | os.PathLike, device=None) -> ResNet18:
    """An encoder file (kind ``encoder``: a shipped one, or one of a re-made set) given by its path, checked
    against the manifest beside it (``<name>.json``) as :func:`load_pretrained_encoder` checks the shipped set."""
    path = Path(path)
    return load_pretrained_encoder(path.stem, device=device, folder=path.parent)


def resolve_encoders(encoders: str, preset) -> str:
    """The notebooks' ``encoders`` parameter: ``"pretrained"`` (the shipped set) or ``"train"`` (pretrain at the preset).

    ``"auto"`` is ``"pretrained"`` at the ``quick`` preset, where the encoders a laptop can train in
    minutes learn too little to show robustness transfer, and ``"train"`` everywhere else: ``smoke``
    keeps CI exercising training, ``benchmark`` and ``paper`` train at their own scale."""
    name = getattr(preset, "name", preset)
    if encoders not in ENCODER_CHOICES:
        raise ValueError(f"encoders={encoders!r} is not one of {', '.join(ENCODER_CHOICES)}; use 'pretrained' for "
                         f"the shipped set, 'train' to pretrain at the preset, 'auto' for pretrained at quick only")
    if encoders == "auto":
        return "pretrained" if name in PRETRAINED_PRESETS else "train"
    return encoders


def load_set(names=None, device=None, folder: str | os.PathLike | None = None) -> dict[str, ResNet18]:
    """The shipped encoders ``names`` (default: all, in ``ORDER``) keyed by their row name (:data:`LABELS`)."""
    names = list(names) if names is not None else available(folder)
    return {LABELS.get(n, n): load_pretrained_encoder(n, device=device, folder=folder) for n in names}


def history(name: str, folder: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The per-epoch training history (loss terms, lr, seconds) recorded when encoder ``name`` was trained."""
    return list(manifest(name, folder).get("history") or [])


def save_encoder(encoder: ResNet18, name: str, folder: str | os.PathLike, info: dict[str, Any]) -> dict[str, Any]:
    """Write ``encoder`` as ``folder/<name>.pt`` (fp16) and its manifest ``folder/<name>.json``.

    ``info`` is the manifest without the hash and architecture, which are filled in here."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in encoder.state_dict().items()}
    path = save_checkpoint(folder / f"{name}.pt", kind=KIND, state_dict=state,
                           meta={"name": name, "base_width": encoder.base_width})
    m = {"name": name, **info, "file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
         "dtype": "float16", "architecture": {"class": "ResNet18 (CIFAR)", "base_width": encoder.base_width,
                                              "feature_dim": encoder.feature_dim,
                                              "params": sum(p.numel() for p in encoder.parameters())}}
    write_manifest(m, folder)
    return m


def write_manifest(m: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Atomically write ``folder/<name>.json``."""
    return write_json(Path(folder) / f"{m['name']}.json", m)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _with_ci(v, ci) -> str:
    lo, hi = ci if ci else (None, None)
    return f"{_pct(v)} [{_pct(lo)}, {_pct(hi)}]"


def table(folder: str | os.PathLike | None = None) -> str:
    """The shipped set as a markdown table: method, data, epochs, images seen, time, SLF SA / RA with intervals."""
    rows = ["| encoder | method | pretraining data | epochs | images seen | wall time | SLF SA % [95% CI] | "
            "SLF RA PGD-20 % [95% CI] | n |", "| --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: |"]
    for name in available(folder):
        m = manifest(name, folder)
        slf = m.get("slf") or {}
        sa, ra = _with_ci(slf.get("sa"), slf.get("sa_ci")), _with_ci(slf.get("ra"), slf.get("ra_ci"))
        mins = m.get("wall_seconds")
        rows.append(f"| {name} | {m.get('label', m.get('method'))} | {m.get('data', {}).get('num_train', '-')} images of "
                    f"{m.get('data', {}).get('dataset_name', '-')} | {m.get('epochs', '-')} | {m.get('images_seen', '-')} | "
                    f"{'-' if mins is None else f'{mins / 60:.1f} min'} | {sa} | {ra} | {slf.get('n', '-')} |")
    return "\n".join(rows)
