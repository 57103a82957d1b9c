"""Frequency-domain views: radial masks, high/low-pass filters, power spectra.

AdvCL's fourth view ``h`` is the high-frequency component (HFC) of the clean
view ``o``: per channel, ``h = Re(IFFT2(FFT2(o) * (1 - M_r)))`` where ``M_r`` is
1 on the frequencies closer than ``r`` to DC (the centred disk). The low-frequency
component (LFC) uses ``M_r`` itself, so ``HFC + LFC = image`` exactly.

Masks are built vectorised from ``torch.fft.fftfreq`` directly in the FFT's
native (unshifted) layout, which equals shift -> mask -> unshift, and are
cached per (size, radius, device, dtype).
"""
from __future__ import annotations

from functools import lru_cache

import torch


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")


def _check_radius(r: float, name: str = "r") -> None:
    if r < 0:
        raise ValueError(f"radius {name}={r} must be >= 0 (0 keeps nothing in the disk; the original uses 8 for 32x32)")


@lru_cache(maxsize=64)
def _freq_radius(h: int, w: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, d=1.0 / h, device=device, dtype=torch.float64)
    fx = torch.fft.fftfreq(w, d=1.0 / w, device=device, dtype=torch.float64)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).to(dtype)


def frequency_radius(h: int, w: int | None = None, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Distance of every FFT bin to DC, in the unshifted FFT layout. Shape (H, W)."""
    return _freq_radius(h, w or h, str(torch.device(device)), dtype)


@lru_cache(maxsize=128)
def _mask(h: int, w: int, r_in: float, r_out: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    d = _freq_radius(h, w, device, torch.float64)
    return ((d >= r_in) & (d < r_out)).to(dtype)


def radial_mask(size: int | tuple[int, int], r: float, device="cpu", dtype=torch.float32,
                centered: bool = False) -> torch.Tensor:
    """M_r: 1 where the distance to DC is < r. Shape (H, W).

    ``centered=True`` returns it in fftshift layout (DC in the middle), for plotting.
    """
    _check_radius(r)
    h, w = (size, size) if isinstance(size, int) else size
    m = _mask(h, w, 0.0, float(r), str(torch.device(device)), dtype)
    return torch.fft.fftshift(m) if centered else m


def band_mask(size: int | tuple[int, int], r_in: float, r_out: float, device="cpu", dtype=torch.float32,
              centered: bool = False) -> torch.Tensor:
    """1 on the ring r_in <= distance to DC < r_out. Shape (H, W)."""
    _check_radius(r_in, "r_in")
    _check_radius(r_out, "r_out")
    if r_out < r_in:
        raise ValueError(f"band needs r_in <= r_out, got r_in={r_in}, r_out={r_out}")
    h, w = (size, size) if isinstance(size, int) else size
    m = _mask(h, w, float(r_in), float(r_out), str(torch.device(device)), dtype)
    return torch.fft.fftshift(m) if centered else m


def apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Re(IFFT2(FFT2(x) * mask)) per channel, in x's float dtype (half types use float32)."""
    _check_images(x)
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    spec = torch.fft.fft2(work)
    out = torch.fft.ifft2(spec * mask.to(device=work.device, dtype=work.dtype)).real
    return out.to(x.dtype) if x.is_floating_point() else out


def high_pass(x: torch.Tensor, r: float) -> torch.Tensor:
    """HFC view: remove frequencies closer than ``r`` to DC (DC included). Not clipped; zero-mean per channel when r > 0."""
    _check_images(x)
    return apply_mask(x, 1.0 - radial_mask(tuple(x.shape[-2:]), r, x.device, torch.float64))


def low_pass(x: torch.Tensor, r: float) -> torch.Tensor:
    """LFC view: keep only the frequencies closer than ``r`` to DC."""
    _check_images(x)
    return apply_mask(x, radial_mask(tuple(x.shape[-2:]), r, x.device, torch.float64))


def band_pass(x: torch.Tensor, r_in: float, r_out: float) -> torch.Tensor:
    """Keep only the ring r_in <= distance < r_out."""
    _check_images(x)
    return apply_mask(x, band_mask(tuple(x.shape[-2:]), r_in, r_out, x.device, torch.float64))


def scaled_radius(image_size: int, r32: float = 8.0) -> float:
    """The original's r = 8 for 32x32 (``pretraining_advCL.py --radius``), scaled in proportion to the image size."""
    return r32 * image_size / 32.0


class HighPass:
    """HFC view as a transform: (N, C, H, W) or (C, H, W) float -> same shape, unclipped."""

    def __init__(self, radius: float = 8.0):
        _check_radius(radius)
        self.radius = float(radius)

    def __call__(self, x: torch.Tensor, g=None) -> torch.Tensor:
        return high_pass(x, self.radius)

    def __repr__(self) -> str:
        return f"HighPass(radius={self.radius:g})"


class LowPass(HighPass):
    """LFC view as a transform: (N, C, H, W) or (C, H, W) float -> same shape."""

    def __call__(self, x: torch.Tensor, g=None) -> torch.Tensor:
        return low_pass(x, self.radius)

    def __repr__(self) -> str:
        return f"LowPass(radius={self.radius:g})"


def energy_fraction(x: torch.Tensor, r: float) -> torch.Tensor:
    """Fraction of the (non-DC) spectral energy that lies inside the disk of radius r, per image. Shape (N,)."""
    _check_images(x)
    x4 = x if x.ndim == 4 else x[None]
    p = torch.fft.fft2(x4.double()).abs().pow(2).sum(1)      # (N, H, W)
    d = frequency_radius(*x4.shape[-2:], device=x4.device, dtype=torch.float64)
    nondc = d > 0
    inside = (d < r) & nondc
    return (p * inside).sum((-2, -1)) / (p * nondc).sum((-2, -1)).clamp_min(1e-20)


def radial_power_spectrum(x: torch.Tensor, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum of images or perturbations.

    Averages |FFT2|^2 over the batch and channels, then over rings of integer
    radius (bin k holds k - 0.5 <= distance < k + 0.5). Returns ``(radii, power)``,
    both 1-D of length round(max radius) + 1; with ``normalize`` the power sums to 1.
    """
    _check_images(x)
    x4 = x if x.ndim == 4 else x[None]
    p = torch.fft.fft2(x4.double()).abs().pow(2).mean((0, 1))        # (H, W)
    d = frequency_radius(*x4.shape[-2:], device=x4.device, dtype=torch.float64)
    bins = torch.round(d).long().flatten()
    nb = int(bins.max()) + 1
    total = torch.zeros(nb, dtype=torch.float64, device=x4.device).scatter_add_(0, bins, p.flatten())
    count = torch.zeros(nb, dtype=torch.float64, device=x4.device).scatter_add_(0, bins, torch.ones_like(p.flatten()))
    power = total / count.clamp_min(1)
    if normalize:
        power = power / power.sum().clamp_min(1e-30)
    return torch.arange(nb, device=x4.device, dtype=torch.float64), power


# --------------------------------------------------------------------------- bands

def size2(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return h, w


def band_filter(size: int | tuple[int, int], band="low", radius: float = 8.0, device="cpu") -> torch.Tensor | None:
    """The FFT mask (unshifted layout, (H, W), float64) of a band; ``None`` for ``"full"``.

    ``band``: ``"full"`` (no restriction), ``"low"`` (``d < radius``, DC included),
    ``"high"`` (``d >= radius``, AdvCL's HFC), or a ring ``(r_in, r_out)`` (``r_in <= d < r_out``).
    """
    h, w = size2(size)
    if isinstance(band, str):
        if band == "full":
            return None
        if band == "low":
            return radial_mask((h, w), radius, device, torch.float64)
        if band == "high":
            return 1.0 - radial_mask((h, w), radius, device, torch.float64)
    elif isinstance(band, (tuple, list)) and len(band) == 2:
        return band_mask((h, w), float(band[0]), float(band[1]), device, torch.float64)
    raise ValueError(f"band must be 'full', 'low', 'high' or a ring (r_in, r_out), got {band!r}")


def band_name(band) -> str:
    return band if isinstance(band, str) else f"{float(band[0]):g}-{float(band[1]):g}"


def out_of_band_fraction(delta: torch.Tensor, band="low", radius: float = 8.0) -> torch.Tensor:
    """Per image, the share of ``delta``'s spectral energy (DC included) outside ``band``. Shape (N,)."""
    d4 = delta if delta.ndim == 4 else delta[None]
    mask = band_filter(tuple(d4.shape[-2:]), band, radius, d4.device)
    if mask is None:
        return torch.zeros(len(d4), dtype=torch.float64, device=d4.device)
    p = torch.fft.fft2(d4.double()).abs().pow(2).sum(1)
    return (p * (1 - mask)).sum((-2, -1)) / p.sum((-2, -1)).clamp_min(1e-30)
