"""Adversarial contrastive pretraining: SimCLR, ACL and AdvCL on one training loop.

One step of each method (spec sections 1, 4, 5):

* ``simclr``: NT-Xent between two SimCLR views t1, t2 (route ``normal``).
* ``acl``: t1, t2 and their jointly attacked copies a1, a2 (PGD on NT-Xent,
  route ``pgd``); loss = mean of the clean and the adversarial NT-Xent.
* ``advcl``: views t1, t2, o (crop+flip) and h = HFC(o); x_cl = ContrastivePGD
  from o against the clean anchors [t1, t2, h]; loss = L_CL(t1, t2, x_cl, h).
  With pseudo-labels: x_ce = PseudoLabelPGD from o (route ``pgd_ce``) and
  ``+ lambda * L_PS``. Ablations: ``view="lfc"`` (LFC instead of HFC),
  ``view="none"`` (no fourth view), ``radius``.

:func:`pretrain` checkpoints atomically every ``ckpt_every`` epochs
(``last.pt``) and at the end (``final.pt``), resumes from ``last.pt``, and
saves the per-epoch history beside them. :func:`get_or_train` reuses a
finished run with the same configuration (notebooks: "load if cached, else train").
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .attacks import ContrastivePGD, PseudoLabelPGD, attack_pair
from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from .data import ImageDataset, class_balanced_subset, crop_flip, load_dataset, simclr_view
from .device import maybe_data_parallel, resolve_device, seed_everything, unwrap
from .frequency import HighPass, LowPass, scaled_radius
from .losses import multiview_contrastive_loss, pseudo_label_loss
from .models import ContrastiveNet, to_channels_last
from .presets import Preset, get_preset

METHODS = ("simclr", "acl", "advcl")
VIEWS = ("hfc", "lfc", "none")
ROUTES = {"simclr": ("normal",), "acl": ("normal", "pgd"), "advcl": ("normal", "pgd")}
EVAL_ROUTE = {"simclr": "normal", "acl": "pgd", "advcl": "pgd"}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


@dataclass
class PretrainResult:
    checkpoint: Path
    history: list[dict[str, Any]]
    net: ContrastiveNet
    meta: dict[str, Any]
    cached: bool = False
    seconds: float = field(default=0.0)


def progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    return os.environ.get("ADVCL_PROGRESS", "1") not in ("0", "false", "no")


def pretrain_dataset(preset: Preset, data: str | ImageDataset | None = None) -> ImageDataset:
    """The training images a preset pretrains on (``train_subset`` class-balanced images of the train split).

    Pseudo-labels are made for exactly this dataset, indexed the same way.
    """
    if isinstance(data, ImageDataset):
        ds = data
    else:
        ds = load_dataset(data or preset.data, "train")
    return class_balanced_subset(ds, preset.train_subset, seed=preset.seed)


def run_name(method: str, view: str = "hfc", pseudo: bool = False, radius: float | None = None) -> str:
    if method != "advcl":
        return method
    name = "advcl" + ("" if view == "hfc" else f"-{view}") + ("-pl" if pseudo else "")
    return name + (f"-r{radius:g}" if radius is not None else "")


def _lr_lambda(preset: Preset, steps_per_epoch: int):
    warm = preset.warmup_epochs * steps_per_epoch
    total = max(1, preset.epochs * steps_per_epoch)

    def f(step: int) -> float:
        if warm and step < warm:
            return 0.01 + (1 - 0.01) * step / warm
        t = (step - warm) / max(1, total - warm)
        return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class _Stepper:
    """Computes one method's loss for a batch (the attack included)."""

    def __init__(self, method: str, net: nn.Module, preset: Preset, view: str, radius: float, use_pseudo: bool,
                 recompute_anchors: bool = False):
        self.method, self.net, self.p = method, net, preset
        self.use_pseudo = use_pseudo
        mode = preset.attack_mode
        self.view_fn = {"hfc": HighPass(radius), "lfc": LowPass(radius), "none": None}[view]
        self.cl_attack = ContrastivePGD(net, preset.eps, preset.alpha, preset.pgd_steps, route="pgd",
                                        temperature=preset.temperature, recompute_anchors=recompute_anchors, mode=mode)
        self.ce_attack = PseudoLabelPGD(net, preset.eps, preset.alpha, preset.pgd_steps, route="pgd_ce", mode=mode)

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, g: torch.Generator, targets=None) -> dict[str, torch.Tensor]:
        p, net, tau = self.p, self.net, self.p.temperature
        t1, t2 = simclr_view(x, g), simclr_view(x, g)
        if self.method == "simclr":
            z = net(torch.cat([t1, t2]), "normal")
            return {"loss": multiview_contrastive_loss(list(z.chunk(2)), tau)}
        if self.method == "acl":
            a1, a2 = attack_pair(net, t1, t2, p.eps, p.alpha, p.pgd_steps, "pgd", tau, mode=p.attack_mode)
            net.train()
            zc = net(torch.cat([t1, t2]), "normal")
            za = net(torch.cat([a1, a2]), "pgd")
            lc = multiview_contrastive_loss(list(zc.chunk(2)), tau)
            la = multiview_contrastive_loss(list(za.chunk(2)), tau)
            return {"loss": 0.5 * (lc + la), "loss_clean": lc, "loss_adv": la}
        # advcl
        o = crop_flip(x, g)
        clean = [t1, t2] + ([self.view_fn(o)] if self.view_fn is not None else [])
        x_cl = self.cl_attack(o, anchors=clean)
        x_ce = self.ce_attack(o, targets=targets) if self.use_pseudo else None
        net.train()
        zc = net(torch.cat(clean), "normal").chunk(len(clean))
        z_adv = net(x_cl, "pgd")
        # view order as in the spec: t1, t2, x_cl, h
        views = [zc[0], zc[1], z_adv] + list(zc[2:])
        l_cl = multiview_contrastive_loss(views, tau)
        out = {"loss": l_cl, "loss_cl": l_cl}
        if self.use_pseudo:
            l_ps = pseudo_label_loss(net(x_ce, "pgd_ce", output="pseudo"), targets)
            out["loss"] = l_cl + p.pseudo_lambda * l_ps
            out["loss_ps"] = l_ps
        return out


def _config(method, preset, view, radius, use_pseudo, pseudo_meta, ds) -> dict[str, Any]:
    return {"method": method, "preset": preset.to_dict(), "view": view if method == "advcl" else None,
            "radius": radius if method == "advcl" else None, "pseudo": bool(use_pseudo),
            "pseudo_labels": pseudo_meta, "dataset": ds.id, "dataset_name": ds.name,
            "image_size": ds.image_size, "num_train": len(ds)}


def build_net(method: str, base_width: int, pseudo_ks=()) -> ContrastiveNet:
    routes = ROUTES[method] + (("pgd_ce",) if pseudo_ks else ())
    return ContrastiveNet(base_width, routes, pseudo_ks=tuple(pseudo_ks))


def pretrain(method: str, preset: str | Preset = "smoke", *, out_dir: str | os.PathLike, data=None,
             view: str = "hfc", radius: float | None = None, pseudo_labels=None, resume: bool = True,
             device=None, progress: bool | None = None, recompute_anchors: bool = False,
             max_epochs: int | None = None, **overrides) -> PretrainResult:
    """Pretrain ``method`` ("simclr", "acl", "advcl") at ``preset`` into ``out_dir``.

    ``pseudo_labels``: a :class:`~advcl_lite.pseudo_labels.PseudoLabels` or a path to
    one made for this preset's training set (AdvCL only). ``resume``: continue from
    ``out_dir/last.pt`` when present (its configuration must match). ``max_epochs``
    stops early after that many epochs in total (used to test interruption).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
    preset = get_preset(preset, **overrides) if overrides or not isinstance(preset, Preset) else preset
    device = resolve_device(device)
    out_dir = Path(out_dir)
    ds = pretrain_dataset(preset, data)
    radius = float(radius) if radius is not None else scaled_radius(ds.image_size, preset.hfc_radius)

    pl = None
    if pseudo_labels is not None:
        if method != "advcl":
            raise ValueError("pseudo-labels are used by AdvCL only (method='advcl')")
        from .pseudo_labels import PseudoLabels
        pl = pseudo_labels if isinstance(pseudo_labels, PseudoLabels) else PseudoLabels.load(pseudo_labels, dataset=ds)
        pl.check_dataset(ds)
    pseudo_ks = tuple(pl.ks) if pl is not None else ()
    config = _config(method, preset, view, radius, pl is not None, pl.describe() if pl else None, ds)

    gen = seed_everything(preset.seed)
    net = build_net(method, preset.base_width, pseudo_ks).to(device)
    net = to_channels_last(net, preset.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=preset.lr, momentum=preset.momentum, weight_decay=preset.weight_decay)
    bs = min(preset.batch_size, len(ds))
    steps_per_epoch = ds.num_batches(bs, drop_last=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(preset, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=(preset.amp == "fp16"))
    history: list[dict[str, Any]] = []
    start_epoch = 0

    last = out_dir / "last.pt"
    if resume and last.exists():
        ck = load_checkpoint(last, kind="pretrain", map_location=device)
        if ck["meta"].get("config") != json.loads(json.dumps(config)):
            raise CheckpointError(f"{last} was written for a different configuration than this run; "
                                  f"use another out_dir, or resume=False (CLI: --no-resume) to start over")
        load_weights(net, ck["state_dict"], str(last))
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng_cpu"])
        gen.set_state(ck["rng_data"])
        if device.type == "cuda" and "rng_cuda" in ck:
            torch.cuda.set_rng_state(ck["rng_cuda"].cpu(), device)
        history = json.loads(ck["history"])
        start_epoch = int(ck["meta"]["epoch"])

    model = maybe_data_parallel(net, device)
    stepper = _Stepper(method, model, preset, view, radius, pl is not None, recompute_anchors)
    meta_base = {"config": config, "method": method, "routes": list(net.routes), "eval_route": EVAL_ROUTE[method],
                 "base_width": preset.base_width, "pseudo_ks": list(pseudo_ks), "seed": preset.seed,
                 "epochs": preset.epochs, "dataset": ds.id, "image_size": ds.image_size,
                 "run_name": run_name(method, view, pl is not None)}

    def save(path: Path, epoch: int) -> None:
        extra = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng_cpu": torch.get_rng_state(),
                 "rng_data": gen.get_state(), "history": json.dumps(history)}
        if device.type == "cuda":
            extra["rng_cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(path, kind="pretrain", state_dict=unwrap(net).state_dict(),
                        meta={**meta_base, "epoch": epoch}, **extra)

    from tqdm.auto import tqdm
    show = progress_enabled(progress)
    end_epoch = preset.epochs if max_epochs is None else min(preset.epochs, max_epochs)
    t_run = time.perf_counter()
    for epoch in range(start_epoch, end_epoch):
        model.train()
        t0, sums, seen = time.perf_counter(), {}, 0
        bar = tqdm(ds.batches(bs, shuffle=True, generator=gen, device=device, drop_last=True), total=steps_per_epoch,
                   desc=f"{run_name(method, view, pl is not None)} epoch {epoch + 1}/{preset.epochs}",
                   disable=not show, leave=False, mininterval=2.0)
        for x, _, idx in bar:
            if preset.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            targets = pl.targets(idx, device) if pl is not None else None
            with _autocast(device, preset.amp):
                losses = stepper(x, idx, gen, targets)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}; the last good checkpoint "
                    f"{last if last.exists() else '(none yet)'} is kept. Lower lr, or use amp='none'.")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        secs = time.perf_counter() - t0
        rec = {"epoch": epoch + 1, **{k: v / max(seen, 1) for k, v in sums.items()},
               "lr": opt.param_groups[0]["lr"], "seconds": secs, "images_per_s": seen / max(secs, 1e-9)}
        history.append(rec)
        if show:
            print(f"[{run_name(method, view, pl is not None)}] epoch {epoch + 1}/{preset.epochs} "
                  f"loss {rec['loss']:.4f} ({rec['images_per_s']:.0f} img/s, {secs:.1f}s)", flush=True)
        if (epoch + 1) % preset.ckpt_every == 0 or epoch + 1 == preset.epochs:
            save(last, epoch + 1)
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    done = len(history) >= preset.epochs
    if done:
        save(out_dir / "final.pt", preset.epochs)
    meta = {**meta_base, "epoch": len(history)}
    return PretrainResult(out_dir / ("final.pt" if done else "last.pt"), history, unwrap(net).eval(), meta,
                          seconds=time.perf_counter() - t_run)


def load_pretrained(path: str | os.PathLike, device=None) -> tuple[ContrastiveNet, dict[str, Any]]:
    """Rebuild the ContrastiveNet stored in a pretraining checkpoint (strict keys)."""
    ck = load_checkpoint(path, kind="pretrain", map_location="cpu")
    meta = ck["meta"]
    try:
        net = build_net(meta["method"], int(meta["base_width"]), tuple(meta.get("pseudo_ks", ())))
    except KeyError as e:
        raise CheckpointError(f"{path}: pretraining checkpoint metadata lacks {e}; re-create it") from None
    load_weights(net, ck["state_dict"], str(path))
    meta = dict(meta)
    meta["history"] = json.loads(ck.get("history", "[]"))
    meta["path"] = str(path)
    return net.to(resolve_device(device)).eval(), meta


def get_or_train(method: str, preset: str | Preset, work_dir: str | os.PathLike, *, data=None, view: str = "hfc",
                 radius: float | None = None, pseudo_labels=None, device=None, progress: bool | None = None,
                 **overrides) -> PretrainResult:
    """Return a finished run from ``work_dir/pretrain/<name>/final.pt`` if its configuration matches,
    else train (resuming a partial run). The run folder name encodes method, view and pseudo-labels."""
    p = get_preset(preset, **overrides) if overrides or not isinstance(preset, Preset) else preset
    out = Path(work_dir) / "pretrain" / run_name(method, view, pseudo_labels is not None, radius)
    final = out / "final.pt"
    if final.exists():
        try:
            net, meta = load_pretrained(final, device)
            ds = pretrain_dataset(p, data)
            r = float(radius) if radius is not None else scaled_radius(ds.image_size, p.hfc_radius)
            pl_meta = None
            if pseudo_labels is not None:
                from .pseudo_labels import PseudoLabels
                pl = pseudo_labels if isinstance(pseudo_labels, PseudoLabels) else PseudoLabels.load(pseudo_labels, dataset=ds)
                pl_meta = pl.describe()
            want = json.loads(json.dumps(_config(method, p, view, r, pseudo_labels is not None, pl_meta, ds)))
            if meta.get("config") == want:
                return PretrainResult(final, meta["history"], net, meta, cached=True)
        except CheckpointError:
            pass
        # a stale or different run: train again into the same folder from scratch
        for f in ("final.pt", "last.pt"):
            (out / f).unlink(missing_ok=True)
    return pretrain(method, p, out_dir=out, data=data, view=view, radius=radius, pseudo_labels=pseudo_labels,
                    device=device, progress=progress)


def cli_pretrain(args) -> int:
    from .cli import preset_from_args
    p = preset_from_args(args)
    data = p.data
    if args.image_size:
        data = load_dataset(p.data, "train", image_size=args.image_size)
    out = args.out or str(Path("runs") / p.name / "pretrain" / run_name(args.method, args.view, bool(args.pseudo_labels), args.radius))
    res = pretrain(args.method, p, out_dir=out, data=data, view=args.view, radius=args.radius,
                   pseudo_labels=args.pseudo_labels, resume=args.resume, device=args.device,
                   progress=not args.no_progress, recompute_anchors=args.recompute_anchors)
    last = res.history[-1] if res.history else {}
    print(f"wrote {res.checkpoint} (epoch {res.meta['epoch']}/{p.epochs}, final loss {last.get('loss', float('nan')):.4f}, "
          f"{res.seconds:.0f}s)")
    return 0
