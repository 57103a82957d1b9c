"""Batched view transforms: SimCLR's view, crop-flip, MultiView."""
from __future__ import annotations

import pytest
import torch

from advcl_lite.data import load_sample
from advcl_lite.views import (MultiView, color_jitter, crop_flip, random_crop, random_flip, random_resized_crop,
                              simclr_view)


@pytest.fixture(scope="module")
def sample_test():
    return load_sample("test")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def xb(sample_test):
    return sample_test.tensors(12)[0]


@pytest.mark.parametrize("view", [simclr_view, crop_flip, random_resized_crop, color_jitter, random_flip, random_crop])
def test_views_keep_shape_range_and_are_seeded(xb, view):
    a = view(xb, g=gen(1))
    assert a.shape == xb.shape and a.dtype == xb.dtype
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(view(xb, g=gen(1)), a, rtol=0, atol=0)
    assert not torch.equal(view(xb, g=gen(2)), a), "another seed gives another view"
    assert not torch.equal(a, xb)


def test_crop_flip_is_a_shifted_possibly_flipped_copy_with_zero_padding(xb):
    """Each output image equals the input, maybe flipped, shifted by (dy, dx) in [-4, 4]^2, zeros entering."""
    o = crop_flip(xb, g=gen(5))
    flipped_any = False
    for k in range(len(xb)):
        found = None
        for flip in (False, True):
            src = xb[k].flip(-1) if flip else xb[k]
            padded = torch.nn.functional.pad(src, (4, 4, 4, 4))
            for dy in range(9):
                for dx in range(9):
                    if torch.equal(padded[:, dy:dy + 32, dx:dx + 32], o[k]):
                        found = (flip, dy, dx)
                        break
                if found:
                    break
            if found:
                break
        assert found is not None, f"image {k} is not a padded crop of the input"
        flipped_any |= found[0]
    assert flipped_any


def test_transforms_without_randomness_are_identities(xb):
    torch.testing.assert_close(random_crop(xb, padding=0, g=gen()), xb, rtol=0, atol=0)
    torch.testing.assert_close(random_flip(xb, p=0.0, g=gen()), xb, rtol=0, atol=0)
    torch.testing.assert_close(random_flip(xb, p=1.0, g=gen()), xb.flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(random_resized_crop(xb, scale=(1, 1), ratio=(1, 1), g=gen()), xb, rtol=0, atol=1e-5)
    torch.testing.assert_close(color_jitter(xb, 0, 0, 0, 0, g=gen()), xb, rtol=0, atol=1e-5)
    # a flip keeps the multiset of pixel values of every image
    f = random_flip(xb, g=gen(3))
    assert torch.equal(f.flatten(1).sort(1).values, xb.flatten(1).sort(1).values)


def test_simclr_view_statistics_match_the_recipe(sample_test):
    """Grayscale with p = 0.2: about a fifth of the views have three equal channels."""
    x = sample_test.tensors(200)[0]
    v = simclr_view(x, g=gen(0))
    gray = ((v[:, 0] - v[:, 1]).abs().amax((1, 2)) < 1e-6) & ((v[:, 1] - v[:, 2]).abs().amax((1, 2)) < 1e-6)
    assert 0.12 < gray.float().mean() < 0.28


def test_multiview_returns_one_tensor_per_transform(xb):
    mv = MultiView(simclr_view, simclr_view, crop_flip)
    views = mv(xb, g=gen(0))
    assert len(views) == 3 and all(v.shape == xb.shape for v in views)
    assert not torch.equal(views[0], views[1])
    assert repr(mv) == "MultiView(simclr_view, simclr_view, crop_flip)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_views_run_on_cuda(xb):
    for view in (simclr_view, crop_flip):
        out = view(xb.cuda(), g=gen(0))
        assert out.is_cuda and out.shape == xb.shape
    torch.testing.assert_close(crop_flip(xb.cuda(), g=gen(4)).cpu(), crop_flip(xb, g=gen(4)))
