"""Spectra of adversarial perturbations, Fourier heat maps and band-limited attacks.

Where in frequency does an adversarial perturbation put its energy, and which
frequencies is a classifier sensitive to? A *classifier* here is any
``nn.Module`` that maps [0, 1] images ``(N, 3, H, W)`` to logits (e.g. a
:class:`~advcl_lite.models.Classifier`: an exported encoder plus a linear head).

* :func:`perturbation_spectrum` - PGD against the classifier, then the radially
  averaged power spectrum of ``delta = x_adv - x`` (:func:`high_frequency_fraction`
  gives the share of its energy at distance >= r from DC).
* :func:`fourier_heat_map` - Yin et al. (2019), "A Fourier perspective on model
  robustness": the error rate under ``x + r * v * U_ij`` for every frequency
  ``(i, j)``, with ``U_ij`` a real Fourier basis image of unit L2 norm
  (:func:`fourier_basis`), ``v`` the norm and ``r`` a random sign.
* :func:`~advcl_lite.data.class_interleaved` (re-exported here) - test images in class
  order 0, 1, ..., 9, 0, 1, ... so that any prefix ``x[:k]`` is class-balanced (each
  analysis uses a prefix).
* :func:`accuracy_under_band_attacks` - accuracy against full / low-only / high-only
  perturbations over a list of eps, made by :class:`~advcl_lite.attacks.BandLimitedPGD`
  (PGD restricted to ``d < radius`` or ``d >= radius``; the bands are
  :func:`~advcl_lite.frequency.band_filter`).

Frequency conventions (the same as :mod:`advcl_lite.frequency`): ``(i, j)`` are
signed integer frequencies along height and width, ``i`` in ``[-H//2, (H-1)//2]``;
``d = sqrt(i^2 + j^2)`` is the distance to DC. Maps returned here are in
*fftshift* layout: entry ``[H//2 + i, W//2 + j]`` belongs to frequency ``(i, j)``,
DC in the centre. AdvCL's HFC view (radius 8 at 32x32) keeps exactly the
frequencies with ``d >= 8``: the "high" band here.

The plots for this stage (heat maps, accuracy vs eps per band, and
:func:`~advcl_lite.viz.plot_frequency_explorer`, the figure behind notebook 05's widget) are in
:mod:`advcl_lite.viz`; spectra curves are :func:`advcl_lite.viz.plot_radial_spectra`
(pass it ``{name: perturbation_spectrum(...)}``).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from .attacks import PGD, BandLimitedPGD, check_attack_params, check_inputs
from .data import class_interleaved  # noqa: F401 - re-exported for the spectra notebook
from .frequency import (band_filter, band_name, energy_fraction, frequency_radius, out_of_band_fraction,
                        radial_power_spectrum, size2)
from .runtime import model_device, model_mode, progress_bar, seeded

BANDS = ("full", "low", "high")


# --------------------------------------------------------------------------- helpers

def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    check_inputs(x)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels")


# --------------------------------------------------------------------------- perturbation spectra

def pgd_perturbations(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255,
                      alpha: float = 2 / 255, steps: int = 10, *, batch_size: int = 256, device=None,
                      seed: int | None = 0) -> torch.Tensor:
    """``delta = PGD(x) - x`` for every image (L-inf PGD on CE, random start, model in eval mode).

    Input ``x`` (N, C, H, W) in [0, 1], labels ``y`` (N,); returns delta (N, C, H, W) on the CPU.
    """
    _check_xy(x, y)
    dev = model_device(model, device)
    attack = PGD(model, eps, alpha, steps)
    out = []
    with seeded(seed, dev):
        for s in range(0, len(x), batch_size):
            xb, yb = x[s:s + batch_size].to(dev), y[s:s + batch_size].to(dev)
            out.append((attack(xb, yb) - xb).cpu())
    return torch.cat(out) if out else torch.zeros_like(x)


def perturbation_spectrum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255,
                          alpha: float = 2 / 255, steps: int = 10, *, batch_size: int = 256, device=None,
                          seed: int | None = 0, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum of PGD perturbations against ``model``.

    Runs :func:`pgd_perturbations` and passes delta to
    :func:`~advcl_lite.frequency.radial_power_spectrum`: bin ``k`` is the mean of
    ``|FFT2(delta)|^2`` over the batch, the channels and the ring ``k - 0.5 <= d < k + 0.5``.
    Returns ``(radii, power)``, 1-D float64 (``normalize``: power sums to 1).
    """
    delta = pgd_perturbations(model, x, y, eps, alpha, steps, batch_size=batch_size, device=device, seed=seed)
    return radial_power_spectrum(delta, normalize=normalize)


def high_frequency_fraction(delta: torch.Tensor, radius: float = 8.0) -> float:
    """Share of the non-DC spectral energy of ``delta`` at distance >= ``radius`` from DC,
    averaged over images (AdvCL's HFC view keeps exactly these frequencies)."""
    return float(1.0 - energy_fraction(delta, radius).mean())


def power_spectrum_2d(x: torch.Tensor, centered: bool = True) -> torch.Tensor:
    """Mean ``|FFT2(x)|^2`` over the batch and channels, shape (H, W); fftshift layout if ``centered``."""
    x4 = x if x.ndim == 4 else x[None]
    p = torch.fft.fft2(x4.double()).abs().pow(2).mean((0, 1))
    return torch.fft.fftshift(p) if centered else p


# --------------------------------------------------------------------------- Fourier basis and heat map

def _basis_stack(h: int, w: int, freqs: torch.Tensor, norm: float, device, dtype) -> torch.Tensor:
    """Real Fourier basis images for frequencies ``freqs`` (F, 2) -> (F, H, W), each of L2 norm ``norm``."""
    yy = torch.arange(h, device=device, dtype=torch.float64)[:, None]
    xx = torch.arange(w, device=device, dtype=torch.float64)[None, :]
    fi = freqs[:, 0].to(device=device, dtype=torch.float64)[:, None, None]
    fj = freqs[:, 1].to(device=device, dtype=torch.float64)[:, None, None]
    u = torch.cos(2 * math.pi * (fi * yy / h + fj * xx / w))
    u = u / u.flatten(1).norm(dim=1)[:, None, None]
    return (u * norm).to(dtype)


def fourier_basis(size: int | tuple[int, int], i: int, j: int, norm: float = 1.0, *, channels: int | None = None,
                  device="cpu", dtype=torch.float32) -> torch.Tensor:
    """The real Fourier basis image ``U_ij`` of L2 norm ``norm``.

    ``U_ij(y, x) = c * cos(2 pi (i y / H + j x / W))``: its FFT is non-zero only at
    ``(i, j)`` and the conjugate frequency ``(-i, -j)`` (one bin when they coincide,
    e.g. DC). Shape (H, W), or (channels, H, W) with the same image in every channel,
    each channel of norm ``norm``.
    """
    h, w = size2(size)
    if norm < 0:
        raise ValueError(f"norm={norm} must be >= 0")
    u = _basis_stack(h, w, torch.tensor([[int(i), int(j)]]), float(norm), device, dtype)[0]
    return u if channels is None else u.expand(int(channels), h, w).clone()


def heat_map_frequencies(size: int | tuple[int, int], max_freq: int | None = None, stride: int = 1) -> torch.Tensor:
    """The signed frequencies ``(i, j)`` a heat map evaluates, one per conjugate pair: (F, 2) long.

    Keeps ``i`` and ``j`` that are multiples of ``stride`` (DC always included) with
    ``|i|, |j| <= max_freq``; of each pair ``(i, j)``, ``(-i, -j)`` only one is listed,
    since both give the same basis image.
    """
    h, w = size2(size)
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride={stride} must be a whole number >= 1")
    if max_freq is not None and max_freq < 0:
        raise ValueError(f"max_freq={max_freq} must be >= 0")
    fi = [i for i in range(-(h // 2), (h - 1) // 2 + 1) if i % stride == 0 and (max_freq is None or abs(i) <= max_freq)]
    fj = [j for j in range(-(w // 2), (w - 1) // 2 + 1) if j % stride == 0 and (max_freq is None or abs(j) <= max_freq)]
    keep = []
    for i in fi:
        for j in fj:
            key, mirror = (i % h, j % w), ((-i) % h, (-j) % w)
            if key <= mirror:
                keep.append((i, j))
    return torch.tensor(keep, dtype=torch.long).reshape(-1, 2)


def fourier_heat_map(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: float = 4.0, *,
                     max_freq: int | None = None, stride: int = 1, sign: str = "channel", batch_size: int = 512,
                     device=None, seed: int | None = 0, progress: bool | None = None,
                     per_image: bool = False) -> torch.Tensor:
    """Fourier heat map (Yin et al. 2019): error rate under a single Fourier-basis perturbation.

    For every evaluated frequency ``(i, j)`` and every image: ``clip(x + r * norm * U_ij, 0, 1)``
    with ``U_ij = fourier_basis(size, i, j)`` (unit L2 norm per channel) and ``r`` a random
    sign, drawn per image and channel (``sign="channel"``, as Yin et al.) or per image
    (``"image"``). The error rate counts every image classified wrongly after the
    perturbation (clean mistakes included).

    Returns a float tensor (H, W) in fftshift layout (DC in the centre, entry
    ``[H//2 + i, W//2 + j]`` for frequency ``(i, j)``). Only one frequency of each
    conjugate pair is evaluated and the map is filled symmetrically; with ``stride > 1``
    or ``max_freq``, the frequencies not evaluated (see :func:`heat_map_frequencies`) are
    NaN. Cost: ``len(heat_map_frequencies(...)) * N`` forward passes (about H*W/2 * N at
    stride 1), batched ``batch_size`` at a time, model in eval mode. ``per_image=True`` returns the
    (N, H, W) map of each image's errors (0 or 1) instead of their mean, e.g. for maps per class.
    """
    _check_xy(x, y)
    if sign not in ("channel", "image"):
        raise ValueError(f"sign must be 'channel' or 'image', got {sign!r}")
    if norm < 0:
        raise ValueError(f"norm={norm} must be >= 0 (Yin et al. use 4 for CIFAR-10 in [0, 1])")
    dev = model_device(model, device)
    n, c, h, w = x.shape
    freqs = heat_map_frequencies((h, w), max_freq, stride)
    errors = torch.zeros(len(freqs), n, dtype=torch.float64)
    g = torch.Generator().manual_seed(0 if seed is None else int(seed))
    per_img = max(1, min(n, batch_size))
    f_chunk = max(1, batch_size // per_img)
    chunks = [(s, f) for s in range(0, n, per_img) for f in range(0, len(freqs), f_chunk)]
    with torch.no_grad(), model_mode(model, "eval"):
        bar = progress_bar(chunks, desc="Fourier heat map", progress=progress)
        for s, f in bar:
            xb, yb = x[s:s + per_img].to(dev), y[s:s + per_img].to(dev)
            fr = freqs[f:f + f_chunk]
            u = _basis_stack(h, w, fr, float(norm), dev, xb.dtype)                        # (F, H, W)
            shape = (len(fr), len(xb), c if sign == "channel" else 1)
            r = (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(dev, xb.dtype)       # (F, B, C|1)
            xp = (xb[None] + r[..., None, None] * u[:, None, None]).clamp(0, 1)          # (F, B, C, H, W)
            pred = model(xp.flatten(0, 1)).argmax(1).view(len(fr), len(xb))
            errors[f:f + len(fr), s:s + len(xb)] = (pred != yb[None]).double().cpu()
    per = errors.T.float()                                                        # (N, F)
    heat = torch.full((n, h, w), float("nan"))
    ci, cj = h // 2, w // 2
    for k, (i, j) in enumerate(freqs.tolist()):
        heat[:, (ci + i) % h, (cj + j) % w] = per[:, k]
        heat[:, (ci - i) % h, (cj - j) % w] = per[:, k]
    if per_image:
        return heat
    return heat.mean(0) if n else torch.full((h, w), float("nan"))


def heat_map_summary(heat: torch.Tensor, radius: float = 8.0) -> dict[str, float]:
    """Mean error of a heat map overall, inside (``d < radius``) and outside (``d >= radius``) the disk
    (NaN entries, i.e. frequencies not evaluated, are ignored)."""
    h, w = heat.shape
    d = torch.fft.fftshift(frequency_radius(h, w, dtype=torch.float64)).float()
    low = d < radius

    def mean(m: torch.Tensor) -> float:
        v = heat[m & ~torch.isnan(heat)]
        return float(v.mean()) if v.numel() else float("nan")
    return {"mean": mean(torch.ones_like(low)), "low": mean(low), "high": mean(~low)}


# --------------------------------------------------------------------------- band-limited attacks

def accuracy_under_band_attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                eps_list: Iterable[float] = (2 / 255, 4 / 255, 8 / 255), radius: float = 8.0, *,
                                bands: Sequence = BANDS, alpha: float | None = None, steps: int = 10,
                                refine: int = 10, batch_size: int = 256, device=None, seed: int | None = 0,
                                progress: bool | None = None) -> list[dict]:
    """Accuracy against full / low-only / high-only PGD for every eps: a list of records.

    ``accuracy`` counts an image as correct only if it is classified correctly both
    clean and under the attack, so it never exceeds ``clean_accuracy`` (and equals it at
    eps = 0). ``alpha`` defaults to ``eps / 4`` (2/255 at 8/255). Each record:
    ``band, eps, eps_255, radius, steps, n, clean_accuracy, accuracy, out_of_band``
    (the mean share of delta's energy outside the band, see :class:`BandLimitedPGD`).
    """
    _check_xy(x, y)
    eps_list = [float(e) for e in eps_list]
    for e in eps_list:
        check_attack_params(e, alpha if alpha is not None else e / 4, steps)
    for b in bands:
        band_filter(8, b, radius)
    dev = model_device(model, device)
    n = len(x)
    clean_ok = torch.zeros(n, dtype=torch.bool)
    with torch.no_grad(), model_mode(model, "eval"):
        for s in range(0, n, batch_size):
            pred = model(x[s:s + batch_size].to(dev)).argmax(1).cpu()
            clean_ok[s:s + batch_size] = pred == y[s:s + batch_size].cpu()
    clean_acc = float(clean_ok.float().mean()) if n else float("nan")
    jobs = [(e, b) for e in eps_list for b in bands]
    records = []
    with seeded(seed, dev):
        for e, b in progress_bar(jobs, desc="band attacks", progress=progress):
            ok = clean_ok.clone()
            leak = torch.zeros(n, dtype=torch.float64)
            if e > 0:
                step = alpha if alpha is not None else e / 4
                attack = BandLimitedPGD(model, e, step, steps, b, radius, refine=refine)
                for s in range(0, n, batch_size):
                    xb, yb = x[s:s + batch_size].to(dev), y[s:s + batch_size].to(dev)
                    x_adv = attack(xb, yb)
                    with torch.no_grad(), model_mode(model, "eval"):
                        adv_ok = (model(x_adv).argmax(1) == yb).cpu()
                    ok[s:s + batch_size] &= adv_ok
                    leak[s:s + batch_size] = out_of_band_fraction(x_adv - xb, b, radius).cpu()
            records.append({"band": band_name(b), "eps": e, "eps_255": e * 255, "radius": float(radius),
                            "steps": int(steps), "n": n, "clean_accuracy": clean_acc,
                            "accuracy": float(ok.float().mean()) if n else float("nan"),
                            "out_of_band": float(leak.mean()) if n else float("nan")})
    return records


# --------------------------------------------------------------------------- margins along frequency subspaces

DCT_BANDS = ("low", "mid", "high")


def dct_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (n x n): ``D @ v`` are the DCT coefficients of ``v``, ``D.T`` inverts."""
    k = torch.arange(n, dtype=dtype)[:, None]
    i = torch.arange(n, dtype=dtype)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def dct_band_mask(size: int | tuple[int, int], band: str, block: int | None = None) -> torch.Tensor:
    """The DCT coefficients ``(u, v)`` of one subspace, as a bool (H, W) mask: a ``block`` x ``block`` square on
    the diagonal of the DCT plane (default a quarter of the side: 8 at 32 px), at its low-frequency corner
    (``low``), its centre (``mid``) or its high-frequency corner (``high``), as Ortiz-Jimenez et al. (2020),
    "Hold me tight! Influence of discriminative features on deep network boundaries", slide such blocks."""
    h, w = size2(size)
    b = block or max(1, min(h, w) // 4)
    if band not in DCT_BANDS or not 1 <= b <= min(h, w):
        raise ValueError(f"band must be one of {DCT_BANDS} and block in [1, {min(h, w)}], got {band!r}, {block}")
    start = {"low": (0, 0), "mid": ((h - b) // 2, (w - b) // 2), "high": (h - b, w - b)}[band]
    m = torch.zeros(h, w, dtype=torch.bool)
    m[start[0]:start[0] + b, start[1]:start[1] + b] = True
    return m


def _dct_projector(h: int, w: int, mask: torch.Tensor, device, dtype):
    dh, dw = dct_matrix(h).to(device, dtype), dct_matrix(w).to(device, dtype)
    m = mask.to(device, dtype)

    def project(v: torch.Tensor) -> torch.Tensor:        # (..., H, W): onto the span of the masked DCT basis
        return dh.T @ ((dh @ v @ dw.T) * m) @ dw
    return project


def subspace_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bands: Sequence[str] = DCT_BANDS, *,
                     block: int | None = None, candidates: int = 10, max_iter: int = 50, overshoot: float = 0.02,
                     batch_size: int = 64, device=None, progress: bool | None = None) -> dict[str, torch.Tensor]:
    """The margin along frequency subspaces ("Hold me tight!"): per image and DCT band (:func:`dct_band_mask`,
    every channel), the L2 norm of the smallest perturbation *inside that subspace* that changes the
    prediction from ``y``, found by DeepFool restricted to the subspace (gradients projected onto it; the
    ``candidates`` classes of largest logit compete; exact in one step for a linear model). Small margins in
    a band mean the decision boundary is close along those frequencies. Pixels are not clipped to [0, 1]:
    the margin is a distance to the boundary, not an attack. An image whose prediction is not ``y`` to begin
    with has margin 0; one that does not flip within ``max_iter`` steps has ``inf``.

    Returns ``{band: (N,) float tensor}``. Cost per band: up to ``max_iter`` x ``candidates`` backward passes
    per image (a few iterations for most images)."""
    _check_xy(x, y)
    dev = model_device(model, device)
    n, c, h, w = x.shape
    out = {}
    with model_mode(model, "eval"):
        for band in progress_bar(list(bands), desc="subspace margins", progress=progress):
            project = _dct_projector(h, w, dct_band_mask((h, w), band, block), dev, torch.float32)
            margins = []
            for s in range(0, n, batch_size):
                margins.append(_deepfool_in(model, project, x[s:s + batch_size].to(dev), y[s:s + batch_size].to(dev),
                                            candidates, max_iter, overshoot))
            out[band] = torch.cat(margins) if margins else torch.zeros(0)
    return out


def _deepfool_in(model, project, x, y, candidates, max_iter, overshoot) -> torch.Tensor:
    b = len(x)
    r_total = torch.zeros_like(x)
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    margin = torch.full((b,), float("inf"), device=x.device)
    with torch.no_grad():
        first = model(x)
    k = min(candidates, first.shape[1])
    others = first.topk(k, dim=1).indices                     # the classes that compete, fixed per image
    wrong = first.argmax(1) != y
    margin[wrong], active[wrong] = 0.0, False
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        xa = (x + (1 + overshoot) * r_total).detach().requires_grad_(True)
        logits = model(xa)
        flipped = (logits.argmax(1) != y) & active
        margin[flipped] = r_total[flipped].flatten(1).norm(dim=1)
        active &= ~flipped
        if not bool(active.any()):
            break
        fy = logits.gather(1, y[:, None]).squeeze(1)
        best_d = torch.full((b,), float("inf"), device=x.device)
        best_r = torch.zeros_like(x)
        for j in range(k):
            cls = others[:, j]
            diff = logits.gather(1, cls[:, None]).squeeze(1) - fy          # < 0 while y wins
            g = torch.autograd.grad(diff.sum(), xa, retain_graph=j < k - 1)[0]
            pg = project(g)
            norm = pg.flatten(1).norm(dim=1)
            ok = (cls != y) & (norm > 0)
            d = torch.where(ok, diff.detach().abs() / norm.clamp_min(1e-12), torch.full_like(norm, float("inf")))
            better = d < best_d
            step = ((diff.detach().abs() + 1e-6) / norm.clamp_min(1e-12) ** 2)[:, None, None, None] * pg
            best_d = torch.where(better, d, best_d)
            best_r = torch.where(better[:, None, None, None], step, best_r)
        r_total = r_total + best_r * active[:, None, None, None]
    with torch.no_grad():
        last = model(x + (1 + overshoot) * r_total).argmax(1) != y
    done = last & active
    margin[done] = r_total[done].flatten(1).norm(dim=1)
    return margin.detach().cpu()
