"""Generic plotting helpers shared by the notebooks, and the notebook widget wrapper.

Every function returns a matplotlib ``Figure`` and never calls ``plt.show()``
(a notebook displays a returned figure; a script saves it). Images are torch
tensors ``(N, C, H, W)`` or ``(C, H, W)`` with ``C`` 1 or 3, in [0, 1] for
ordinary images. HFC views and perturbations are *signed* and not in [0, 1];
:func:`display_images` maps them to gray = 0 so they can be seen
(``signed="auto"`` does this whenever a value lies outside [0, 1]).

Contents: :func:`widget`, :func:`display_images`, :func:`image_grid`, :func:`plot_views`,
:func:`plot_mask`, :func:`plot_frequency_views`, :func:`plot_radial_spectra`,
:func:`plot_loss_curves`, :func:`plot_adversarial_panel`; ``_plt``, the one deferred
``matplotlib.pyplot`` import of the whole :mod:`advcl_lite.viz` package.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..frequency import energy_fraction, high_pass, low_pass, radial_mask, radial_power_spectrum
from ..runtime import headless, model_mode


def widget(fn, manual: bool = False, **controls):
    """``ipywidgets.interact(fn, **controls)`` (``interact_manual`` with ``manual``) in JupyterLab.

    In a headless run (the tour and the tests execute notebooks with papermill, which sets
    ``ADVCL_HEADLESS=1``) no frontend can move a slider, and an ``interact`` there can leave the
    notebook client waiting forever, so the widget is skipped with a one-line note and None is
    returned; the static figure beside it carries the content.
    """
    if headless():
        print(f"(interactive widget '{getattr(fn, '__name__', 'widget')}' skipped: headless run; "
              f"open the notebook in JupyterLab to use it)")
        return None
    from ipywidgets import interact, interact_manual
    return (interact_manual if manual else interact)(fn, **controls)


def _plt():
    import matplotlib.pyplot as plt
    return plt


def _as_batch(x: torch.Tensor, what: str = "images") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{what}: expected shape (N, C, H, W) or (C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    return x.detach().float().cpu()


def display_images(x: torch.Tensor, signed: bool | str = "auto", scale: str = "image",
                   quantile: float = 0.995) -> np.ndarray:
    """Images ready for ``imshow``: ``(N, C, H, W)`` or ``(C, H, W)`` tensor -> ``(N, H, W, 3)`` array in [0, 1].

    * ``signed=False``: values are clipped to [0, 1] (ordinary images).
    * ``signed=True``: ``0.5 + 0.5 * x / s`` (clipped), so 0 is mid-gray, positive values bright
      and negative dark; ``s`` is the ``quantile`` of ``|x|`` per image (``scale="image"``) or
      over the whole batch (``scale="batch"``, keeps the images comparable).
    * ``signed="auto"``: signed exactly when some value lies outside [0, 1] (HFC views, deltas).
    """
    xb = _as_batch(x)
    if signed == "auto":
        signed = bool(xb.min() < -1e-6 or xb.max() > 1 + 1e-6)
    if signed:
        a = xb.abs().flatten(1) if scale == "image" else xb.abs().flatten()[None]
        s = torch.quantile(a, quantile, dim=1).clamp_min(1e-12)
        s = s.view(-1, 1, 1, 1) if scale == "image" else s.view(1, 1, 1, 1)
        xb = 0.5 + 0.5 * xb / s
    xb = xb.clamp(0, 1)
    if xb.shape[1] == 1:
        xb = xb.expand(-1, 3, -1, -1)
    return xb.permute(0, 2, 3, 1).numpy()


def _mosaic(imgs: np.ndarray, ncol: int, pad: int = 2, pad_top: int = 0, fill: float = 1.0) -> np.ndarray:
    """(N, H, W, 3) -> one array with the images in rows of ``ncol``; ``pad_top`` leaves room for titles."""
    n, h, w, _ = imgs.shape
    nrow = math.ceil(n / ncol)
    rh = h + pad + pad_top
    out = np.full((nrow * rh - pad, ncol * (w + pad) - pad, 3), fill, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        top = r * rh + pad_top
        out[top:top + h, c * (w + pad):c * (w + pad) + w] = imgs[i]
    return out


def image_grid(x: torch.Tensor, ncol: int = 8, titles: Sequence[str] | None = None, signed: bool | str = "auto",
               title: str | None = None, scale: str = "image", inches: float = 1.1):
    """A grid of images. ``x``: ``(N, C, H, W)`` or ``(C, H, W)``; ``titles``: one short label per image.

    Signed images (HFC views, perturbations) are shown with 0 as gray (see :func:`display_images`).
    """
    plt = _plt()
    imgs = display_images(x, signed, scale)
    n, h, w, _ = imgs.shape
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    pad_top = max(2, h // 3) if titles is not None else 0
    fig, ax = plt.subplots(figsize=(ncol * inches, nrow * inches * (h + pad_top) / h + (0.4 if title else 0)))
    ax.imshow(_mosaic(imgs, ncol, pad_top=pad_top), interpolation="nearest")
    ax.set_axis_off()
    if titles is not None:
        if len(titles) != n:
            raise ValueError(f"image_grid: {n} images but {len(titles)} titles")
        for i, t in enumerate(titles):
            r, c = divmod(i, ncol)
            ax.text(c * (w + 2) + w / 2, r * (h + 2 + pad_top) + pad_top - 1, str(t), ha="center", va="bottom",
                    fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_views(views: Mapping[str, torch.Tensor], n: int = 8, signed: bool | str = "auto", title: str | None = None,
               inches: float = 1.1):
    """Rows of named views of the same images: ``{"image": x, "t1": t1, "HFC h": h, ...}``.

    Each value is ``(N, C, H, W)``; the first ``n`` images of every view are shown, one row per view,
    each row displayed with its own sign convention (``signed="auto"``: HFC rows centred on gray).
    """
    plt = _plt()
    if not views:
        raise ValueError("plot_views needs at least one view")
    rows = {k: display_images(_as_batch(v, k)[:n], signed) for k, v in views.items()}
    ncol = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), 1, figsize=(ncol * inches + 1.2, len(rows) * inches), squeeze=False)
    for ax, (name, imgs) in zip(axes[:, 0], rows.items()):
        ax.imshow(_mosaic(imgs, ncol), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _draw_mask(ax, size: int, r: float) -> int:
    m = radial_mask(size, r, centered=True)
    ax.imshow(m.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    c = size // 2            # fftshift puts DC at index size // 2
    ax.add_patch(_plt().Circle((c, c), r, fill=False, color="tab:red", lw=1))
    ax.set_axis_off()
    return int(m.sum())


def plot_mask(size: int = 32, r: float = 8.0):
    """The mask M_r in the centred spectrum (DC in the middle): white = inside the disk (kept by the LFC,
    removed by the HFC). The title counts the bins inside (193 of 1024 at r = 8, 32x32)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3, 3))
    k = _draw_mask(ax, size, r)
    ax.set_title(f"M_r, r = {r:g}: {k} of {size * size} bins", fontsize=9)
    fig.tight_layout()
    return fig


def plot_frequency_views(x: torch.Tensor, radii: float | Sequence[float] = (2, 4, 8, 12), index: int = 0,
                         inches: float = 2.0):
    """How one image splits into LFC + HFC as the radius r varies.

    ``x``: ``(C, H, W)`` or ``(N, C, H, W)`` in [0, 1] (``index`` picks the image); ``radii``: one r (one row,
    what a slider draws) or several (one row each). Columns: the image (first row), the mask M_r in
    the centred spectrum, LFC = low_pass(x, r) and HFC = high_pass(x, r); titles give the share of
    the non-DC spectral energy on each side (:func:`~advcl_lite.frequency.energy_fraction`).
    The HFC is signed, shown with its own scale centred on gray.
    """
    plt = _plt()
    img = _as_batch(x)[index:index + 1]
    radii = [float(radii)] if isinstance(radii, (int, float)) else [float(r) for r in radii]
    size = img.shape[-1]
    fig, axes = plt.subplots(len(radii), 4, figsize=(4 * inches, len(radii) * inches + 0.3), squeeze=False)
    for row, r in enumerate(radii):
        a_img, a_mask, a_lfc, a_hfc = axes[row]
        if row == 0:
            a_img.imshow(display_images(img, False)[0])
            a_img.set_title("image", fontsize=9)
        a_img.set_axis_off()
        k = _draw_mask(a_mask, size, r)
        a_mask.set_title(f"mask r = {r:g} ({k} bins)", fontsize=9)
        frac = float(energy_fraction(img, r)[0])
        a_lfc.imshow(display_images(low_pass(img, r), False)[0])
        a_lfc.set_title(f"LFC: {100 * frac:.1f}% of energy", fontsize=9)
        a_lfc.set_axis_off()
        a_hfc.imshow(display_images(high_pass(img, r), True)[0])
        a_hfc.set_title(f"HFC: {100 * (1 - frac):.1f}% of energy", fontsize=9)
        a_hfc.set_axis_off()
    fig.tight_layout()
    return fig


def plot_radial_spectra(curves: Mapping[str, Any], radius: float | None = None, include_dc: bool = False,
                        title: str | None = "Radially averaged power spectrum", ax=None, floor: float = 1e-12):
    """Radially averaged power spectra on a log scale, one line per label.

    ``curves``: ``{label: images}`` with images ``(N, C, H, W)`` or ``(C, H, W)`` (the spectrum is
    computed with :func:`~advcl_lite.frequency.radial_power_spectrum`) or ``{label: (radii, power)}``
    already computed. The y value is the mean power on the ring of that radius, each curve divided
    by its sum over the drawn radii, so inputs of very different energy (images, HFC views,
    perturbations) share one axis and only their shapes are compared. DC (radius 0) is left out unless ``include_dc``.
    Values below ``floor`` are float round-off (e.g. an LFC beyond its radius) and are not drawn.
    ``radius`` draws the HFC/LFC boundary.
    """
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
    else:
        fig = ax.figure
    for label, c in curves.items():
        if isinstance(c, (tuple, list)) and len(c) == 2:
            rad, power = (torch.as_tensor(v, dtype=torch.float64) for v in c)
        else:
            rad, power = radial_power_spectrum(_as_batch(c, label).double())
        rad, power = rad.cpu().numpy(), power.cpu().numpy()
        keep = np.ones_like(rad, dtype=bool) if include_dc else rad > 0
        rad, power = rad[keep], power[keep]
        share = power / max(float(power.sum()), 1e-300)
        share[share <= floor] = np.nan
        ax.plot(rad, share, marker=".", ms=3, label=str(label))
    ax.set_yscale("log")
    ax.set_xlabel("frequency radius (distance to DC, FFT bins)")
    ax.set_ylabel("ring power, normalised" + ("" if include_dc else " (no DC)"))
    if radius is not None:
        ax.axvline(radius, color="gray", ls="--", lw=1)
        ax.text(radius, ax.get_ylim()[1], f" r = {radius:g}", va="top", fontsize=8, color="gray")
    if title:
        ax.set_title(title)
    # beside the axes, not inside: perturbation spectra rise where image spectra fall, and no corner stays free
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_loss_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], keys: str | Sequence[str] = "loss",
                     title: str | None = None, logy: bool = False):
    """Training curves from per-epoch histories: ``{"simclr": [{"epoch": 1, "loss": 5.2, ...}, ...], ...}``.

    One panel per key in ``keys`` (e.g. ``("loss", "loss_ps")``), one line per run; entries that lack
    a key are skipped. This is the format :func:`~advcl_lite.pretrain.pretrain` saves as ``history.json``.
    """
    plt = _plt()
    keys = [keys] if isinstance(keys, str) else list(keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        drawn = 0
        for name, hist in histories.items():
            pts = [(h.get("epoch", i + 1), h[key]) for i, h in enumerate(hist) if key in h]
            if pts:
                e, v = zip(*pts)
                ax.plot(e, v, marker="o", ms=3, label=str(name))
                drawn += 1
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        if logy:
            ax.set_yscale("log")
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no run records {key!r}", transform=ax.transAxes, ha="center")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@torch.no_grad()
def _probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    with model_mode(model, "eval"):          # every submodule's own flag comes back afterwards
        return torch.softmax(model(x.to(dev)).float(), 1).cpu()


def plot_adversarial_panel(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                           classes: Sequence[str], k: int = 3, amplify: float | None = None, max_rows: int = 6):
    """Image | adversarial image | amplified perturbation | top-k class probabilities, one row per image.

    ``model`` maps ``(N, 3, H, W)`` [0, 1] images to logits (it is run in eval mode, then its mode is
    restored); ``x``, ``x_adv``: ``(N, 3, H, W)`` in [0, 1]; ``y``: ``(N,)`` true labels; ``classes``: names.
    The perturbation ``x_adv - x`` is drawn as ``0.5 + amplify * delta`` (default ``amplify``: so that the
    largest |delta| reaches the full range). The bars are the model's top-``k`` probabilities on the
    clean (light) and adversarial (dark) image for the adversarial top-k classes; the true class is green.
    """
    plt = _plt()
    x, x_adv = _as_batch(x, "x")[:max_rows], _as_batch(x_adv, "x_adv")[:max_rows]
    y = torch.as_tensor(y).cpu()[:max_rows]
    if x.shape != x_adv.shape or len(y) != len(x):
        raise ValueError(f"x {tuple(x.shape)}, x_adv {tuple(x_adv.shape)} and y ({len(y)}) must match")
    k = min(k, len(classes))
    p_clean, p_adv = _probs(model, x), _probs(model, x_adv)
    delta = x_adv - x
    linf = float(delta.abs().max())
    amp = amplify if amplify is not None else (0.5 / linf if linf > 0 else 1.0)
    n = len(x)
    fig, axes = plt.subplots(n, 4, figsize=(9.5, 2.0 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    for i in range(n):
        a0, a1, a2, a3 = axes[i]
        pc, pa = p_clean[i], p_adv[i]
        a0.imshow(display_images(x[i], False)[0])
        a0.set_title(f"{classes[int(y[i])]} (p={pc[int(y[i])]:.2f})", fontsize=8)
        a1.imshow(display_images(x_adv[i], False)[0])
        pred = int(pa.argmax())
        a1.set_title(f"adversarial: {classes[pred]}", fontsize=8, color="tab:green" if pred == int(y[i]) else "tab:red")
        a2.imshow((0.5 + amp * delta[i]).clamp(0, 1).permute(1, 2, 0).numpy())
        a2.set_title(f"delta x{amp:.0f} (Linf {255 * float(delta[i].abs().max()):.1f}/255)", fontsize=8)
        for a in (a0, a1, a2):
            a.set_axis_off()
        top = pa.topk(k).indices.tolist()
        ypos = np.arange(k)
        colors = ["tab:green" if c == int(y[i]) else "tab:red" for c in top]
        a3.barh(ypos + 0.2, [float(pc[c]) for c in top], height=0.4, color=colors, alpha=0.35, label="clean")
        a3.barh(ypos - 0.2, [float(pa[c]) for c in top], height=0.4, color=colors, label="adversarial")
        a3.set_yticks(ypos, [classes[c] for c in top], fontsize=8)
        a3.invert_yaxis()
        a3.set_xlim(0, 1)
        a3.tick_params(axis="x", labelsize=7)
        if i == 0:
            a3.set_title(f"top-{k} probabilities", fontsize=8)
            a3.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig
