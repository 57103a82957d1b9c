"""Finetuning a pretrained encoder: SLF, ALF and AFF on one loop (the paper's section 5 and the original ``finetuning_advCL_SLF.py``).

A pretrained encoder becomes a classifier ``Classifier(encoder, num_classes)``
(encoder + linear head on [0, 1] images). Three schemes decide what is trained:

* ``"slf"`` - standard linear finetuning: only the linear head, on clean crop+flip
  images, cross-entropy. The encoder is frozen **and stays in eval mode**, so its
  BatchNorm running statistics never change (a frozen encoder in train mode would
  silently re-estimate them).
* ``"alf"`` - adversarial linear finetuning: the same frozen encoder; the head is
  trained on PGD examples of the *whole* classifier (Madry adversarial training,
  ``ft_pgd_steps`` steps, eps/alpha from the preset, random start, eval mode).
* ``"aff"`` - adversarial full finetuning: the whole network with TRADES,
  ``loss = CE(f(x), y) + beta * KL(p(x) || p(x_adv))``, ``beta = trades_beta``,
  x_adv from :class:`~advcl_lite.attacks.TradesPGD` (``ft_pgd_steps`` steps).

Optimisation: SGD, momentum ``preset.momentum`` (0.9), weight decay 2e-4,
lr ``ft_lr`` and batch ``ft_batch_size`` for SLF/ALF, ``aff_lr`` and
``aff_batch_size`` for AFF; ``ft_epochs`` epochs with the lr divided by 10 at 60 %
and 80 % of them (the original's epochs 15 and 20 of 25). Augmentation: crop+flip.

**Model selection.** The original picks its best epoch on the *test* set. Here
``val_fraction`` of the (``ft_subset``) training images is held out, stratified by
class (:func:`finetune_splits`); the head never trains on it, and the test split
is never read. After every epoch the model is scored on that validation split,
and the epoch with the best score is kept:

* SLF: clean validation accuracy;
* ALF and AFF: validation robust accuracy under PGD (``ft_pgd_steps`` steps,
  the finetuning attack), ties broken by clean accuracy, then by the earlier epoch.

**Encoders.** :func:`finetune` takes a pretraining checkpoint path (the encoder is
exported with the checkpoint's ``eval_route``: ``pgd`` for ACL/AdvCL, ``normal`` for
SimCLR), a :class:`~advcl_lite.models.ContrastiveNet` (route ``pgd`` when it has
one), a :class:`~advcl_lite.models.ResNet18`, or any ``nn.Module`` feature
extractor with a ``feature_dim`` attribute that maps [0, 1] images to
``(N, feature_dim)`` features (your own encoder). The encoder is copied: the
object you pass is never modified.

**Transfer.** The finetuning data may differ from the pretraining data (CIFAR-10
-> CIFAR-100, -> STL-10 resized to 32, any ImageFolder). An encoder pretrained on
32x32 images needs 32x32 inputs: a size mismatch is a
:class:`~advcl_lite.data.DataError` that says to pass ``image_size``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .attacks import PGD, TradesPGD
from .checkpoint import (CheckpointError, check_run_kind, load_checkpoint, load_weights, run_lock, save_checkpoint, set_aside,
                         sha256_file, state_dict_sha256, write_json)
from .data import BUILTIN_DATASETS, DataError, ImageDataset, class_balanced_subset, load_dataset, resize_images, train_val_split
from .evaluate import evaluate
from .clustering import extract_features
from .losses import NonFiniteLossError, trades_kl
from .models import (Classifier, ContrastiveNet, ResNet18, export_encoder, is_channels_last, load_pretrained,
                     to_channels_last)
from .presets import NOTEBOOK_FIELDS, Preset, as_preset
from .pretrained import KIND as ENCODER_KIND, load_encoder_file
from .runtime import announce_eta, progress_bar, progress_enabled, resolve_device, seed_everything, unwrap
from .training import EpochBatches, TrainState, augmentation_stream, run_epoch
from .views import crop_flip

SCHEMES = ("slf", "alf", "aff")     # the classes are below (SCHEME_CLASSES)
FT_WEIGHT_DECAY = 2e-4
CHECKPOINT_NAME = "model.pt"
SELECTION_RULE = ("best epoch on a validation split held out from the finetuning training images "
                  "(never the test set): clean accuracy for SLF; PGD robust accuracy (the finetuning "
                  "attack) for ALF/AFF, ties broken by clean accuracy, then the earlier epoch")


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns. ``model`` is the best-epoch classifier in eval mode."""

    model: Classifier
    checkpoint: Path | None
    history: list[dict[str, Any]]
    best_epoch: int
    val: dict[str, Any]
    seconds: float
    meta: dict[str, Any]
    cached: bool = field(default=False)


class FeatureExtractor(nn.Module):
    """Adapter: any module mapping [0, 1] images to ``(N, feature_dim)`` features, usable by ``Classifier``."""

    routes = None

    def __init__(self, net: nn.Module, feature_dim: int | None = None):
        super().__init__()
        dim = feature_dim if feature_dim is not None else getattr(net, "feature_dim", None)
        if dim is None:
            raise ValueError(f"{type(net).__name__} has no `feature_dim` attribute; set net.feature_dim = <size of "
                             f"its output features> (what a linear head on top of it takes)")
        self.net = net
        self.feature_dim = int(dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net(x)
        if not isinstance(f, torch.Tensor):
            raise ValueError(f"{type(self.net).__name__} returned {type(f).__name__}; a feature extractor must "
                             f"return one tensor (N, feature_dim)")
        f = f.flatten(1)
        if f.shape[1] != self.feature_dim:
            raise ValueError(f"{type(self.net).__name__} returned {f.shape[1]} features per image, but its "
                             f"feature_dim says {self.feature_dim}")
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# --------------------------------------------------------------------------- inputs

def resolve_encoder(encoder, route: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh, plain (single-BN) copy of ``encoder`` for finetuning, and a JSON-able description of it.

    ``encoder``: a pretraining checkpoint path, a ContrastiveNet, a ResNet18, or any module with
    ``feature_dim``. ``route`` overrides the BN route (default: the checkpoint's ``eval_route``;
    ``pgd`` for a network that has it, else its first route).
    """
    if isinstance(encoder, (str, os.PathLike)) and load_checkpoint(encoder).get("kind") == ENCODER_KIND:
        path = Path(encoder)                # a shipped (or re-made) encoder file with its manifest beside it
        enc = load_encoder_file(path, "cpu")
        m = enc.manifest
        info = {"source": "encoder file", "class": "ResNet18", "path": str(path.resolve()), "sha256": m.get("sha256"),
                "route": m.get("route"), "method": m.get("method"), "run_name": m.get("name"),
                "image_size": m.get("image_size", 32), "base_width": enc.base_width, "pretrain_meta": {},
                "input_normalize": m["architecture"].get("input_normalize")}
        return enc, info
    if isinstance(encoder, (str, os.PathLike)):
        path = Path(encoder)
        net, meta = load_pretrained(path, "cpu")
        r = route or meta.get("eval_route") or ("pgd" if "pgd" in net.routes else net.routes[0])
        enc = export_encoder(net, r)
        keep = ("method", "run_name", "routes", "base_width", "pseudo_ks", "seed", "epochs", "epoch",
                "dataset", "image_size", "config")
        info = {"source": "checkpoint", "class": "ResNet18", "path": str(path), "sha256": sha256_file(path),
                "route": r, "method": meta.get("method"), "run_name": meta.get("run_name"),
                "image_size": meta.get("image_size"), "base_width": enc.base_width,
                "pretrain_meta": {k: meta[k] for k in keep if k in meta}}
        return enc, info
    module = unwrap(encoder)
    if not isinstance(module, nn.Module):
        raise TypeError(f"encoder must be a pretraining checkpoint path or an nn.Module, got {type(encoder).__name__}")
    sha = state_dict_sha256(module)
    if isinstance(module, (ContrastiveNet, ResNet18)):
        routes = module.routes
        r = None
        if routes is not None:
            r = route or ("pgd" if "pgd" in routes else routes[0])
        enc = export_encoder(module, r or "pgd")
        norm = enc.input_norm
        return enc, {"source": type(module).__name__, "class": "ResNet18", "path": None, "sha256": sha, "route": r,
                     "method": None, "run_name": None, "image_size": getattr(module, "image_size", None),
                     "base_width": enc.base_width, "pretrain_meta": {},
                     "input_normalize": None if norm is None else {"mean": norm[0], "std": norm[1]}}
    if route is not None:
        raise ValueError(f"route={route!r} applies to advcl_lite encoders only, not to {type(module).__name__}")
    enc = FeatureExtractor(copy.deepcopy(module))
    return enc, {"source": "user", "class": type(module).__name__, "path": None, "sha256": sha, "route": None,
                 "method": None, "run_name": None, "image_size": getattr(module, "image_size", None),
                 "base_width": None, "feature_dim": enc.feature_dim, "pretrain_meta": {}}


def _resize(ds: ImageDataset, size: int) -> ImageDataset:
    if ds.image_size == size:
        return ds
    return ImageDataset(resize_images(ds.images, size), ds.labels, ds.classes, ds.name, ds.split)


def load_split(data, split: str = "train", image_size: int | None = None) -> ImageDataset:
    """``data`` (a dataset name/path or an ImageDataset) as an ImageDataset, resized to ``image_size`` if given."""
    if isinstance(data, ImageDataset):
        return _resize(data, image_size) if image_size else data
    return load_dataset(str(data), split, image_size=image_size)


def data_source(data) -> str | None:
    """How a model records the data it was finetuned on: a built-in set by its name, a folder or zip by its
    absolute path (so ``evaluate`` finds it from any working directory), an in-memory dataset as None."""
    if isinstance(data, ImageDataset):
        return None
    src = str(data)
    return src if src in BUILTIN_DATASETS or not Path(src).expanduser().exists() else str(Path(src).expanduser().resolve())


def check_classes(ds: ImageDataset, meta: dict[str, Any], what: str) -> None:
    """Refuse to score ``what`` (a finetuned model, its ``meta``) on data whose classes differ from those it was
    trained on, in name or order: its outputs would be compared with the wrong labels."""
    want = meta.get("classes")
    if want is not None and list(ds.classes) != list(want):
        raise DataError(f"{ds.name} has the classes {list(ds.classes)}, but {what} was finetuned on {list(want)} "
                        f"(in that order): its outputs would be scored against the wrong labels; pass the data it "
                        f"was finetuned on (--data), or finetune on this data")
    if ds.num_classes != int(meta.get("num_classes", ds.num_classes)):
        raise DataError(f"{ds.name} has {ds.num_classes} classes but {what} was finetuned for "
                        f"{meta['num_classes']} ({meta.get('dataset_name')}); pass the matching --data")


def check_image_size(ds: ImageDataset, expected: int | None, what: str = "the encoder") -> None:
    """Raise a DataError unless ``ds`` has the image size ``expected`` (None: anything goes)."""
    if expected is not None and ds.image_size != int(expected):
        raise DataError(f"{what} was pretrained on {expected}x{expected} images, but {ds.name} images are "
                        f"{ds.image_size}x{ds.image_size}; pass image_size={expected} "
                        f"(CLI: --image-size {expected}) to resize them")


def finetune_splits(ds: ImageDataset, preset: Preset) -> tuple[ImageDataset, ImageDataset]:
    """The training and validation parts of ``ds`` used for finetuning.

    ``ft_subset`` class-balanced images (seeded), of which ``val_fraction`` per class is held
    out for model selection. The two parts are disjoint; the test split is never touched.
    """
    sub = class_balanced_subset(ds, preset.ft_subset, seed=preset.seed)
    return train_val_split(sub, preset.val_fraction, seed=preset.seed)


def lr_milestones(epochs: int) -> list[int]:
    """Epochs after which the lr is divided by 10: 60 % and 80 % of ``epochs`` (15 and 20 of 25)."""
    return sorted({max(1, int(round(0.6 * epochs))), max(1, int(round(0.8 * epochs)))})


# --------------------------------------------------------------------------- the loop

def _val_metrics(model: nn.Module, val: ImageDataset, scheme: str, p: Preset, device, epoch: int) -> dict[str, Any]:
    attack = None
    if scheme != "slf":
        attack = PGD(model, p.eps, p.alpha, p.ft_pgd_steps, random_start=True, mode="eval")
    r = evaluate(model, val, attack=attack, batch_size=max(p.ft_batch_size, 256), device=device,
                 seed=p.seed + 1000 + epoch, progress=False)
    out = {"val_sa": r["sa"], "val_n": r["n"]}
    if attack is not None:
        out["val_ra"] = r["ra"]
        out["val_attack"] = r["attack"]
    return out


def _score(scheme: str, m: dict[str, Any]) -> tuple:
    return (m["val_sa"],) if scheme == "slf" else (m["val_ra"], m["val_sa"])


def _config(scheme: str, p: Preset, info: dict[str, Any], ds: ImageDataset, image_size) -> dict[str, Any]:
    # the preset as it was before these fields existed, so that models finetuned then are still found: the
    # notebooks' budgets and the later pretraining-only fields are left out, the SLF switch only when on
    skip = NOTEBOOK_FIELDS + _PRETRAINING_ONLY + (() if p.slf_cached_features else ("slf_cached_features",))
    preset = {k: v for k, v in p.to_dict().items() if k not in skip}
    return json.loads(json.dumps({"scheme": scheme, "preset": preset, "encoder_sha256": info["sha256"],
                                  "route": info["route"], "dataset": ds.id, "data_fingerprint": ds.fingerprint,
                                  "image_size": ds.image_size, "resize": image_size}))


def finetune(encoder, scheme: str, preset: str | Preset = "quick", *, data=None, out_dir=None, device=None,
             progress: bool | None = None, image_size: int | None = None, route: str | None = None,
             resume: bool = True, **overrides) -> FinetuneResult:
    """Finetune ``encoder`` with ``scheme`` ("slf", "alf", "aff") on the training split of ``data``.

    ``data``: a dataset name or path (its ``train`` split is used) or an ImageDataset (used as the
    training set); default ``preset.data``. ``image_size`` resizes the images (e.g. 32 for STL-10
    on a CIFAR encoder). ``out_dir``: where ``model.pt`` (kind ``finetune``) and ``history.json``
    are written (nothing is written when None). Returns the best-epoch model (see the module
    docstring for the selection rule) in eval mode. ``history`` has one record per epoch: mean
    ``loss`` (AFF also ``loss_ce``, ``loss_kl``), ``train_acc`` on the inputs trained on (adversarial
    for ALF, clean for SLF and AFF), ``lr``, ``val_sa`` / ``val_ra`` / ``val_n``, ``seconds``.
    """
    scheme = str(scheme).lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unknown finetuning scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    p = as_preset(preset, overrides)
    dev = distributed.setup(resolve_device(device))
    enc, info = resolve_encoder(encoder, route)
    bad = [k for k, v in enc.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"the encoder {info.get('path') or info.get('class')} has non-finite weights (NaN/inf) "
                              f"in {bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}: its pretraining "
                              f"diverged; finetune an earlier checkpoint, or pretrain again with a lower lr")
    ds = load_split(data if data is not None else p.data, "train", image_size)
    check_image_size(ds, info.get("image_size"))
    if ds.num_classes < 2:
        raise DataError(f"{ds.name} has {ds.num_classes} class; finetuning a classifier needs at least 2")
    train, val = finetune_splits(ds, p)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{ds.name}: {len(train)} training / {len(val)} validation images after the split; "
                        f"use more images (ft_subset) or another val_fraction")
    if out_dir is None:
        return _finetune(enc, info, scheme, p, ds, train, val, data, None, dev, progress, image_size)
    check_run_kind(out_dir, "finetune")
    with run_lock(out_dir) if distributed.is_main() else contextlib.nullcontext():   # one writer, before the work
        return _finetune(enc, info, scheme, p, ds, train, val, data, out_dir, dev, progress, image_size, resume)


class Scheme:
    """One finetuning scheme's step, ``scheme(batch) -> losses`` (``"loss"`` minimised, ``"train_acc"`` on the
    inputs trained on), on crop+flip views of the batch drawn from ``aug_gen``. ``linear``: only the head trains
    and the classifier stays in eval mode (frozen BN statistics); otherwise everything trains. ``model`` is the
    module the attacks run on, ``net`` what the update runs through (a DDP wrapper under torchrun)."""

    name, linear, lr_key, batch_key = "", True, "ft_lr", "ft_batch_size"

    def __init__(self, model: nn.Module, net: nn.Module, p: Preset, aug_gen: torch.Generator):
        self.model, self.net, self.p, self.aug_gen = model, net, p, aug_gen
        self.nhwc = is_channels_last(model)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = crop_flip(x, self.aug_gen)
        return x.contiguous(memory_format=torch.channels_last) if self.nhwc else x

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (logits.detach().argmax(1) == y).float().mean()


class SLF(Scheme):
    """Standard linear finetuning: the head on clean images, cross-entropy."""

    name = "slf"

    def __call__(self, batch):
        x, y = self.inputs(batch[0]), batch[1]
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits.float(), y), "train_acc": self._accuracy(logits, y)}


class ALF(Scheme):
    """Adversarial linear finetuning: the head on PGD examples of the whole classifier (eval mode)."""

    name = "alf"

    def __init__(self, model, net, p, aug_gen):
        super().__init__(model, net, p, aug_gen)
        self.attack = PGD(model, p.eps, p.alpha, p.ft_pgd_steps, random_start=True, mode="eval")

    def __call__(self, batch):
        x, y = self.inputs(batch[0]), batch[1]
        logits = self.net(self.attack(x, y))
        return {"loss": F.cross_entropy(logits.float(), y), "train_acc": self._accuracy(logits, y)}


class AFF(Scheme):
    """Adversarial full finetuning with TRADES: ``CE(f(x), y) + beta * KL(p(x) || p(x_adv))``, everything trains."""

    name, linear, lr_key, batch_key = "aff", False, "aff_lr", "aff_batch_size"

    def __init__(self, model, net, p, aug_gen):
        super().__init__(model, net, p, aug_gen)
        self.attack = TradesPGD(model, p.eps, p.alpha, p.ft_pgd_steps, mode="eval")

    def __call__(self, batch):
        x, y = self.inputs(batch[0]), batch[1]
        x_adv = self.attack(x, y)
        self.net.train()
        logits = self.net(x)
        ce = F.cross_entropy(logits.float(), y)
        kl = trades_kl(self.net(x_adv), logits)
        return {"loss": ce + self.p.trades_beta * kl, "loss_ce": ce, "loss_kl": kl,
                "train_acc": self._accuracy(logits, y)}


class SLFCached(SLF):
    """SLF on features computed once (``preset.slf_cached_features``): the head trains on the frozen encoder's
    features of the un-augmented training images, looked up by the batch's indices, instead of on crop+flip views
    (the original's SLF augments; a named deviation for speed). The encoder is frozen and in eval mode under SLF,
    so each image's features are the same at every epoch."""

    def __init__(self, model, net, p, aug_gen, features: torch.Tensor):
        super().__init__(model, net, p, aug_gen)
        self.features = features

    def __call__(self, batch):
        y, idx = batch[1], batch[2]
        logits = self.model.fc(self.features[idx.to(self.features.device)])
        return {"loss": F.cross_entropy(logits.float(), y), "train_acc": self._accuracy(logits, y)}


FEATURES_NAME = "features.pt"       # SLF's cached features (slf_cached_features), keyed by encoder and data


def cached_features(encoder: nn.Module, train: ImageDataset, info: dict, out_dir, device,
                    progress: bool | None = None) -> torch.Tensor:
    """The encoder's features of ``train`` (un-augmented, eval mode), from ``out_dir/features.pt`` when it holds
    them for this encoder (weights hash) and these images (fingerprint), else computed and stored there."""
    key = {"encoder_sha256": info["sha256"], "data": train.id, "data_fingerprint": train.fingerprint}
    path = Path(out_dir) / FEATURES_NAME if out_dir is not None else None
    if path is not None and path.exists():
        try:
            ck = load_checkpoint(path, kind="features", map_location="cpu")
            if ck["meta"].get("key") == key:
                return ck["state_dict"]["features"].to(device)
        except CheckpointError:
            pass
    feats = extract_features(encoder, train, device=device, progress=progress).to(device)
    if path is not None and distributed.is_main():
        save_checkpoint(path, kind="features", state_dict={"features": feats.cpu()}, meta={"key": key})
    return feats


SCHEME_CLASSES = {c.name: c for c in (SLF, ALF, AFF)}
# preset fields added after finetuned models were first cached that only pretraining reads
_PRETRAINING_ONLY = ("dynacl_stages", "dynacl_swap", "dynacl_momentum", "air", "air_lambda1", "air_lambda2")
RESUME_NAME = "resume.pt"      # an interrupted finetuning run's state, removed once model.pt is written


def _finetune(enc, info, scheme, p, ds, train, val, data, out_dir, dev, progress, image_size, resume=True):
    """The training loop of :func:`finetune`, its arguments already checked."""
    state, step, batches = _finetune_state(enc, scheme, p, ds, train, dev)
    if scheme == "slf" and p.slf_cached_features:
        if distributed.world_size() > 1:
            raise ValueError("slf_cached_features is a single-process speed switch; under torchrun run SLF as "
                             "the original does (slf_cached_features=false)")
        step = SLFCached(step.model, step.net, p, step.aug_gen, cached_features(state.net.encoder, train, info,
                                                                                   out_dir, dev, progress))
    config = _config(scheme, p, info, ds, image_size)
    best = {"key": None, "epoch": 0, "val": None, "state": None}
    resume_path = Path(out_dir) / RESUME_NAME if out_dir is not None else None
    if resume and resume_path is not None and resume_path.exists():
        best = _resume_finetune(state, best, resume_path, config)
    show = progress_enabled(progress) and distributed.is_main()
    t_run = time.perf_counter()
    if p.ft_epochs == 0:
        best["val"] = _val_metrics(state.net, val, scheme, p, dev, 0)
    first = state.epoch + 1
    for epoch in range(first, p.ft_epochs + 1):
        step.net.train(not step.linear)     # SLF/ALF: the whole classifier stays in eval mode
        bar = progress_bar(batches(), total=batches.steps, desc=f"{scheme.upper()} epoch {epoch}/{p.ft_epochs}",
                           progress=show)
        r = run_epoch(state, step, bar, amp=p.amp, per_step_schedule=False,
                      nonfinite=lambda losses: _nonfinite(scheme, p, losses["loss"], epoch),
                      on_first_step=(lambda s: announce_eta(f"{scheme.upper()}: {p.ft_epochs - first + 1} epoch(s)", s,
                                                            batches.steps * (p.ft_epochs - first + 1), show))
                      if epoch == first else None)
        state.sched.step()
        metrics = _val_metrics(state.net, val, scheme, p, dev, epoch)
        state.history.append({"epoch": epoch, **r, **metrics})
        key = _score(scheme, metrics)
        if best["key"] is None or key > best["key"]:
            best = {"key": key, "epoch": epoch, "val": metrics,
                    "state": {k: v.detach().clone() for k, v in state.net.state_dict().items()}}
        if show:
            ra = f", val RA {metrics['val_ra']:.1%}" if "val_ra" in metrics else ""
            print(f"[{scheme.upper()}] epoch {epoch}/{p.ft_epochs} loss {r['loss']:.4f}, val SA "
                  f"{metrics['val_sa']:.1%}{ra} (n={metrics['val_n']}, {r['seconds']:.1f}s)", flush=True)
        if resume_path is not None and epoch < p.ft_epochs:
            _save_progress(state, best, resume_path, config)
    model = state.net
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    meta = _finetune_meta(scheme, p, info, ds, train, val, data, image_size, enc, best, time.perf_counter() - t_run)
    ckpt = None
    if out_dir is not None and distributed.is_main():
        out = Path(out_dir)
        ckpt = save_checkpoint(out / CHECKPOINT_NAME, kind="finetune", state_dict=unwrap(model).state_dict(),
                               meta=meta, history=json.dumps(state.history))
        write_json(out / "history.json", state.history)
        resume_path.unlink(missing_ok=True)      # this run's own intermediate state: model.pt now holds the result
    if out_dir is not None:
        ckpt = Path(out_dir) / CHECKPOINT_NAME
    distributed.barrier()                 # the other ranks return once rank 0's files are there
    return FinetuneResult(model, ckpt, state.history, best["epoch"], best["val"], meta["seconds"], meta)


def _finetune_state(enc, scheme: str, p: Preset, ds: ImageDataset, train: ImageDataset, dev):
    """The classifier, optimiser (SGD), lr milestones and random streams of a fresh finetuning run, its
    scheme's step and its batches."""
    gen = seed_everything(p.seed)       # the batches' order (the same on every rank) and, alone, the crops
    aug_gen = augmentation_stream(p.seed, gen)    # under torchrun each rank its own crops and attack starts
    world = distributed.world_size()
    model = Classifier(enc, ds.num_classes).to(dev)
    model = to_channels_last(model, p.channels_last)
    if world > 1:
        model = distributed.convert_sync_batchnorm(model)   # AFF trains BN: the global batch's statistics
    cls = SCHEME_CLASSES[scheme]
    if cls.linear:
        for q in model.encoder.parameters():
            q.requires_grad_(False)
    params = [q for q in model.parameters() if q.requires_grad]
    bs = min(getattr(p, cls.batch_key), len(train))
    opt = torch.optim.SGD(params, lr=getattr(p, cls.lr_key), momentum=p.momentum, weight_decay=FT_WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, lr_milestones(p.ft_epochs), gamma=0.1)
    scaler = torch.amp.GradScaler(dev.type, enabled=(p.amp == "fp16"))
    state = TrainState(model, opt, sched, scaler, gen, aug_gen, dev)
    step = cls(model, distributed.wrap(model, dev), p, aug_gen)   # attacks run on the module, never through DDP
    return state, step, EpochBatches(train, bs, gen, dev, distributed.shard(bs) if world > 1 else None)


def _nonfinite(scheme: str, p: Preset, loss: torch.Tensor, epoch: int) -> NonFiniteLossError:
    key = "aff_lr" if scheme == "aff" else "ft_lr"
    cause = (f"amp={p.amp!r} has too little range here; use amp='none'" if p.amp != "none" else
             f"the learning rate {key}={getattr(p, key):g} is too large for this run; lower it")
    return NonFiniteLossError(f"non-finite {scheme.upper()} loss ({loss.item()}) at epoch {epoch}; likely cause: {cause}")


def _save_progress(state: TrainState, best: dict, path: Path, config: dict) -> None:
    """After an epoch: what a resumed run needs (weights, optimiser, random streams, the best epoch so far)."""
    extra = state.state_dict()
    if distributed.is_main():
        save_checkpoint(path, kind="finetune-progress", state_dict=unwrap(state.net).state_dict(),
                        meta={"config": config, "epoch": state.epoch, "best_key": list(best["key"]),
                              "best_epoch": best["epoch"], "best_val": best["val"]},
                        best_state=best["state"], **extra)


def _resume_finetune(state: TrainState, best: dict, path: Path, config: dict) -> dict:
    """Put ``state`` where an interrupted run stopped (``path``, written for this configuration)."""
    try:
        ck = load_checkpoint(path, kind="finetune-progress", map_location=state.device)
    except CheckpointError as e:
        raise CheckpointError(f"{e}. To start this run over instead of resuming it, pass resume=False "
                              f"(CLI: --no-resume)") from None
    if ck["meta"].get("config") != config:
        raise CheckpointError(f"{path} holds an interrupted finetuning run of another configuration (scheme, preset, "
                              f"encoder or data); use another out_dir, or resume=False (CLI: --no-resume) to start over")
    load_weights(state.net, ck["state_dict"], str(path))
    state.load_state_dict(ck)
    m = ck["meta"]
    return {"key": tuple(m["best_key"]), "epoch": int(m["best_epoch"]), "val": m["best_val"], "state": ck["best_state"]}


def _finetune_meta(scheme, p, info, ds, train, val, data, image_size, enc, best, seconds) -> dict[str, Any]:
    return {"scheme": scheme, "preset": p.to_dict(), "preset_name": p.name, "encoder": info,
            "config": _config(scheme, p, info, ds, image_size),
            "data_source": data_source(data if data is not None else p.data),
            "dataset": ds.id, "dataset_name": ds.name, "train": train.id, "val": val.id,
            "num_train": len(train), "num_val": len(val), "classes": list(ds.classes),
            "num_classes": ds.num_classes, "image_size": ds.image_size, "resize": image_size,
            "base_width": info.get("base_width"), "feature_dim": int(enc.feature_dim),
            "best_epoch": best["epoch"], "epochs": p.ft_epochs, "val_metrics": best["val"],
            "selection": SELECTION_RULE, "seconds": seconds, "seed": p.seed}


def load_finetuned(path: str | os.PathLike, device=None, encoder: nn.Module | None = None) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the classifier stored in a ``finetune`` checkpoint (strict keys), in eval mode.

    A checkpoint of a user-brought encoder needs ``encoder=`` (an instance of the same class,
    any weights) to rebuild the architecture. Returns ``(model, meta)``; ``meta["history"]``
    is the per-epoch finetuning history.
    """
    ck = load_checkpoint(path, kind="finetune", map_location="cpu")
    meta = dict(ck["meta"])
    try:
        info = meta["encoder"]
        num_classes = int(meta["num_classes"])
        if info.get("class") == "ResNet18" and encoder is None:
            norm = info.get("input_normalize")
            enc: nn.Module = ResNet18(int(meta["base_width"]), input_norm=(norm["mean"], norm["std"]) if norm else None)
        else:
            if encoder is None:
                raise CheckpointError(f"{str(path)!r} holds a finetuned {info.get('class')} (an encoder of your own); "
                                      f"pass encoder=<a {info.get('class')} instance> to load_finetuned to rebuild it")
            enc, _ = resolve_encoder(encoder)
        if int(enc.feature_dim) != int(meta["feature_dim"]):
            raise CheckpointError(f"{str(path)!r} was finetuned with {meta['feature_dim']}-d features, but the "
                                  f"encoder given gives {enc.feature_dim}")
    except KeyError as e:
        raise CheckpointError(f"{str(path)!r}: finetune checkpoint metadata lacks {e}; re-create it") from None
    model = Classifier(enc, num_classes)
    load_weights(model, ck["state_dict"], repr(str(path)))
    meta["history"] = json.loads(ck.get("history", "[]"))
    meta["path"] = str(path)
    return model.to(resolve_device(device)).eval(), meta


def get_or_finetune(encoder, scheme: str, preset: str | Preset, out_dir, *, data=None, device=None,
                    progress: bool | None = None, image_size: int | None = None, route: str | None = None,
                    **overrides) -> FinetuneResult:
    """``out_dir/model.pt`` if it was finetuned with this configuration (scheme, preset, the same encoder
    weights, dataset, size), else :func:`finetune` into ``out_dir`` (notebooks: load if cached, else train).
    A stored model of another configuration is moved to ``out_dir/superseded/<time>/``, not deleted."""
    p = as_preset(preset, overrides)
    path, progress_file = Path(out_dir) / CHECKPOINT_NAME, Path(out_dir) / RESUME_NAME
    info, want = None, None
    if path.exists() or progress_file.exists():     # the configuration asked for, computed once for both files
        try:
            _, info = resolve_encoder(encoder, route)
            ds = load_split(data if data is not None else p.data, "train", image_size)
            want = _config(str(scheme).lower(), p, info, ds, image_size)
        except CheckpointError:
            pass
    if path.exists():
        try:
            if want is not None:
                model, meta = load_finetuned(path, device, encoder=None if info["class"] == "ResNet18" else encoder)
                if meta.get("config") == want:
                    return FinetuneResult(model, path, meta["history"], int(meta["best_epoch"]), meta["val_metrics"],
                                          float(meta["seconds"]), meta, cached=True)
        except CheckpointError:
            pass
        if distributed.is_main():
            set_aside(path.parent, (path, path.parent / "history.json"))    # kept, never deleted
        distributed.barrier()
    if progress_file.exists() and distributed.is_main():   # an interrupted run of another configuration: aside too
        try:
            same = want is not None and \
                load_checkpoint(progress_file, kind="finetune-progress")["meta"].get("config") == want
        except CheckpointError:
            same = False
        if not same:
            set_aside(progress_file.parent, (progress_file,))
    distributed.barrier()
    return finetune(encoder, scheme, p, data=data, out_dir=out_dir, device=device, progress=progress,
                    image_size=image_size, route=route)
