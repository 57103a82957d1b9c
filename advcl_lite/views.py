"""Batched view transforms: SimCLR's view, the crop-flip view o, and several views at once.

They work on whole batches (N, 3, H, W) in [0, 1], on any device, drawing their randomness from
one CPU generator ``g`` (so a run is reproducible on any device and a resumed run draws the same
views); the data path then stays a small fraction of an AdvCL step (``benchmarks/data_path.py``).

* :func:`simclr_view` - the SimCLR augmentation of ``pretraining_advCL.py`` (and ACL's code);
* :func:`crop_flip` - AdvCL's "original" view o: RandomCrop(padding=4) + horizontal flip;
* :func:`dynamic_view` - DynACL's view, whose augmentations scale with a strength in [0, 1];
* :class:`MultiView` - a list of views of one batch, drawn in a fixed order
  (``MultiView(simclr_view, simclr_view, crop_flip)(x, g)`` -> ``[t1, t2, o]``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=g).to(device) * (hi - lo) + lo


def random_flip(x: torch.Tensor, p: float = 0.5, g: torch.Generator | None = None) -> torch.Tensor:
    """Horizontal flip of each image with probability ``p``. (N, C, H, W) -> same."""
    flip = (torch.rand(x.shape[0], generator=g) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, padding: int = 4, g: torch.Generator | None = None) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding, per image. (N, C, H, W) -> same."""
    n, c, h, w = x.shape
    xp = F.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=g).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=g).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return xp[torch.arange(n, device=x.device)[:, None, None, None],
              torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


def crop_flip(x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    """The AdvCL "original" view o: RandomCrop(padding=4) + horizontal flip."""
    return random_flip(random_crop(x, 4, g), 0.5, g)


def random_resized_crop(x: torch.Tensor, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                        g: torch.Generator | None = None) -> torch.Tensor:
    """RandomResizedCrop to the input size, per image, by bilinear resampling.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio); a box that does
    not fit is clamped to the image (torchvision retries instead).
    """
    n, _, h, w = x.shape
    dev = x.device
    area = _uniform(n, *scale, g, dev)
    logr = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), g, dev)
    ar = torch.exp(logr)
    cw = torch.sqrt(area * ar).clamp(max=1.0)   # crop width as a fraction of the image
    ch = torch.sqrt(area / ar).clamp(max=1.0)
    cx = (torch.rand(n, generator=g).to(dev) * 2 - 1) * (1 - cw)   # centre in [-1, 1] coords
    cy = (torch.rand(n, generator=g).to(dev) * 2 - 1) * (1 - ch)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = cw, cx
    theta[:, 1, 1], theta[:, 1, 2] = ch, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g_, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    v = maxc
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    dc = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / dc, (maxc - g_) / dc, (maxc - b) / dc
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g_, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, v], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x[:, 0], x[:, 1], x[:, 2]
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = torch.stack([v, q, p, p, t, v], 1).gather(1, i[:, None]).squeeze(1)
    g_ = torch.stack([t, v, v, q, p, p], 1).gather(1, i[:, None]).squeeze(1)
    b = torch.stack([p, p, t, v, v, q], 1).gather(1, i[:, None]).squeeze(1)
    return torch.stack([r, g_, b], 1)


def color_jitter(x: torch.Tensor, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                 g: torch.Generator | None = None) -> torch.Tensor:
    """ColorJitter per image (factors drawn per image; fixed order b, c, s, h)."""
    n, dev = x.shape[0], x.device
    b = _uniform(n, 1 - brightness, 1 + brightness, g, dev)[:, None, None, None]
    c = _uniform(n, 1 - contrast, 1 + contrast, g, dev)[:, None, None, None]
    s = _uniform(n, 1 - saturation, 1 + saturation, g, dev)[:, None, None, None]
    hshift = _uniform(n, -hue, hue, g, dev)[:, None, None]
    x = (x * b).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    gray = _gray(x)
    x = ((x - gray) * s + gray).clamp(0, 1)
    hsv = _rgb_to_hsv(x)
    hsv = torch.stack([(hsv[:, 0] + hshift) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    return _hsv_to_rgb(hsv).clamp(0, 1)


def simclr_view(x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    """One SimCLR view per image (as ``pretraining_advCL.py``'s transform): RandomResizedCrop(scale 0.2-1), flip,
    ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, RandomGrayscale p=0.2. (N,3,H,W) in [0,1] -> same."""
    n = x.shape[0]
    x = random_flip(random_resized_crop(x, g=g), 0.5, g)
    jit = (torch.rand(n, generator=g) < 0.8).to(x.device)[:, None, None, None]
    x = torch.where(jit, color_jitter(x, g=g), x)
    gray = (torch.rand(n, generator=g) < 0.2).to(x.device)[:, None, None, None]
    return torch.where(gray, _gray(x).expand_as(x), x)


def dynamic_view(x: torch.Tensor, g: torch.Generator | None = None, strength: float = 1.0) -> torch.Tensor:
    """DynACL's view at augmentation strength ``s`` in [0, 1] (``reload()`` in PKU-ML/DYNACL ``train_DynACL.py``):
    RandomResizedCrop(scale 1 - 0.9 s to 1), flip (p 0.5, never scaled), ColorJitter(0.4 s, 0.4 s, 0.4 s, 0.1 s)
    with p = 0.8 s, RandomGrayscale p = 0.2 s. At s = 1 the crop reaches 10 % of the image (SimCLR's view here:
    20 %); at s = 0 the view is a flip of the image."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"augmentation strength must be in [0, 1], got {strength}")
    s, n = float(strength), x.shape[0]
    x = random_flip(random_resized_crop(x, scale=(1.0 - 0.9 * s, 1.0), g=g), 0.5, g)
    jit = (torch.rand(n, generator=g) < 0.8 * s).to(x.device)[:, None, None, None]
    x = torch.where(jit, color_jitter(x, 0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s, g=g), x)
    gray = (torch.rand(n, generator=g) < 0.2 * s).to(x.device)[:, None, None, None]
    return torch.where(gray, _gray(x).expand_as(x), x)


class DynamicView:
    """:func:`dynamic_view` at a strength that the training loop sets (``view.strength = s``)."""

    def __init__(self, strength: float = 1.0):
        self.strength = float(strength)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        return dynamic_view(x, g, self.strength)

    def __repr__(self) -> str:
        return f"dynamic_view(strength={self.strength:g})"


class MultiView:
    """Turn a batch into a list of views: ``MultiView(simclr_view, simclr_view, crop_flip)(x)``."""

    def __init__(self, *transforms):
        self.transforms = transforms

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> list[torch.Tensor]:
        return [t(x, g=g) for t in self.transforms]

    def __repr__(self) -> str:
        return f"MultiView({', '.join(getattr(t, '__name__', repr(t)) for t in self.transforms)})"
