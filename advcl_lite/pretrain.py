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
import dataclasses
import json
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
from .methods import VIEWS, make_step, method_class
from .models import ContrastiveNet, load_pretrained, to_channels_last
from .optim import lr_factor   # noqa: F401  (re-exported: the tests and notebooks read it here)
from .presets import Preset, as_preset
from .pseudo_labels import PseudoLabels, get_or_make_pseudo_labels
from .runtime import announce_eta, progress_bar, progress_enabled, resolve_device, seed_everything
from .training import EpochBatches, TrainState, augmentation_stream, run_epoch


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
    """Folder name of a run (:meth:`~advcl_lite.methods.Method.run_name`): ``simclr``, ``acl``, ``dynacl``,
    ``dynacl-air`` (AIR's terms), ``advcl`` (with pseudo-labels, the paper's method), ``advcl-nopl``,
    ``advcl-lfc``, ``advcl-none-nopl``, ``advcl-r4`` ..."""
    return method_class(method).run_name(view, pseudo, radius, air)


def uses_lars(method: str, preset: Preset) -> bool:
    """SimCLR, ACL and DynACL train with LARS as ACL's and DynACL's code do, unless ``acl_optimizer="sgd"``."""
    return method_class(method).uses_lars(preset)


def make_optimizer(method: str, net: nn.Module, preset: Preset) -> torch.optim.Optimizer:
    """The method's optimiser (:meth:`~advcl_lite.methods.Method.make_optimizer`)."""
    return method_class(method).make_optimizer(net, preset)


def head_of(method: str, preset: Preset) -> str:
    """The projection head a method trains with: AdvCL's, or (SimCLR, ACL, DynACL) ``preset.acl_head``."""
    return method_class(method).head(preset)


def _config(method: str, preset: Preset, view: str, radius: float, pseudo_meta: dict | None,
            ds: ImageDataset) -> dict[str, Any]:
    """What determines a run's weights (compared on resume and by get_or_train): the method's training
    settings (:meth:`~advcl_lite.methods.Method.training_config`), its view, pseudo-labels and data."""
    cls = method_class(method)
    cfg = {"method": method, "training": cls.training_config(preset, pseudo_meta is not None),
           "view": view if cls.takes_view else None, "radius": radius if cls.takes_view else None,
           "pseudo": pseudo_meta is not None, "pseudo_labels": pseudo_meta, "dataset": ds.id,
           "data_fingerprint": ds.fingerprint, "dataset_name": ds.name, "image_size": ds.image_size,
           "num_train": len(ds)}
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


def auto_pseudo_labels(preset: Preset, ds: ImageDataset, work_dir: str | os.PathLike, device=None,
                       progress: bool | None = None):
    """AdvCL's default pseudo-labels for ``ds``: k-means (K in ``preset.pseudo_ks``; K > N/2 dropped) on the
    features of the SimCLR run ``work_dir/pretrain/simclr`` at the same preset (trained if absent), cached in
    ``work_dir/pseudo_labels/simclr.pt``. The original clustered an ImageNet-pretrained model's features,
    which cannot be had offline; any other labels can be passed as ``pseudo_labels=``."""
    final = Path(work_dir) / "pretrain" / "simclr" / "final.pt"
    stored = _stored_config(final) if final.exists() else None
    want = plan_run("simclr", preset, ds, pseudo_labels=False).config()
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


@dataclass(frozen=True)
class RunSpec:
    """A pretraining run as planned, before anything trains: the method, its preset, the training images
    (:func:`pretrain_dataset`), AdvCL's view and radius, and its pseudo-labels. ``needs_labels``: AdvCL
    whose default labels are still to be made (:func:`ensure_pseudo_labels`). :meth:`config` is what
    determines the run's weights, :meth:`folder` where :func:`get_or_train` keeps it."""

    method: str
    preset: Preset
    data: ImageDataset
    view: str = "hfc"
    radius_arg: float | None = None
    labels: PseudoLabels | None = None
    needs_labels: bool = False

    @property
    def radius(self) -> float:
        """The HFC/LFC radius: the one asked for, else the preset's scaled to the image size (8 at 32x32)."""
        return float(self.radius_arg) if self.radius_arg is not None else scaled_radius(self.data.image_size,
                                                                                        self.preset.hfc_radius)

    @property
    def name(self) -> str:
        return run_name(self.method, self.view, self.labels is not None or self.needs_labels, self.radius_arg,
                        self.preset.air)

    def config(self) -> dict[str, Any]:
        if self.needs_labels:
            raise ValueError("this AdvCL run's pseudo-labels are not made yet: ensure_pseudo_labels(spec, work_dir)")
        return _config(self.method, self.preset, self.view, self.radius,
                       self.labels.describe() if self.labels is not None else None, self.data)

    def folder(self, work_dir: str | os.PathLike) -> Path:
        return Path(work_dir) / "pretrain" / self.name


def plan_run(method: str, preset: str | Preset = "smoke", data=None, view: str = "hfc", radius: float | None = None,
             pseudo_labels="auto", **overrides) -> RunSpec:
    """Check the arguments of a run and return its :class:`RunSpec`; nothing trains here.

    ``pseudo_labels``: ``"auto"``/``None`` (AdvCL: its own, made by :func:`ensure_pseudo_labels`; the other
    methods: none), ``False`` (none), or a :class:`~advcl_lite.pseudo_labels.PseudoLabels` / path (AdvCL only)."""
    method_class(method)
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
    p = as_preset(preset, overrides)
    if p.air and not method_class(method).takes_air:
        raise ValueError(f"air=true adds AIR's regularisers to acl or dynacl, not to {method}; drop --set air=true")
    ds = pretrain_dataset(p, data)
    if pseudo_labels is None or (isinstance(pseudo_labels, str) and pseudo_labels == "auto"):
        return RunSpec(method, p, ds, view, radius, needs_labels=method_class(method).takes_pseudo_labels)
    if pseudo_labels is False:
        return RunSpec(method, p, ds, view, radius)
    if not method_class(method).takes_pseudo_labels:
        raise ValueError("pseudo-labels are used by AdvCL only (method='advcl')")
    pl = pseudo_labels if isinstance(pseudo_labels, PseudoLabels) else PseudoLabels.load(pseudo_labels, dataset=ds)
    pl.check_dataset(ds)
    return RunSpec(method, p, ds, view, radius, labels=pl)


def ensure_pseudo_labels(spec: RunSpec, work_dir: str | os.PathLike | None, device=None,
                         progress: bool | None = None) -> RunSpec:
    """The step between planning and training: AdvCL's default pseudo-labels, made in ``work_dir`` by
    :func:`auto_pseudo_labels` (which trains or loads the SimCLR run they come from). A spec that needs no
    labels is returned as it is."""
    if not spec.needs_labels:
        return spec
    if work_dir is None:
        raise ValueError("AdvCL makes its pseudo-labels from a SimCLR run: give a folder for it "
                         "(labels_dir=...), a pseudo-label file (pseudo_labels=PATH), or "
                         "pseudo_labels=False for AdvCL without pseudo-labels")
    pl = auto_pseudo_labels(spec.preset, spec.data, work_dir, device=device, progress=progress)
    return dataclasses.replace(spec, labels=pl, needs_labels=False)


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


def pretrain(method: str | RunSpec, preset: str | Preset = "smoke", *, out_dir: str | os.PathLike, data=None,
             view: str = "hfc", radius: float | None = None, pseudo_labels="auto", resume: bool = True,
             device=None, progress: bool | None = None, recompute_anchors: bool = False,
             max_epochs: int | None = None, labels_dir: str | os.PathLike | None = None, sync_bn: bool = True,
             **overrides) -> PretrainResult:
    """Pretrain ``method`` ("simclr", "acl", "advcl", "dynacl") at ``preset`` into ``out_dir``: plan the run
    (:func:`plan_run`; ``method`` may be a :class:`RunSpec` already planned), make AdvCL's pseudo-labels
    (:func:`ensure_pseudo_labels`), train.

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
    if max_epochs is not None and max_epochs < 0:
        raise ValueError(f"max_epochs must be >= 0, got {max_epochs}")
    device = distributed.setup(resolve_device(device))   # under torchrun: join the process group first
    out_dir = check_writable(out_dir, "run folder")   # before any work, pseudo-labels included
    check_run_kind(out_dir, "pretrain")
    spec = method if isinstance(method, RunSpec) else plan_run(method, preset, data, view, radius, pseudo_labels,
                                                                 **overrides)
    spec = ensure_pseudo_labels(spec, labels_dir or out_dir / "pseudo-labels", device, progress)
    return _train(spec, out_dir, resume, device, progress, recompute_anchors, max_epochs, sync_bn)


def _train(spec: RunSpec, out_dir: Path, resume: bool, device, progress, recompute_anchors, max_epochs,
           sync_bn) -> PretrainResult:
    """The training loop of :func:`pretrain`: ``spec`` planned, its pseudo-labels made, ``out_dir`` checked."""
    method, preset, ds, pl, view, radius = spec.method, spec.preset, spec.data, spec.labels, spec.view, spec.radius
    config = spec.config()
    main = distributed.is_main()
    name = spec.name
    state, batches = _training_state(method, preset, ds, pl, device, sync_bn)

    with run_lock(out_dir) if main else contextlib.nullcontext():
        last = out_dir / "last.pt"
        if resume and last.exists():
            _resume(state, last, config)
        # a finished run of an earlier start keeps its final.pt until this run finishes and replaces it
        wrote_last = state.epoch > 0            # last.pt belongs to this run's lineage only once resumed or written
        model = distributed.wrap(state.net, device)
        step = make_step(method, model, preset, view, radius, pl is not None, recompute_anchors)
        meta_base = _run_meta(method, preset, config, state.net, ds, name, view, radius, recompute_anchors, device,
                              sync_bn)

        def nonfinite(losses, epoch):
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            return NonFiniteLossError(f"non-finite loss ({parts}) in epoch {epoch} of {name}; nothing was written, "
                                      f"{_kept(last, wrote_last)}. Likely cause: {nonfinite_hint(method, preset)}.")

        def save(path: Path, epoch: int) -> None:
            if not _all_finite(state.net):     # the weights are the same on every rank: every rank stops
                raise NonFiniteLossError(
                    f"the weights of {name} became non-finite (NaN/inf) during epoch {epoch}; nothing was written, "
                    f"{_kept(last, wrote_last)}. Likely cause: {nonfinite_hint(method, preset)}.")
            extra = state.state_dict()           # every rank: it gathers the ranks' random states
            if main:
                save_checkpoint(path, kind="pretrain", state_dict=state.net.state_dict(),
                                meta={**meta_base, "epoch": epoch}, **extra)

        show = progress_enabled(progress) and main
        end_epoch = preset.epochs if max_epochs is None else min(preset.epochs, max_epochs)
        t_run, first = time.perf_counter(), state.epoch + 1
        eta = lambda secs: announce_eta(f"{name}: {end_epoch - first + 1} epoch(s)", secs,    # noqa: E731
                                        batches.steps * (end_epoch - first + 1), show)
        for epoch in range(first, end_epoch + 1):
            model.train()
            step.set_epoch(epoch, preset.epochs)
            bar = progress_bar(batches(), total=batches.steps, desc=f"{name} epoch {epoch}/{preset.epochs}",
                               progress=show)
            r = run_epoch(state, lambda b: step(b[0], state.aug_gen, pl.targets(b[2], device) if pl is not None
                                                else None),
                          bar, amp=preset.amp, nonfinite=lambda losses: nonfinite(losses, epoch), per_step_schedule=True,
                          on_first_step=eta if epoch == first else None)
            state.history.append({"epoch": epoch, **r, **step.epoch_record()})
            if show:
                print(f"[{name}] epoch {epoch}/{preset.epochs} loss {r['loss']:.4f} "
                      f"({r['images_per_s']:.0f} img/s, {r['seconds']:.1f}s)", flush=True)
            if epoch % preset.ckpt_every == 0 or epoch in (preset.epochs, end_epoch):
                save(last, epoch)
                wrote_last = True
            if main:
                out_dir.mkdir(parents=True, exist_ok=True)
                write_json(out_dir / "history.json", state.history)
        done = state.epoch >= preset.epochs
        if done:
            save(out_dir / "final.pt", preset.epochs)
        distributed.barrier()                 # the other ranks return once rank 0's files are there
        return PretrainResult(out_dir / ("final.pt" if done else "last.pt"), state.history, state.net.eval(),
                              {**meta_base, "epoch": state.epoch}, seconds=time.perf_counter() - t_run)


def _training_state(method: str, preset: Preset, ds: ImageDataset, pl, device, sync_bn: bool):
    """A fresh run's :class:`~advcl_lite.training.TrainState` (network, optimiser, per-step schedule, scaler,
    random streams) and its batches."""
    gen = seed_everything(preset.seed)      # the batches' order (the same on every rank) and, alone, the views
    cls = method_class(method)
    net = cls.build(preset, tuple(pl.ks) if pl is not None else ()).to(device)
    net = to_channels_last(net, preset.channels_last)
    world = distributed.world_size()
    if world > 1 and sync_bn:
        net = distributed.convert_sync_batchnorm(net)
        if getattr(net, "key", None) is not None:   # the conversion's new BN parameters take gradients: the copy
            net.key.requires_grad_(False)             # takes none (DDP would wait for them at the second step)
    opt = cls.make_optimizer(net, preset)
    bs = min(preset.batch_size, len(ds))
    aug = augmentation_stream(preset.seed, gen)    # under torchrun: each rank its own views and attack starts
    batches = EpochBatches(ds, bs, gen, device, distributed.shard(bs) if world > 1 else None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cls.lr_lambda(preset, batches.steps))
    scaler = torch.amp.GradScaler(device.type, enabled=(preset.amp == "fp16"))
    return TrainState(net, opt, sched, scaler, gen, aug, device), batches


def _resume(state: TrainState, last: Path, config: dict) -> None:
    """Put ``state`` where ``last`` stopped, after checking it was written for this configuration."""
    try:
        ck = load_checkpoint(last, kind="pretrain", map_location=state.device)
    except CheckpointError as e:
        raise CheckpointError(f"{e}. To start this run over instead of resuming it, pass resume=False "
                              f"(CLI: --no-resume)") from None
    old = ck["meta"].get("config") or {}
    if old != config:
        diff = "; ".join(_config_diff(old, config)[:6])
        raise CheckpointError(f"{last} was written for a different configuration than this run ({diff}); "
                              f"use another out_dir, or resume=False (CLI: --no-resume) to start over")
    load_weights(state.net, ck["state_dict"], str(last))
    state.load_state_dict(ck)


def _run_meta(method, preset, config, net, ds, name, view, radius, recompute_anchors, device, sync_bn) -> dict:
    """What a pretraining checkpoint records about its run (beside ``config``, what determines the weights)."""
    world = distributed.world_size()
    return {"config": config, "method": method, "routes": list(net.routes), "eval_route": method_class(method).eval_route,
            "head": net.head_type, "momentum_copy": getattr(net, "key", None) is not None,
            "base_width": preset.base_width, "pseudo_ks": list(net.pseudo_ks), "seed": preset.seed,
            "epochs": preset.epochs, "dataset": ds.id, "image_size": ds.image_size, "run_name": name,
            "view": view if method_class(method).takes_view else None,
            "radius": radius if method_class(method).takes_view else None,
            "preset_name": preset.name, "preset": preset.to_dict(), "recompute_anchors": bool(recompute_anchors),
            "device": str(device), "torch": str(torch.__version__), "world_size": world,
            "sync_bn": bool(sync_bn and world > 1)}


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
    spec = plan_run(method, preset, data, view, radius, pseudo_labels, **overrides)
    spec = ensure_pseudo_labels(spec, work_dir, device, progress)
    config, out = spec.config(), spec.folder(work_dir)
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
        return pretrain(spec, out_dir=out, device=device, progress=progress)
