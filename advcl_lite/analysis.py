"""Spectra of adversarial perturbations for any classifier: model specs, and the resumable ``spectra`` command.

A model enters as a spec (:func:`load_model`): ``advcl:<finetuned model.pt>``, ``torchvision:<name>`` or
``timm:<name>`` (timm is optional: ``pip install timm``), with ``weights=FILE`` for local weights (nothing
is downloaded; torchvision and timm models are built with random weights otherwise). Its input
normalisation goes inside the network (:class:`~advcl_lite.models.InputNormalize`, from the library's own
metadata: torchvision's weight enums, timm's pretrained config), so every attack and heat map sees [0, 1]
images.

:func:`run_spectra` (``advcl-lite spectra``) runs the analyses of :mod:`advcl_lite.spectra` on ``n`` images
and writes each as arrays (``<analysis>.npz``), a table (``<analysis>.csv``) and a figure, with
``settings.json`` (model spec, weights hash, data, n, eps, seeds, versions). A finished analysis is not
recomputed (its ``.npz`` is there); each prints one line with its estimated cost before it starts:

* ``spectrum``: radially averaged power spectra of PGD perturbations, for each eps, overall and per class;
* ``heatmap``: Fourier heat maps (Yin et al. 2019) of the error, and of its increase over the clean error,
  overall and per class; ``heat_stride`` / ``heat_max_freq`` sample the frequencies (at 224 px a full map
  is 25,000 frequencies per image; every 8th frequency up to 32 is 41);
* ``bands``: accuracy under full / low-only / high-only PGD for each eps;
* ``margins``: per image, the L2 margin to the decision boundary inside low / mid / high DCT subspaces
  ("Hold me tight!", :func:`~advcl_lite.spectra.subspace_margins`).

Labels: the data's when the model has as many classes as the data, otherwise the model's own clean
predictions (a flip of the prediction then counts as an error); ``settings.json`` says which.
"""
from __future__ import annotations

import csv
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import CheckpointError, load_checkpoint, sha256_file, write_json
from .data import class_interleaved, load_dataset
from .finetune import load_finetuned
from .frequency import radial_power_spectrum
from .models import InputNormalize
from .runtime import __version__, resolve_device
from . import viz
from .spectra import (accuracy_under_band_attacks, fourier_heat_map, heat_map_frequencies, heat_map_summary,
                      pgd_perturbations, subspace_margins)

ANALYSES = ("spectrum", "heatmap", "bands", "margins")
KINDS = ("advcl", "torchvision", "timm")


class ModelSpecError(ValueError):
    """A model spec, its weights or its input size does not work; the message says how to fix it."""


def with_normalization(model: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None) -> nn.Module:
    """``model`` behind its input normalisation (none when ``mean`` is None): a module on [0, 1] images."""
    return model if mean is None else nn.Sequential(InputNormalize(mean, std), model)


def _weights(model: nn.Module, path: str, spec: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a file, not a checkpoint, not weights-only
        raise ModelSpecError(f"--weights {path}: cannot be read with weights_only=True "
                             f"({(str(e).splitlines() or [''])[0][:160]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as e:
        first = (str(e).splitlines() + [""])[1].strip() or str(e)[:200]
        raise ModelSpecError(f"--weights {path} do not fit {spec} ({first[:200]}); pass the weights of this "
                             f"architecture") from None


def load_model(spec: str, weights: str | None = None, num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """A classifier on [0, 1] images from a spec, and what describes it (kind, name, normalisation, input size,
    number of classes, weights and their SHA-256)."""
    kind, _, name = spec.partition(":")
    if kind not in KINDS or not name:
        raise ModelSpecError(f"unknown model spec {spec!r}; use advcl:<finetuned model.pt>, torchvision:<name> or "
                             f"timm:<name>")
    info: dict[str, Any] = {"spec": spec, "kind": kind, "name": name, "weights": weights,
                            "weights_sha256": sha256_file(weights) if weights and Path(weights).is_file() else None}
    if kind == "advcl":
        if weights:
            raise ModelSpecError("advcl: specs carry their own weights; drop --weights")
        try:
            if load_checkpoint(name).get("kind") != "finetune":
                raise ModelSpecError(f"{name} is an encoder, not a classifier: the analyses need logits; finetune "
                                     f"it first (advcl-lite finetune --encoder {name} --scheme slf)")
            model, meta = load_finetuned(name)
        except CheckpointError as e:
            raise ModelSpecError(str(e)) from None
        info.update(mean=None, std=None, input_size=meta.get("image_size"), num_classes=int(meta["num_classes"]),
                    weights_sha256=sha256_file(name), classes=meta.get("classes"))
        return model.eval(), info
    if kind == "torchvision":
        import torchvision
        try:
            builder_weights = torchvision.models.get_model_weights(name)
        except (ValueError, KeyError):
            raise ModelSpecError(f"torchvision has no model {name!r}; see torchvision.models.list_models()") from None
        meta_w = builder_weights.DEFAULT
        t = meta_w.transforms()
        model = torchvision.models.get_model(name, weights=None,
                                             num_classes=num_classes or len(meta_w.meta["categories"]))
        mean, std, size = list(t.mean), list(t.std), int(t.crop_size[0])
        classes = meta_w.meta["categories"] if not num_classes else None
    else:
        try:
            import timm
        except ImportError:
            raise ModelSpecError("timm:<name> needs timm (pip install timm); it is an optional extra") from None
        try:
            model = timm.create_model(name, pretrained=False, **({"num_classes": num_classes} if num_classes else {}))
        except Exception as e:  # noqa: BLE001 - timm raises RuntimeError for unknown names
            raise ModelSpecError(f"timm has no model {name!r} ({str(e)[:120]})") from None
        cfg = model.pretrained_cfg
        mean, std, size, classes = list(cfg["mean"]), list(cfg["std"]), int(cfg["input_size"][-1]), None
    if weights:
        _weights(model, weights, spec)
    n_out = getattr(model, "num_classes", None) or num_classes
    info.update(mean=mean, std=std, input_size=size, num_classes=n_out, classes=classes)
    return with_normalization(model, mean, std).eval(), info


def check_input_size(model: nn.Module, size: int, spec: str, device) -> int:
    """The number of outputs of ``model`` on one ``size`` x ``size`` image, or a one-line error."""
    try:
        with torch.no_grad():
            out = model(torch.rand(1, 3, size, size, device=device))
    except RuntimeError as e:
        raise ModelSpecError(f"{spec} cannot take {size}x{size} images ({str(e).splitlines()[0][:160]}); pass "
                             f"another --image-size") from None
    return int(out.shape[-1])


def _predict(model, x: torch.Tensor, device) -> torch.Tensor:
    """The model's predicted classes for ``x``, in batches of 64, on the CPU."""
    with torch.no_grad():
        return torch.cat([model(x[s:s + 64].to(device)).argmax(1).cpu() for s in range(0, len(x), 64)])


def _estimate(model, x, device) -> float:
    """Seconds per forward of one image (timed on a batch of 64, as the analyses batch), for the cost lines."""
    xb = x.repeat((64 + len(x) - 1) // len(x), 1, 1, 1)[:64].to(device)
    with torch.no_grad():
        model(xb)
        t0 = time.perf_counter()
        model(xb)
    return (time.perf_counter() - t0) / len(xb)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["empty"])
        wr.writeheader()
        wr.writerows(rows)


def _figure(analysis: str, out: Path, settings: dict) -> None:
    """``<analysis>.png`` from the arrays just written (the library's figures of notebook 05)."""
    plt = viz.core._plt()
    z = dict(np.load(out / f"{analysis}.npz"))
    if analysis == "spectrum":
        curves = {k.replace("_class_all", ""): (torch.from_numpy(z["radii"]), torch.from_numpy(v))
                  for k, v in z.items() if k.endswith("_class_all")}
        fig = viz.plot_radial_spectra(curves)
    elif analysis == "heatmap":
        fig = viz.plot_heat_maps({"error": torch.from_numpy(z["error"]), "increase over clean error":
                                  torch.from_numpy(z["increase"])}, radius=settings["image_size"] / 4)
    elif analysis == "bands":
        with open(out / "bands.csv") as f:
            recs = [{k: (v if k == "band" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
        fig = viz.plot_band_accuracy(recs)
    else:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        names = [b for b in ("low", "mid", "high") if b in z]
        ax.boxplot([z[b][np.isfinite(z[b])] for b in names])
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.set_ylabel("L2 margin inside the DCT subspace")
        ax.set_title(f"margins, n = {settings['n']}")
    fig.savefig(out / f"{analysis}.png", dpi=80, bbox_inches="tight")
    plt.close(fig)


def run_spectra(spec: str, data: str = "sample", out: str | Path = "spectra-out", *, weights: str | None = None,
                n: int = 64, image_size: int | None = None, eps: Sequence[float] = (2 / 255, 4 / 255, 8 / 255),
                analyses: Sequence[str] = ANALYSES, steps: int = 10, heat_norm: float = 4.0, heat_stride: int | None = None,
                heat_max_freq: int | None = None, num_classes: int | None = None, seed: int = 0, device=None,
                progress: bool | None = None) -> dict[str, Any]:
    """Run ``analyses`` on ``model`` (a spec) and ``n`` test images of ``data`` into ``out``; return the settings."""
    bad = [a for a in analyses if a not in ANALYSES]
    if bad:
        raise ModelSpecError(f"unknown analysis {', '.join(bad)}; choose from {', '.join(ANALYSES)}")
    dev = resolve_device(device)
    model, info = load_model(spec, weights, num_classes)
    model = model.to(dev)
    test = load_dataset(data, "test", image_size=image_size)
    size = test.image_size
    n_out = check_input_size(model, size, spec, dev)
    x, y = class_interleaved(test, n, seed=seed)
    labels = "data" if n_out == test.num_classes else "model"
    if labels == "model":
        y = _predict(model, x, dev)
    stride = heat_stride or max(1, size // 32)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"model": {k: v for k, v in info.items() if k != "classes"}, "data": str(data), "dataset": test.id,
                "image_size": size, "n": len(x), "labels": labels, "eps": [float(e) for e in eps], "steps": steps,
                "heat_norm": heat_norm, "heat_stride": stride, "heat_max_freq": heat_max_freq, "seed": seed,
                "device": str(dev), "analyses": list(analyses),
                "versions": {"advcl_lite": __version__, "torch": str(torch.__version__),
                             "python": platform.python_version()}}
    if (out / "settings.json").exists():          # a resumed run keeps what the finished analyses measured
        try:
            old = json.loads((out / "settings.json").read_text())
            settings.update({k: old[k] for k in ("seconds", "heatmap_summary", "margins_median") if k in old})
        except ValueError:
            pass
    write_json(out / "settings.json", settings)
    job = _Job(model, x, y, dev, list(eps), steps, seed, out, _estimate(model, x, dev), sorted(set(y.tolist())),
               size, stride, heat_norm, heat_max_freq, progress, settings)
    for a in analyses:
        if (out / f"{a}.npz").exists():
            print(f"{a}: done ({out / (a + '.npz')}), not recomputed", flush=True)
            continue
        t0 = time.perf_counter()
        _ANALYSIS_RUNS[a](job)
        settings.setdefault("seconds", {})[a] = time.perf_counter() - t0
        write_json(out / "settings.json", settings)
        _figure(a, out, settings)
        print(f"{a}: {settings['seconds'][a]:.1f} s -> {out / (a + '.npz')}", flush=True)
    return settings


@dataclass
class _Job:
    """What every analysis of :func:`run_spectra` works on; each writes its files into ``out`` and its summary
    into ``settings``."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    dev: torch.device
    eps: list
    steps: int
    seed: int
    out: Path
    per_img: float          # seconds per image per forward+backward, for the time estimates
    cls: list
    size: int
    stride: int
    heat_norm: float
    heat_max_freq: int | None
    progress: bool | None
    settings: dict


def _spectrum(j: _Job) -> None:
    print(f"spectrum: PGD-{j.steps} on {len(j.x)} images at {len(j.eps)} eps, about "
          f"{j.per_img * 3 * j.steps * len(j.x) * len(j.eps):.0f} s", flush=True)
    rows, arrays = [], {}
    for e in j.eps:
        delta = pgd_perturbations(j.model, j.x, j.y, e, e / 4, j.steps, seed=j.seed)
        groups = [("all", torch.ones(len(j.y), dtype=torch.bool))] + [(str(c), j.y == c) for c in j.cls]
        for g, m in groups:
            radii, power = radial_power_spectrum(delta[m])
            arrays[f"eps{e * 255:g}_class_{g}"] = power.numpy()
            rows += [{"eps_255": e * 255, "class": g, "radius": float(r), "power": float(p)}
                     for r, p in zip(radii, power)]
        arrays["radii"] = radii.numpy()
    _write_csv(j.out / "spectrum.csv", rows)
    np.savez(j.out / "spectrum.npz", **arrays)


def _heatmap(j: _Job) -> None:
    freqs = heat_map_frequencies(j.size, j.heat_max_freq, j.stride)
    print(f"heatmap: {len(freqs)} frequencies x {len(j.x)} images (every {j.stride}th frequency up to "
          f"{j.heat_max_freq or 'the highest'}), about {j.per_img * len(freqs) * len(j.x):.0f} s", flush=True)
    clean_err = float((_predict(j.model, j.x, j.dev) != j.y).float().mean())
    per = fourier_heat_map(j.model, j.x, j.y, j.heat_norm, max_freq=j.heat_max_freq, stride=j.stride, seed=j.seed,
                           progress=j.progress, per_image=True)            # (N, H, W): one pass for all maps
    heat = per.mean(0)
    arrays = {"error": heat.numpy(), "increase": (heat - clean_err).numpy(), "clean_error": np.array(clean_err)}
    for c in j.cls:
        arrays[f"error_class_{c}"] = per[j.y == c].mean(0).numpy()
    h = heat.shape[0]
    rows = [{"i": int(i), "j": int(k), "error": float(heat[h // 2 + i, h // 2 + k]),
             "increase": float(heat[h // 2 + i, h // 2 + k] - clean_err)} for i, k in freqs.tolist()]
    _write_csv(j.out / "heatmap.csv", rows)
    np.savez(j.out / "heatmap.npz", **arrays)
    j.settings["heatmap_summary"] = heat_map_summary(heat, radius=j.size / 4)


def _bands(j: _Job) -> None:
    print(f"bands: PGD-{j.steps} restricted to 3 bands at {len(j.eps)} eps on {len(j.x)} images, about "
          f"{j.per_img * 3 * j.steps * len(j.x) * len(j.eps) * 3:.0f} s", flush=True)
    recs = accuracy_under_band_attacks(j.model, j.x, j.y, j.eps, radius=j.size / 4, steps=j.steps, seed=j.seed,
                                       progress=j.progress)
    _write_csv(j.out / "bands.csv", recs)
    np.savez(j.out / "bands.npz", accuracy=np.array([r["accuracy"] for r in recs]),
             eps=np.array([r["eps"] for r in recs]), band=np.array([r["band"] for r in recs]))


def _margins(j: _Job) -> None:
    print(f"margins: DeepFool inside 3 DCT subspaces on {len(j.x)} images, at most "
          f"{j.per_img * 3 * 10 * 50 * len(j.x):.0f} s (usually far less)", flush=True)
    m = subspace_margins(j.model, j.x, j.y, progress=j.progress)
    rows = [{"image": i, "label": int(j.y[i]), **{b: float(v[i]) for b, v in m.items()}} for i in range(len(j.x))]
    _write_csv(j.out / "margins.csv", rows)
    np.savez(j.out / "margins.npz", **{b: v.numpy() for b, v in m.items()})
    j.settings["margins_median"] = {b: float(v.median()) for b, v in m.items()}


_ANALYSIS_RUNS = {"spectrum": _spectrum, "heatmap": _heatmap, "bands": _bands, "margins": _margins}
