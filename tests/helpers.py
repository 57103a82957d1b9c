"""Small models, images and records that several test files use (one definition each)."""
from __future__ import annotations

import torch
import torch.nn as nn

from advcl_lite import spectra as S
from advcl_lite.evaluate import evaluate
from advcl_lite.results import make_record


class LinearProbe2(nn.Module):
    """Two-class linear classifier on a fixed pattern ``w``: logits (s, -s), s = <w, x - 0.5>.

    Its gradient is +-w everywhere, so PGD's perturbation is eps * sign(w), and only
    perturbations with a component along w can change its decision.
    """

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.register_buffer("w", w)
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, x):
        s = ((x - 0.5) * self.w).sum((1, 2, 3)) + 0 * self.anchor
        return torch.stack([s, -s], 1)


def tiny_convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(64, 10)).eval()


def mid_gray_images(n=32, seed=0):
    """Images in [0.25, 0.75]: no perturbation below norm ~4 reaches the [0, 1] box."""
    g = torch.Generator().manual_seed(seed)
    return 0.25 + 0.5 * torch.rand(n, 3, 32, 32, generator=g)


def images_with_saturated_pixels(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    x[:, :, :4] = 1.0
    x[:, :, -4:] = 0.0
    return x


def linear_model_on(i, j):
    """A LinearProbe2 reading the single Fourier basis image (i, j), mid-gray images, its own predictions."""
    m = LinearProbe2(S.fourier_basis(32, i, j, 1.0, channels=3))
    x = mid_gray_images()
    y = m(x).argmax(1)   # labels = its own predictions: clean accuracy 1
    return m, x, y


def example_records(model, test_set):
    """Four result records (SimCLR/AdvCL x SLF/ALF) of ``model`` on 20 test images under PGD-2, with a fake AA."""
    r = evaluate(model, test_set, attack="pgd2", n=20, progress=False)
    aa = dict(r, attack="AutoAttack(fake)")
    return [make_record(m, s, "cifar10-sample", "cifar10-sample", r, "smoke", 0, 1.5, aa=aa, note="x")
            for m in ("SimCLR", "AdvCL") for s in ("SLF", "ALF")]
