"""Adversarial contrastive pretraining: SimCLR, ACL, AdvCL and DynACL on one training loop.

Each method's step (views, attack, loss) is a class of :mod:`advcl_lite.methods`; this module runs it:
the optimiser and learning-rate schedule, the epochs, checkpoints and resume, and AdvCL's own
pseudo-labels. Pseudo-labels are part of AdvCL: by default (``pseudo_labels="auto"``) they are k-means
clusters of the features of a SimCLR run at the same preset (the original's came from an ImageNet model
that cannot be had offline); ``pseudo_labels=False`` is the ablation without them.

Optimisation (:mod:`advcl_lite.optim`): AdvCL with SGD (momentum, weight decay 1e-4),
its cosine set once per epoch after a linear warm-up from 0.01; SimCLR and ACL with LARS
(``acl_optimizer="lars"``), per-step cosine to 1e-6 after a warm-up from 0.
``amp="bf16"``/``"fp16"`` runs the forward passes and attacks under autocast (losses stay
float32; fp16 uses a gradient scaler); ``channels_last`` stores the network and the
batches in NHWC.

Runs: :func:`pretrain` writes ``last.pt`` every ``ckpt_every`` epochs (and when it
stops early at ``max_epochs``), ``final.pt`` at the end, and ``history.json``
(one record per epoch) beside them; checkpoints are written atomically and carry
the optimizer, scheduler and random-number states, so a resumed run reaches the
same weights as an uninterrupted one. A NaN/inf loss, or weights that became
non-finite, stop the run with :class:`NonFiniteLossError` before anything is
written, so ``last.pt`` always holds the last good state. :func:`get_or_train`
reuses a finished run with the same configuration (notebooks: "load if cached,
else train").
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import distributed
from .checkpoint import (CheckpointError, check_run_kind, check_writable, load_checkpoint, load_weights, run_lock, save_checkpoint,
                         set_aside, write_json)
from .data import ImageDataset, class_balanced_subset, load_dataset
from .frequency import scaled_radius
from .losses import NonFiniteLossError
from .methods import ACL_ATTACK_MODE, EVAL_ROUTE, VIEWS, make_step
from .models import METHODS, ContrastiveNet, build_net, load_pretrained, to_channels_last
from .optim import LARS, lr_factor
from .presets import Preset, get_preset
from .pseudo_labels import PseudoLabels, get_or_make_pseudo_labels
from .runtime import autocast, progress_bar, progress_enabled, resolve_device, seed_everything, unwrap


@dataclass
class PretrainResult:
    """A pretraining run: ``checkpoint`` (final.pt, or last.pt when stopped early), the per-epoch
    ``history``, the network (eval mode), the checkpoint metadata, whether it was loaded from
    disk (``cached``) and the wall-clock ``seconds`` of this call."""

    checkpoint: Path
    history: list[dict[str, Any]]
    net: ContrastiveNet
    meta: dict[str, Any]
    cached: bool = False
    seconds: float = field(default=0.0)

    @property
    def final_loss(self) -> float:
        return float(self.history[-1]["loss"]) if self.history else float("nan")

    @property
    def train_seconds(self) -> float:
        """Seconds spent in training epochs (summed over the history, resumed parts included)."""
        return float(sum(r["seconds"] for r in self.history))

    @property
    def images_per_s(self) -> float:
        """Training throughput over the whole history (images / second)."""
        n = sum(r["images_per_s"] * r["seconds"] for r in self.history)
        return float(n / self.train_seconds) if self.train_seconds > 0 else float("nan")


def pretrain_dataset(preset: Preset, data: str | ImageDataset | None = None) -> ImageDataset:
    """The training images a preset pretrains on (``train_subset`` class-balanced images of the train split).

    Pseudo-labels are made for exactly this dataset, indexed the same way.
    """
    if isinstance(data, ImageDataset):
        ds = data
    else:
        ds = load_dataset(data or preset.data, "train")
    return class_balanced_subset(ds, preset.train_subset, seed=preset.seed)


def run_name(method: str, view: str = "hfc", pseudo: bool = True, radius: float | None = None,
             air: bool = False) -> str:
    """Folder name of a run: ``simclr``, ``acl``, ``dynacl``, ``dynacl-air`` (AIR's terms), ``advcl`` (with
    pseudo-labels, the paper's method), ``advcl-nopl``, ``advcl-lfc``, ``advcl-none-nopl``, ``advcl-r4`` ..."""
    if method != "advcl":
        return method + ("-air" if air and method in AIR_METHODS else "")
    name = "advcl" + ("" if view == "hfc" else f"-{view}") + ("" if pseudo else "-nopl")
    return name + (f"-r{radius:g}" if radius is not None else "")


AIR_METHODS = ("acl", "dynacl")    # the methods that take AIR's regularisers (preset.air)


def uses_lars(method: str, preset: Preset) -> bool:
    """SimCLR, ACL and DynACL train with LARS as ACL's and DynACL's code do, unless ``acl_optimizer="sgd"``."""
    return method in ("simclr", "acl", "dynacl") and preset.acl_optimizer == "lars"


def make_optimizer(method: str, net: nn.Module, preset: Preset) -> torch.optim.Optimizer:
    """LARS (SimCLR, ACL, DynACL: lr ``acl_lr``, weight decay ``acl_weight_decay``, trust ``lars_eta``) or
    SGD (AdvCL: lr ``lr``, weight decay ``weight_decay``), momentum ``momentum``."""
    if uses_lars(method, preset):
        return LARS(net.parameters(), lr=preset.acl_lr, momentum=preset.momentum,
                    weight_decay=preset.acl_weight_decay, eta=preset.lars_eta)
    return torch.optim.SGD(net.parameters(), lr=preset.lr, momentum=preset.momentum, weight_decay=preset.weight_decay)


def _lr_lambda(method: str, preset: Preset, steps_per_epoch: int):
    warm = round(preset.warmup_epochs * steps_per_epoch)
    total = max(1, preset.epochs * steps_per_epoch)
    if method == "dynacl" and uses_lars(method, preset):   # train_DynACL.py steps ACL's cosine once per epoch
        return lambda step: _per_epoch_cosine(step // max(1, steps_per_epoch), preset.epochs, preset.warmup_epochs,
                                              1e-6 / preset.acl_lr)
    if uses_lars(method, preset):   # ACL's cosine_annealing: warm-up from 0, cosine to an absolute 1e-6
        return lambda step: lr_factor(step, warm, total, start=0.0, end=1e-6 / preset.acl_lr)
    # AdvCL's warmup_learning_rate / adjust_learning_rate: from an absolute 0.01, cosine to lr * 1e-3
    spe = steps_per_epoch if preset.advcl_lr_per_epoch else None
    return lambda step: lr_factor(step, warm, total, start=min(1.0, 0.01 / preset.lr), end=1e-3,
                                  steps_per_epoch=spe)


def _per_epoch_cosine(epoch: int, epochs: int, warmup: float, end: float) -> float:
    """ACL's ``cosine_annealing`` evaluated at the epoch (0-based) as DynACL's scheduler steps it: ``(epoch + 1) /
    warmup`` during the warm-up epochs, then a cosine from 1 to ``end`` over the remaining epochs."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    t = min(1.0, max(0.0, (epoch - warmup) / max(1e-9, epochs - warmup)))
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))


def _config(method: str, preset: Preset, view: str, radius: float, pseudo_meta: dict | None,
            ds: ImageDataset) -> dict[str, Any]:
    """What determines a run's weights (compared on resume and by get_or_train). Settings that do
    not change the result (finetuning/evaluation fields, channels_last, ckpt_every, the preset's
    name) are left out, so changing them does not retrain."""
    keys = ["train_subset", "base_width", "batch_size", "epochs", "momentum", "warmup_epochs", "temperature",
            "amp", "seed"]
    if uses_lars(method, preset):
        keys += ["acl_optimizer", "acl_lr", "acl_weight_decay", "lars_eta"]
    else:
        keys += ["lr", "weight_decay", "advcl_lr_per_epoch"] + (["acl_optimizer"] if method != "advcl" else [])
    if method != "advcl":
        keys += ["acl_head"]
    else:
        keys += ["base_temperature"]
    if method in ("acl", "advcl", "dynacl"):
        keys += ["eps", "alpha", "pgd_steps"]
    if method == "dynacl":
        keys += ["dynacl_stages", "dynacl_swap", "dynacl_momentum"]
    if method in AIR_METHODS and preset.air:      # absent when off, so runs made before AIR existed still resume
        keys += ["air", "air_lambda1", "air_lambda2"]
    training = {k: getattr(preset, k) for k in keys}
    if method in ("acl", "dynacl"):
        training["attack_mode"] = ACL_ATTACK_MODE
    if method == "advcl":
        training["attack_mode"] = preset.attack_mode
    if pseudo_meta is not None:
        training["pseudo_lambda"] = preset.pseudo_lambda
    cfg = {"method": method, "training": training, "view": view if method == "advcl" else None,
           "radius": radius if method == "advcl" else None, "pseudo": pseudo_meta is not None,
           "pseudo_labels": pseudo_meta, "dataset": ds.id, "data_fingerprint": ds.fingerprint, "dataset_name": ds.name,
           "image_size": ds.image_size, "num_train": len(ds)}
    return json.loads(json.dumps(cfg))


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def head_of(method: str, preset: Preset) -> str:
    """The projection head a method trains with: AdvCL's, or (SimCLR, ACL, DynACL) ``preset.acl_head``."""
    return "advcl" if method == "advcl" else preset.acl_head


def auto_pseudo_labels(preset: Preset, ds: ImageDataset, work_dir: str | os.PathLike, device=None,
                       progress: bool | None = None):
    """AdvCL's default pseudo-labels for ``ds``: k-means (K in ``preset.pseudo_ks``; K > N/2 dropped) on the
    features of the SimCLR run ``work_dir/pretrain/simclr`` at the same preset (trained if absent), cached in
    ``work_dir/pseudo_labels/simclr.pt``. The original clustered an ImageNet-pretrained model's features,
    which cannot be had offline; any other labels can be passed as ``pseudo_labels=``."""
    final = Path(work_dir) / "pretrain" / "simclr" / "final.pt"
    stored = _stored_config(final) if final.exists() else None
    want = _resolve("simclr", preset, ds, "hfc", None, False, {})[-1]
    if stored is not None and stored != want:     # a run of the user's: never replaced without a flag
        diff = "; ".join(_config_diff(stored, want)[:4])
        raise ValueError(f"AdvCL's pseudo-labels need a SimCLR run at this preset, but {final} was trained with "
                         f"another configuration ({diff}); make labels from it with `advcl-lite pseudo-labels "
                         f"--encoder {final}` and pass --pseudo-labels FILE, or use another --out / work_dir")
    simclr = get_or_train("simclr", preset, work_dir, data=ds, device=device, progress=progress)
    with distributed.main_first():          # under torchrun rank 0 makes the labels, the others then load them
        return get_or_make_pseudo_labels(Path(work_dir) / "pseudo_labels" / "simclr.pt", simclr.checkpoint, ds,
                                         ks=preset.pseudo_ks, seed=preset.seed, device=device, progress=progress,
                                         encoder_name=f"simclr ({preset.name} preset, seed {preset.seed})",
                                         warn_dropped=False)   # the preset documents the drop of K > N/2


def _resolve(method, preset, data, view, radius, pseudo_labels, overrides, labels_dir=None, device=None,
             progress=None):
    """Check the arguments and return (preset, dataset, radius, pseudo-labels or None, config).

    ``pseudo_labels``: ``"auto"``/``None`` (AdvCL: :func:`auto_pseudo_labels` in ``labels_dir``; others: none),
    ``False`` (none), or a :class:`~advcl_lite.pseudo_labels.PseudoLabels` / path (AdvCL only)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
    p = get_preset(preset, **overrides) if overrides or not isinstance(preset, Preset) else preset
    ds = pretrain_dataset(p, data)
    r = float(radius) if radius is not None else scaled_radius(ds.image_size, p.hfc_radius)
    pl = None
    if pseudo_labels is None or (isinstance(pseudo_labels, str) and pseudo_labels == "auto"):
        if method == "advcl":
            if labels_dir is None:
                raise ValueError("AdvCL makes its pseudo-labels from a SimCLR run: give a folder for it "
                                 "(labels_dir=...), a pseudo-label file (pseudo_labels=PATH), or "
                                 "pseudo_labels=False for AdvCL without pseudo-labels")
            pl = auto_pseudo_labels(p, ds, labels_dir, device=device, progress=progress)
    elif pseudo_labels is not False:
        if method != "advcl":
            raise ValueError("pseudo-labels are used by AdvCL only (method='advcl')")
        pl = pseudo_labels if isinstance(pseudo_labels, PseudoLabels) else PseudoLabels.load(pseudo_labels, dataset=ds)
        pl.check_dataset(ds)
    return p, ds, r, pl, _config(method, p, view, r, pl.describe() if pl is not None else None, ds)


def _kept(last: Path, wrote_last: bool) -> str:
    if wrote_last:
        return f"the last good checkpoint {last} is kept"
    return ("this run wrote no checkpoint yet" + (f"; {last.parent} still holds an earlier run's files, untouched"
                                                   if last.exists() or (last.parent / 'final.pt').exists() else ""))


def nonfinite_hint(method: str, preset: Preset) -> str:
    """The likely cause of a non-finite pretraining loss, for its error message: the setting that
    overflows, or the learning rate this method actually uses (LARS's ``acl_lr`` or SGD's ``lr``)."""
    if preset.temperature < 1e-3:
        return (f"temperature={preset.temperature:g} makes exp(similarity / temperature) overflow; use a value "
                f"near the original's 0.5")
    if preset.amp != "none":
        return f"amp={preset.amp!r} has too little range here; use amp='none'"
    key = "acl_lr" if uses_lars(method, preset) else "lr"
    return f"the learning rate {key}={getattr(preset, key):g} is too large for this run; lower it"


def _all_finite(net: nn.Module) -> bool:
    with torch.no_grad():
        return all(bool(torch.isfinite(t).all()) for t in list(net.parameters()) + list(net.buffers())
                   if t.is_floating_point())


def pretrain(method: str, preset: str | Preset = "smoke", *, out_dir: str | os.PathLike, data=None,
             view: str = "hfc", radius: float | None = None, pseudo_labels="auto", resume: bool = True,
             device=None, progress: bool | None = None, recompute_anchors: bool = False,
             max_epochs: int | None = None, labels_dir: str | os.PathLike | None = None, sync_bn: bool = True,
             **overrides) -> PretrainResult:
    """Pretrain ``method`` ("simclr", "acl", "advcl", "dynacl") at ``preset`` into ``out_dir``.

    ``data``: a dataset name/path or an :class:`ImageDataset` (default: the preset's);
    ``overrides``: preset fields (``epochs=2``, ``base_width=8`` ...). ``pseudo_labels``: a
    :class:`~advcl_lite.pseudo_labels.PseudoLabels` or a path to one made for this preset's
    training set (AdvCL only); ``"auto"`` (default): AdvCL makes its own from a SimCLR run in
    ``labels_dir`` (default ``out_dir/pseudo-labels``, see :func:`auto_pseudo_labels`); ``False``:
    AdvCL without pseudo-labels (the ablation). ``resume``: continue from ``out_dir/last.pt`` when present (its
    configuration must match). ``recompute_anchors``: re-embed the clean views at every attack
    step as the original code (same result, slower). ``max_epochs`` stops after that many
    epochs in total (an interruption that :func:`pretrain` can resume).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the run is one DistributedDataParallel training: each rank takes
    its share of every global batch (``preset.batch_size``, which must divide by the number of processes;
    the learning rate stays that of the global batch), draws its own views and attack starts, and
    ``sync_bn`` (default, as the original's Apex SyncBN) normalises with the global batch's statistics, so
    a step computes what one process computes on the whole batch; ``sync_bn=False`` normalises each rank's
    share on its own. Only rank 0 writes checkpoints, the history and progress bars.
    """
    radius_arg = radius
    device = distributed.setup(resolve_device(device))   # under torchrun: join the process group first
    out_dir = check_writable(out_dir, "run folder")   # before any work, pseudo-labels included
    check_run_kind(out_dir, "pretrain")
    preset, ds, radius, pl, config = _resolve(method, preset, data, view, radius, pseudo_labels, overrides,
                                              labels_dir or out_dir / "pseudo-labels", device, progress)
    if max_epochs is not None and max_epochs < 0:
        raise ValueError(f"max_epochs must be >= 0, got {max_epochs}")
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    pseudo_ks = tuple(pl.ks) if pl is not None else ()
    name = run_name(method, view, pl is not None, radius_arg, preset.air)
    momentum_copy = method == "dynacl" and preset.dynacl_momentum > 0

    gen = seed_everything(preset.seed)      # the batches' order (the same on every rank) and, alone, the views
    net = build_net(method, preset.base_width, pseudo_ks, head_of(method, preset), momentum_copy).to(device)
    net = to_channels_last(net, preset.channels_last)
    if world > 1 and sync_bn:
        net = distributed.convert_sync_batchnorm(net)
    opt = make_optimizer(method, net, preset)
    bs = min(preset.batch_size, len(ds))
    part = distributed.shard(bs) if world > 1 else None
    view_gen = gen
    if world > 1:                            # each rank its own views and attack starts
        view_gen = torch.Generator().manual_seed(preset.seed + 1_000_003 * rank)
        torch.manual_seed(preset.seed + 1_000_003 * rank)
    steps_per_epoch = ds.num_batches(bs, drop_last=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(method, preset, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=(preset.amp == "fp16"))
    history: list[dict[str, Any]] = []
    start_epoch = 0

    with run_lock(out_dir) if main else contextlib.nullcontext():
        last = out_dir / "last.pt"
        if resume and last.exists():
            try:
                ck = load_checkpoint(last, kind="pretrain", map_location=device)
            except CheckpointError as e:
                raise CheckpointError(f"{e}. To start this run over instead of resuming it, pass resume=False "
                                      f"(CLI: --no-resume)") from None
            old = ck["meta"].get("config") or {}
            if old != config:
                diff = "; ".join(_config_diff(old, config)[:6])
                raise CheckpointError(f"{last} was written for a different configuration than this run ({diff}); "
                                      f"use another out_dir, or resume=False (CLI: --no-resume) to start over")
            load_weights(net, ck["state_dict"], str(last))
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if "scaler" in ck and scaler.is_enabled():
                scaler.load_state_dict(ck["scaler"])
            torch.set_rng_state(ck["rng_cpu"].cpu())
            gen.set_state(ck["rng_data"].cpu())
            if device.type == "cuda" and "rng_cuda" in ck:
                torch.cuda.set_rng_state(ck["rng_cuda"].cpu(), device)
            ranks = json.loads(ck.get("rng_ranks", "[]"))
            if world > 1 and len(ranks) == world:           # the same processes again: each its own streams
                torch.set_rng_state(torch.tensor(ranks[rank]["cpu"], dtype=torch.uint8))
                view_gen.set_state(torch.tensor(ranks[rank]["views"], dtype=torch.uint8))
            history = json.loads(ck["history"])
            start_epoch = int(ck["meta"]["epoch"])
        # a finished run of an earlier start keeps its final.pt until this run finishes and replaces it
        wrote_last = start_epoch > 0            # last.pt belongs to this run's lineage only once resumed or written

        model = distributed.wrap(net, device)
        step = make_step(method, model, preset, view, radius, pl is not None, recompute_anchors)
        meta_base = {"config": config, "method": method, "routes": list(net.routes), "eval_route": EVAL_ROUTE[method],
                     "head": net.head_type, "momentum_copy": momentum_copy,
                     "base_width": preset.base_width, "pseudo_ks": list(pseudo_ks), "seed": preset.seed,
                     "epochs": preset.epochs, "dataset": ds.id, "image_size": ds.image_size, "run_name": name,
                     "view": view if method == "advcl" else None, "radius": radius if method == "advcl" else None,
                     "preset_name": preset.name, "preset": preset.to_dict(), "recompute_anchors": bool(recompute_anchors),
                     "device": str(device), "torch": str(torch.__version__), "world_size": world,
                     "sync_bn": bool(sync_bn and world > 1)}

        def save(path: Path, epoch: int) -> None:
            if not _all_finite(net):            # the weights are the same on every rank: every rank stops
                raise NonFiniteLossError(
                    f"the weights of {name} became non-finite (NaN/inf) during epoch {epoch}; nothing was written, "
                    f"{_kept(last, wrote_last)}. Likely cause: {nonfinite_hint(method, preset)}.")
            ranks = distributed.all_gather_object({"cpu": torch.get_rng_state().tolist(),
                                                   "views": view_gen.get_state().tolist()}) if world > 1 else []
            if not main:
                return
            extra = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng_cpu": torch.get_rng_state(),
                     "rng_data": gen.get_state(), "history": json.dumps(history)}
            if scaler.is_enabled():
                extra["scaler"] = scaler.state_dict()
            if device.type == "cuda":
                extra["rng_cuda"] = torch.cuda.get_rng_state(device)
            if ranks:
                extra["rng_ranks"] = json.dumps(ranks)
            save_checkpoint(path, kind="pretrain", state_dict=unwrap(net).state_dict(),
                            meta={**meta_base, "epoch": epoch}, **extra)

        show = progress_enabled(progress) and main
        end_epoch = preset.epochs if max_epochs is None else min(preset.epochs, max_epochs)
        t_run = time.perf_counter()
        for epoch in range(start_epoch, end_epoch):
            model.train()
            step.set_epoch(epoch + 1, preset.epochs)
            t0, sums, seen, lr_used = time.perf_counter(), {}, 0, opt.param_groups[0]["lr"]
            bar = progress_bar(ds.batches(bs, shuffle=True, generator=gen, device=device, drop_last=True, part=part),
                               total=steps_per_epoch, desc=f"{name} epoch {epoch + 1}/{preset.epochs}", progress=show)
            for x, _, idx in bar:
                targets = pl.targets(idx, device) if pl is not None else None
                with autocast(device, preset.amp):
                    losses = step(x, view_gen, targets)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                    raise NonFiniteLossError(
                        f"non-finite loss ({parts}) in epoch {epoch + 1} of {name}; nothing was written, "
                        f"{_kept(last, wrote_last)}. Likely cause: {nonfinite_hint(method, preset)}.")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                lr_used = opt.param_groups[0]["lr"]
                sched.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(x)
                seen += len(x)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
            bar.close()
            secs = time.perf_counter() - t0
            means = distributed.all_reduce_mean({k: v / max(seen, 1) for k, v in sums.items()})   # over the ranks
            seen *= world
            rec = {"epoch": epoch + 1, **means, **step.epoch_record(), "lr": lr_used, "seconds": secs, "images_per_s": seen / max(secs, 1e-9)}
            history.append(rec)
            if show:
                print(f"[{name}] epoch {epoch + 1}/{preset.epochs} loss {rec['loss']:.4f} "
                      f"({rec['images_per_s']:.0f} img/s, {secs:.1f}s)", flush=True)
            if (epoch + 1) % preset.ckpt_every == 0 or epoch + 1 in (preset.epochs, end_epoch):
                save(last, epoch + 1)
                wrote_last = True
            if main:
                out_dir.mkdir(parents=True, exist_ok=True)
                write_json(out_dir / "history.json", history)
        done = len(history) >= preset.epochs
        if done:
            save(out_dir / "final.pt", preset.epochs)
        distributed.barrier()                 # the other ranks return once rank 0's files are there
        meta = {**meta_base, "epoch": len(history)}
        return PretrainResult(out_dir / ("final.pt" if done else "last.pt"), history, unwrap(net).eval(), meta,
                              seconds=time.perf_counter() - t_run)


def _stored_config(path: Path) -> dict | None:
    try:
        return load_checkpoint(path, kind="pretrain", map_location="cpu")["meta"].get("config")
    except CheckpointError:
        return None


def get_or_train(method: str, preset: str | Preset, work_dir: str | os.PathLike, *, data=None, view: str = "hfc",
                 radius: float | None = None, pseudo_labels="auto", device=None, progress: bool | None = None,
                 **overrides) -> PretrainResult:
    """The run ``work_dir/pretrain/<name>/``: loaded from ``final.pt`` if it was trained with this
    configuration (``cached=True``), otherwise trained - resuming ``last.pt`` when it matches,
    starting over when a stored run does not (that run is moved to ``<name>/superseded/<time>/``,
    never deleted; a corrupt ``final.pt`` is moved there too). ``<name>`` is :func:`run_name` (method, view,
    pseudo-labels, radius). AdvCL's default pseudo-labels come from ``work_dir``'s SimCLR run
    (:func:`auto_pseudo_labels`); ``pseudo_labels=False`` trains AdvCL without them."""
    device = distributed.setup(resolve_device(device))   # under torchrun: join the process group first
    p, ds, r, pl, config = _resolve(method, preset, data, view, radius, pseudo_labels, overrides, work_dir,
                                    device, progress)
    out = Path(work_dir) / "pretrain" / run_name(method, view, pl is not None, radius, p.air)
    final, last = out / "final.pt", out / "last.pt"
    # under torchrun rank 0 decides and moves files; every rank then trains (or loads) together
    if distributed.broadcast_object(final.exists() and _stored_config(final) == config):
        try:
            net, meta = load_pretrained(final, device)
            return PretrainResult(final, meta["history"], net, meta, cached=True)
        except CheckpointError:
            pass
    out.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()
    with run_lock(out) if main else contextlib.nullcontext():   # a live writer is refused before anything moves
        if main and final.exists():
            set_aside(out, (final, last, out / "history.json"))
        elif main and last.exists() and _stored_config(last) != config:
            set_aside(out, (last, out / "history.json"))
        distributed.barrier()
        return pretrain(method, p, out_dir=out, data=ds, view=view, radius=radius,
                        pseudo_labels=pl if pl is not None else False, device=device, progress=progress)
