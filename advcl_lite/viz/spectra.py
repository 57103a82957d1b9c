"""Figures of the spectra stage (notebook 05): Fourier heat maps, accuracy under band-limited attacks,
and :func:`plot_frequency_explorer`, the figure behind notebook 05's widget.

The computations are in :mod:`advcl_lite.spectra`; spectra curves are :func:`~advcl_lite.viz.plot_radial_spectra`
(pass it ``{name: perturbation_spectrum(...)}``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..frequency import high_pass, low_pass
from ..runtime import model_device, model_mode
from ..spectra import (BANDS, accuracy_under_band_attacks, heat_map_summary, high_frequency_fraction,
                       pgd_perturbations, power_spectrum_2d)
from .core import _plt


def plot_fourier_heat_map(heat: torch.Tensor, ax=None, title: str | None = None, radius: float | None = None,
                          vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis", colorbar: bool = True):
    """``imshow`` of a heat map (fftshift layout) on frequency axes ``j`` (x) and ``i`` (y), DC at (0, 0);
    frequencies not evaluated (NaN) in grey; ``radius`` draws the HFC/LFC boundary. Returns the image."""
    plt = _plt()
    ax = ax or plt.gca()
    h, w = heat.shape
    i0, j0 = -(h // 2), -(w // 2)
    cm = plt.get_cmap(cmap).with_extremes(bad="0.85")
    im = ax.imshow(heat.detach().cpu().float().numpy(), origin="lower", cmap=cm, vmin=vmin, vmax=vmax,
                   extent=(j0 - 0.5, j0 + w - 0.5, i0 - 0.5, i0 + h - 0.5), interpolation="nearest")
    if radius is not None:
        ax.add_patch(plt.Circle((0, 0), radius, fill=False, ls="--", lw=1.2, color="white"))
    ax.set_xlabel("frequency j (width)")
    ax.set_ylabel("frequency i (height)")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="error rate")
    return im


def plot_heat_maps(maps: dict[str, torch.Tensor], radius: float | None = 8.0, norm: float | None = None):
    """One heat map per encoder side by side, one shared colour scale [0, 1]. Returns the figure."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps) + 0.8, 3.4), squeeze=False, constrained_layout=True)
    im = None
    for ax, (name, heat) in zip(axes[0], maps.items()):
        s = heat_map_summary(heat, radius if radius is not None else 8.0)
        im = plot_fourier_heat_map(heat, ax, f"{name}\nmean error {s['mean']:.2f}", radius, colorbar=False)
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), fraction=0.046, pad=0.02, label="error rate")
    if norm is not None:
        fig.suptitle(f"Fourier heat map, perturbation norm {norm:g}")
    return fig


def plot_band_accuracy(records: Sequence[dict], axes=None, title: str | None = "Accuracy under band-limited PGD"):
    """Accuracy vs eps (in /255): one panel per band, one line per ``encoder`` (if the records carry
    that key). Each line starts at eps = 0 with that encoder's clean accuracy. Returns the figure."""
    plt = _plt()
    bands = list(dict.fromkeys(r["band"] for r in records))
    encoders = list(dict.fromkeys(r.get("encoder", "") for r in records))
    if axes is None:
        fig, axes = plt.subplots(1, len(bands), figsize=(3.6 * len(bands) + 0.6, 3.3), sharey=True, squeeze=False,
                                 constrained_layout=True)
        axes = axes[0]
    fig = axes[0].figure
    for ax, b in zip(axes, bands):
        for ei, enc in enumerate(encoders):
            rs = sorted((r for r in records if r.get("encoder", "") == enc and r["band"] == b), key=lambda r: r["eps"])
            if not rs:
                continue
            xs = [0.0] + [r["eps_255"] for r in rs]
            ys = [rs[0]["clean_accuracy"]] + [r["accuracy"] for r in rs]
            ax.plot(xs, ys, marker="o", ms=3, color=f"C{ei}", label=enc or None)
        ax.set_title({"full": "full PGD", "low": f"low band only (d < {records[0]['radius']:g})",
                      "high": f"high band only (d >= {records[0]['radius']:g})"}.get(b, f"band {b}"), fontsize=10)
        ax.set_xlabel("eps (/255)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (clean and attacked correct)")
    if any(encoders):
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_frequency_explorer(model: nn.Module | dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                            radius: float = 8.0, eps: float = 8 / 255, *, steps: int = 10, image_index: int = 0,
                            device=None, seed: int | None = 0):
    """One figure (and its numbers) for a radius and an eps; notebook 05's widget redraws it.

    One row per model (pass a dict ``{name: classifier}`` to compare encoders). Columns:
    the PGD perturbation delta of image ``image_index`` (grey = 0, scaled to +-eps); its
    low part (``d < radius``) and its high part (``d >= radius``), which add up to delta;
    the log power spectrum of delta over the batch with the radius drawn; accuracy
    clean and under full / low-only / high-only PGD at ``eps``
    (:func:`~advcl_lite.spectra.accuracy_under_band_attacks`). Returns ``(fig, stats)`` with
    ``stats[name] = {"hf_fraction", "clean", "full", "low", "high"}``.
    """
    plt = _plt()
    models = model if isinstance(model, dict) else {"model": model}
    fig, axes = plt.subplots(len(models), 5, figsize=(15, 3.1 * len(models)), squeeze=False, constrained_layout=True)
    stats = {}
    alpha = eps / 4
    for row, (name, m) in zip(axes, models.items()):
        delta = pgd_perturbations(m, x, y, eps, alpha, steps, device=device, seed=seed)
        recs = accuracy_under_band_attacks(m, x, y, [eps], radius, bands=("low", "high"), alpha=alpha, steps=steps,
                                           device=device, seed=seed, progress=False)
        dev = model_device(m)
        with torch.no_grad(), model_mode(m, "eval"):
            clean_ok = m(x.to(dev)).argmax(1).cpu() == y.cpu()
            adv_ok = m((x + delta).clamp(0, 1).to(dev)).argmax(1).cpu() == y.cpu()
        acc = {"full": float((clean_ok & adv_ok).float().mean())} | {r["band"]: r["accuracy"] for r in recs}
        st = {"hf_fraction": high_frequency_fraction(delta, radius), "clean": recs[0]["clean_accuracy"], **acc}
        stats[name] = st
        d = delta[image_index:image_index + 1]
        scale = max(eps, 1e-12)
        parts = [(d, "delta (PGD)"), (low_pass(d, radius), f"low part, d < {radius:g}"),
                 (high_pass(d, radius), f"high part, d >= {radius:g}")]
        for ax, (img, label) in zip(row[:3], parts):
            ax.imshow((0.5 + img[0] / (2 * scale)).clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_title(f"{name}: {label}" if label.startswith("delta") else label, fontsize=9)
            ax.axis("off")
        h, w = delta.shape[-2:]
        ps = power_spectrum_2d(delta).clamp_min(1e-30).log10()
        ax = row[3]
        ax.imshow(ps.float().numpy(), origin="lower", cmap="magma",
                  extent=(-(w // 2) - 0.5, w - w // 2 - 0.5, -(h // 2) - 0.5, h - h // 2 - 0.5))
        ax.add_patch(plt.Circle((0, 0), radius, fill=False, ls="--", lw=1.2, color="cyan"))
        ax.set_title(f"log10 power of delta; {100 * st['hf_fraction']:.0f}% at d >= {radius:g}", fontsize=9)
        ax.set_xlabel("j")
        ax.set_ylabel("i")
        ax = row[4]
        keys = ["clean"] + [b for b in BANDS if b in st]
        ax.bar(keys, [st[k] for k in keys], color=["0.6"] + [f"C{k}" for k in range(len(keys) - 1)])
        for k, key in enumerate(keys):
            ax.text(k, st[key] + 0.02, f"{st[key]:.2f}", ha="center", fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_title(f"accuracy at eps = {eps * 255:.3g}/255 ({len(x)} images)", fontsize=9)
    return fig, stats
