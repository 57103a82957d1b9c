"""The notebooks' encoders, and where each came from: one record type for shipped, imported and trained ones.

Notebooks 03-05 take an ``encoders`` parameter (:func:`advcl_lite.pretrained.resolve_encoders`): the set shipped
with the package (``"pretrained"``), a folder of imported encoders (``advcl-lite import-encoder``), or encoders
trained at the preset in ``work_dir`` (``"train"``). :func:`get_encoders` turns it into :class:`Encoder` records,
one per table row, in the notebooks' order, named as :data:`advcl_lite.pretrained.LABELS` names them:

* shipped: the hash-checked file of the package (finetuned under ``work_dir/finetune/shipped-<key>-<scheme>``);
* imported: every encoder of the folder, named by its manifest (``imported-<key>-<scheme>``);
* trained: the run ``work_dir/pretrain/<key>`` at the preset, loaded if it was trained with this configuration,
  trained otherwise (finetuned under ``<key>-<scheme>``); ``random`` is the architecture with seeded random
  weights, the floor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from . import pretrained
from .models import ResNet18
from .pretrain import get_or_train

ROWS = pretrained.SHIPPED_ROWS      # simclr, acl, advcl, advcl-nopl, random: the notebooks' order


@dataclass
class Encoder:
    """One encoder of a notebook's table.

    ``name``: the row's label; ``key``: its run / file name (``advcl-nopl``, or an imported file's stem);
    ``kind``: ``"shipped"``, ``"imported"``, ``"trained"`` or ``"random"``; ``source``: what finetuning takes (a
    pretraining checkpoint path, or the loaded network); ``cache_name``: its folder prefix under
    ``work_dir/finetune``; ``seconds``: its pretraining wall time (0 without pretraining); ``manifest`` (shipped,
    imported) and ``history`` (its per-epoch pretraining record, where one exists); ``cached``: a trained run
    loaded from ``work_dir``; ``run``: the trained run's :class:`~advcl_lite.pretrain.PretrainResult`."""

    name: str
    key: str
    kind: str
    source: Any
    cache_name: str
    seconds: float = 0.0
    manifest: dict | None = None
    history: list = field(default_factory=list)
    cached: bool = False
    run: Any = None

    def describe(self) -> str:
        """One line: where the encoder came from."""
        m = self.manifest or {}
        if self.kind == "random":
            width = getattr(self.source, "base_width", "?")
            return f"width-{width} ResNet-18 with seeded random weights, no pretraining"
        if self.kind == "imported":
            src = m.get("source", {})
            return (f"{m.get('file')} (sha256 {str(m.get('sha256'))[:12]}), imported from {src.get('file')} "
                    f"({src.get('format')} layout, BN route {m.get('route')})")
        if self.kind == "shipped":
            return (f"{m['file']} (sha256 {m['sha256'][:12]}), {m['epochs']} epochs on {m['data']['num_train']} "
                    f"images, {m['wall_seconds'] / 60:.0f} min on {m['machine']['cpus']} CPUs")
        how = "loaded" if self.cached else f"trained in {self.run.seconds:.0f}s"
        return (f"{how}, {len(self.history)} epoch(s), finetuned through BN route {self.run.meta['eval_route']!r} "
                f"({self.source})")


def get_encoders(encoders: str, preset, work_dir=None, *, data=None, device=None, keys: Sequence[str] = ROWS,
                progress: bool | None = None) -> dict[str, Encoder]:
    """The encoders a notebook uses, by row label, in the notebooks' order (see the module docstring).

    ``encoders``: ``"pretrained"``, ``"train"`` or a folder (as :func:`~advcl_lite.pretrained.resolve_encoders`
    returns it); ``keys``: which of :data:`ROWS` (a folder of imported encoders gives all of its own);
    ``work_dir`` / ``data`` / ``device``: where and on what trained encoders are trained or found."""
    bad = [k for k in keys if k not in ROWS]
    if bad:
        raise ValueError(f"unknown encoder key(s) {bad}; choose from {ROWS}")
    if encoders != "train":
        out = {}
        for name, key, folder in pretrained.encoder_rows(encoders):
            if folder is None and key not in keys:
                continue
            enc = pretrained.load_pretrained_encoder(key, device=device, folder=folder)   # hash-checked, strict
            m = enc.manifest
            kind = "imported" if folder is not None else ("random" if key == "random" else "shipped")
            secs = 0.0 if kind == "random" else float(m.get("wall_seconds") or 0.0)
            out[name] = Encoder(name, key, kind, enc, f"{'imported' if folder is not None else 'shipped'}-{key}", secs,
                                m, list(m.get("history") or []))
        return out
    out = {}
    for key in keys:
        if key == "random":
            continue
        run = get_or_train("advcl" if key.startswith("advcl") else key, preset, work_dir, data=data, device=device,
                           progress=progress, **({"pseudo_labels": False} if key == "advcl-nopl" else {}))
        out[pretrained.LABELS[key]] = Encoder(pretrained.LABELS[key], key, "trained", run.checkpoint,
                                              run.checkpoint.parent.name, run.train_seconds, None, run.history,
                                              run.cached, run)
    if "random" in keys:
        torch.manual_seed(preset.seed)
        net = ResNet18(preset.base_width)     # the floor: the same architecture, random weights, no pretraining
        out[pretrained.LABELS["random"]] = Encoder(pretrained.LABELS["random"], "random", "random", net, "random")
    return out
