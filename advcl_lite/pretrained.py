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
import re
from importlib import resources
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint, sha256_file, write_json
import torch

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
    enc = ResNet18(width, input_norm=_input_norm(m["architecture"].get("input_normalize")))
    load_weights(enc, {k: v.float() for k, v in ck["state_dict"].items()}, str(path))
    enc.manifest = m
    return enc.to(resolve_device(device)).eval()


def _input_norm(spec):
    """A manifest's ``architecture.input_normalize`` ({"mean": [...], "std": [...]}, or None) as (mean, std)."""
    return None if not spec else (spec["mean"], spec["std"])


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
        folder = Path(str(encoders)).expanduser()
        if folder.is_dir() and available(folder):         # a folder of imported (or re-made) encoder files
            return str(folder.resolve())
        raise ValueError(f"encoders={encoders!r} is not one of {', '.join(ENCODER_CHOICES)} nor a folder of encoder "
                         f"files with manifests; use 'pretrained' for the shipped set, 'train' to pretrain at the "
                         f"preset, 'auto' for pretrained at quick only, or a folder made by advcl-lite import-encoder")
    if encoders == "auto":
        return "pretrained" if name in PRETRAINED_PRESETS else "train"
    return encoders


SHIPPED_ROWS = ("simclr", "acl", "advcl", "advcl-nopl", "random")   # the notebooks' row order


def encoder_rows(encoders: str) -> list[tuple[str, str, Path | None]]:
    """``(row name, encoder name, folder)`` of the set a notebook uses when it does not train: the shipped set
    (``"pretrained"``, folder None) in the notebooks' order, or every encoder of a folder (a path returned by
    :func:`resolve_encoders`), named by its manifest's ``label``."""
    if encoders == "pretrained":
        return [(LABELS[n], n, None) for n in SHIPPED_ROWS]
    folder = Path(encoders)
    return [(manifest(n, folder).get("label") or n, n, folder) for n in available(folder)]


def load_set(names=None, device=None, folder: str | os.PathLike | None = None) -> dict[str, ResNet18]:
    """The shipped encoders ``names`` (default: all, in ``ORDER``) keyed by their row name (:data:`LABELS`)."""
    names = list(names) if names is not None else available(folder)
    return {LABELS.get(n, n): load_pretrained_encoder(n, device=device, folder=folder) for n in names}


def history(name: str, folder: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The per-epoch training history (loss terms, lr, seconds) recorded when encoder ``name`` was trained."""
    return list(manifest(name, folder).get("history") or [])


def save_encoder(encoder: ResNet18, name: str, folder: str | os.PathLike, info: dict[str, Any],
                 dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Write ``encoder`` as ``folder/<name>.pt`` (``dtype``: fp16 for the shipped set, float32 for an import,
    which must equal its source exactly) and its manifest ``folder/<name>.json``.

    ``info`` is the manifest without the hash and architecture, which are filled in here."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() and not k.startswith("normalize.") else v)
             for k, v in encoder.state_dict().items()}
    path = save_checkpoint(folder / f"{name}.pt", kind=KIND, state_dict=state,
                           meta={"name": name, "base_width": encoder.base_width})
    m = {"name": name, **info, "file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
         "dtype": str(dtype).replace("torch.", ""),
         "architecture": {"class": "ResNet18 (CIFAR)", "base_width": encoder.base_width,
                          "feature_dim": encoder.feature_dim, "params": sum(p.numel() for p in encoder.parameters()),
                          "input_normalize": None if encoder.input_norm is None else
                          {"mean": encoder.input_norm[0], "std": encoder.input_norm[1]}}}
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


# --------------------------------------------------------------------------- importing published checkpoints

IMPORT_FORMATS = ("advcl", "acl", "robustssl", "dynacl")
# BN routes by index in each code's multi-BN layers (`<bn>.bn_list.<i>`): AdvCL (LijieFan/AdvCL,
# models/resnet_cifar_multibn_ensembleFC.py: bn_names normal, pgd, pgd_ce); ACL and DynACL (ACL_DS: normal, pgd)
ROUTE_NAMES = {"advcl": ("normal", "pgd", "pgd_ce"), "acl": ("normal", "pgd"), "dynacl": ("normal", "pgd"),
               "robustssl": ("normal", "pgd", "pgd_ce")}
# what each format's own finetuning keeps: `pgd` everywhere (AdvCL's load_BN_checkpoint returns bn_list.1 for
# SLF; ACL's and DynACL's cvt_state_dict with --bnNameCnt 1; RobustSSL forces bnNameCnt 1, or AdvCL's loader)
DEFAULT_ROUTE = "pgd"
# heads, dropped: AdvCL's projection, prediction, CE and pseudo-label heads; ACL's / DynACL's projection head
# (fc.fc1..fc.bn3) and a finetuned model's linear layer (fc.weight, fc.bias)
_HEAD = re.compile(r"^(head_proj|head_pred|head_ce|fc_\d+|fc|linear|proj_head|projector|head)(\.|$)")
_WRAPPERS = ("state_dict_dual", "state_dict", "model", "net", "encoder")


class ImportError_(CheckpointError):
    """A checkpoint to import has a layout this importer does not know, or does not fill the network exactly."""


def _find_state_dict(obj, where: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a loaded checkpoint: the dict itself when its values are tensors, else the first
    of the usual wrapper keys ('state_dict_dual', 'state_dict', 'model', ...) that holds one."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, "(top level)"
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner, key
    keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ImportError_(f"{where}: no state dict found (top-level keys {keys}); the importer reads a dict of tensors, "
                       f"or one under {', '.join(repr(k) for k in _WRAPPERS)}")


def _strip(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove the wrappers' name prefixes: DataParallel's ``module.``, DeACL's ``backbone.``; of DynACL's whole
    momentum model (``encoder_q.`` / ``encoder_k.``) keep ``encoder_k``, the copy DynACL releases and evaluates."""
    notes, out = [], dict(state)
    if any(k.startswith("encoder_k.") for k in out):
        notes.append("kept encoder_k (DynACL's momentum encoder, the released copy); dropped encoder_q")
        out = {k[len("encoder_k."):]: v for k, v in out.items() if k.startswith("encoder_k.")}
    for prefix in ("module.", "backbone.", "encoder."):
        if out and all(k.startswith(prefix) for k in out):
            notes.append(f"stripped the prefix {prefix!r}")
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out, notes


def detect_format(raw: dict[str, torch.Tensor], wrapper: str = "(top level)") -> str | None:
    """The layout of a checkpoint's state dict, before its prefixes are removed: ``advcl`` (AdvCL's heads
    ``fc_K`` / ``head_proj``, or a third BN route), ``dynacl`` (DynACL's whole momentum model,
    ``encoder_q.`` / ``encoder_k.``), ``robustssl`` (the benchmark's ``state_dict_dual``, or DeACL's
    ``backbone.`` prefix); None for ACL's layout, which DynACL's released encoder and RobustSSL's ACL-family
    files share (ambiguous: the caller names the format)."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in raw]
    if any(k.startswith(("head_proj.", "head_pred.", "head_ce.")) or re.match(r"fc_\d+\.", k) for k in keys) or \
            any(".bn_list.2." in k for k in keys):
        return "advcl"
    if any(k.startswith(("encoder_k.", "encoder_q.")) for k in keys):
        return "dynacl"
    if wrapper == "state_dict_dual" or (keys and all(k.startswith("backbone.") for k in keys)):
        return "robustssl"
    return None


def _map_key(key: str, route_index: int | None) -> tuple[str | None, str]:
    """advcl_lite's ResNet-18 name for one source key: (name, "") when kept, (None, why) when dropped."""
    if key.startswith("normalize."):
        return key, ""
    if _HEAD.match(key):
        return None, "head"
    k = key.replace(".downsample.conv.", ".shortcut.0.").replace(".downsample.bn.", ".shortcut.1.")
    k = k.replace(".downsample.0.", ".shortcut.0.").replace(".downsample.1.", ".shortcut.1.")
    m = re.match(r"^(.*)\.bn_list\.(\d+)\.(.*)$", k)
    if m:
        if route_index is None or int(m.group(2)) != route_index:
            return None, f"route {m.group(2)}"
        k = f"{m.group(1)}.{m.group(3)}"
    return k, ""


def import_encoder(path: str | os.PathLike, out_dir: str | os.PathLike, format: str = "auto",
                   route: str | None = None, name: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Import a published ResNet-18 checkpoint (AdvCL's ``epoch_N.ckpt``, ACL's ``ACL_DS.pt``, the RobustSSL
    model zoo, DynACL's files) as an advcl_lite encoder file ``out_dir/<name>.pt`` with its manifest.

    The file is read with ``weights_only=True``; wrapper keys and name prefixes are removed; the multi-BN
    layers' route ``route`` (default ``pgd``, what each code's own finetuning keeps) becomes the plain BN; heads
    are dropped and listed. Strict after the mapping: every tensor of advcl_lite's ResNet-18 (and of its input
    normalisation, where the file has one) is filled, and every tensor of the file is used or listed as
    dropped; anything else is an error naming the keys. Returns the manifest."""
    path = Path(path)
    if format not in ("auto", *IMPORT_FORMATS):
        raise ImportError_(f"unknown --format {format!r}; the layouts known are {', '.join(IMPORT_FORMATS)} "
                           f"(or auto)")
    if not path.is_file():
        raise ImportError_(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for files that are not checkpoints
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ImportError_(f"{path} is not a checkpoint that loads with weights_only=True ({first}); if it holds "
                           f"Python objects, re-save its state dict with torch.save(ckpt['state_dict'], FILE)") from None
    raw, wrapper = _find_state_dict(obj, str(path))
    state, notes = _strip(raw)
    found = detect_format(raw, wrapper)
    if format == "auto":
        if found is None:
            raise ImportError_(f"{path}: the layout is ACL's (shared by DynACL's and RobustSSL's files) or unknown, "
                               f"so --format auto cannot tell which; pass --format acl, dynacl or robustssl "
                               f"(known layouts: {', '.join(IMPORT_FORMATS)})")
        format = found
    if "conv1.weight" not in state or state["conv1.weight"].dim() != 4:
        some = ", ".join(list(state)[:5])
        raise ImportError_(f"{path}: no ResNet-18 stem (conv1.weight) after removing the wrappers (keys begin "
                           f"{some}); the layouts known are {', '.join(IMPORT_FORMATS)}")
    indices = sorted({int(m.group(1)) for k in state for m in [re.search(r"\.bn_list\.(\d+)\.", k)] if m})
    names = ROUTE_NAMES[format]
    routes_in_file = [names[i] if i < len(names) else f"route {i}" for i in indices]
    if indices:
        want = route or DEFAULT_ROUTE
        if want not in routes_in_file:
            raise ImportError_(f"{path}: route {want!r} is not in this {format} file, whose BN routes are "
                               f"{routes_in_file}; pass --route with one of them")
        route_index = indices[routes_in_file.index(want)]
        route = want
    else:
        if route is not None:
            raise ImportError_(f"{path} has one BN per layer (no routes); drop --route {route}")
        route_index = None
    width = int(state["conv1.weight"].shape[0])
    norm = None
    if "normalize.mean" in state and "normalize.std" in state:
        norm = (state["normalize.mean"].float().tolist(), state["normalize.std"].float().tolist())
    enc = ResNet18(width, input_norm=norm)
    target = enc.state_dict()
    mapped, dropped = {}, {}
    unknown = []
    for k, v in state.items():
        new, why = _map_key(k, route_index)
        if new is None:
            dropped.setdefault(why, []).append(k)
        elif new in target:
            mapped[new] = v
        else:
            unknown.append(k)
    missing = [k for k in target if k not in mapped]
    shape = [f"{k} {tuple(mapped[k].shape)} (needs {tuple(target[k].shape)})" for k in target
             if k in mapped and mapped[k].shape != target[k].shape]
    if unknown or missing or shape:
        parts = ([f"tensors of the file with no place in the network: {', '.join(unknown[:6])}"] if unknown else []) + \
                ([f"tensors of the network the file does not fill: {', '.join(missing[:6])}"] if missing else []) + \
                ([f"wrong shapes: {', '.join(shape[:4])}"] if shape else [])
        raise ImportError_(f"{path} ({format} layout, width {width}): " + "; ".join(parts))
    enc.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in mapped.items()}, strict=True)
    name = name or re.sub(r"[^A-Za-z0-9_.+-]", "_", path.stem)
    out = Path(out_dir)
    if (out / f"{name}.pt").exists() and not overwrite:
        raise ImportError_(f"{out / (name + '.pt')} already exists; pass --overwrite to replace it, or --name another")
    info = {"label": name, "method": format, "imported": True,
            "source": {"file": path.name, "sha256": sha256_file(path), "format": format, "wrapper": wrapper,
                       "notes": notes, "routes": routes_in_file},
            "route": route, "image_size": 32,
            "dropped": {why: {"count": len(ks), "examples": ks[:4]} for why, ks in dropped.items()}}
    return save_encoder(enc, name, out, info, dtype=torch.float32)
