"""Checks for the notebooks' exercises: a student's function against the library's own.

Each ``check_*`` calls the student's function on seeded random and edge-case inputs, compares the
answer with the library function the notebooks use, and either prints ``correct`` and returns None
(a grade cell's value is then nothing, so nbgrader's autograder has no output to turn into partial credit
and logs no warning) or prints one specific hint (which input, expected vs got) and raises :class:`ExerciseFailed`, an
AssertionError, so that nbgrader's autograder counts the grade cell as failed. A stub that still
raises ``NotImplementedError`` (a student copy not yet filled in) is let through, so a student copy
run top to bottom stops at its first open exercise.

=============================  =========  ===========================================================
check                          notebook   the library's own
=============================  =========  ===========================================================
:func:`check_high_pass`        01         :func:`advcl_lite.frequency.high_pass`
:func:`check_contrastive_loss` 02         :func:`advcl_lite.losses.multiview_contrastive_loss`
:func:`check_assign`           03         :func:`advcl_lite.clustering.assign_to_centres`
:func:`check_robust_accuracy`  04         :func:`advcl_lite.evaluate.robust_accuracy`
:func:`check_radial_spectrum`  05         :func:`advcl_lite.frequency.radial_power_spectrum`
:func:`check_dynacl_strength`  06         :func:`advcl_lite.methods.strength_at`
=============================  =========  ===========================================================
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from .evaluate import robust_accuracy
from .frequency import frequency_radius, high_pass, low_pass, radial_power_spectrum
from .losses import multiview_contrastive_loss
from .methods import strength_at
from .clustering import assign_to_centres


class ExerciseFailed(AssertionError):
    """A wrong answer; the message is the hint."""


def _fail(name: str, hint: str):
    print(f"not yet: {name}: {hint}")
    raise ExerciseFailed(f"{name}: {hint}")


def _ok(name: str, cases: int) -> None:
    print(f"correct: {name} matches the library on all {cases} test inputs")


def _call(name: str, fn: Callable, case: str, *args) -> Any:
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as e:   # the student's code: any error is a hint, not a crash of the check
        _fail(name, f"your function raised {type(e).__name__}: {e} (on {case})")


def _tensor(name: str, got, case: str, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        _fail(name, f"expected a torch.Tensor of shape {shape} on {case}, got {type(got).__name__}")
    if got.is_complex():
        _fail(name, f"the result is complex on {case}: return the real part of the inverse FFT (.real)")
    if tuple(got.shape) != shape:
        _fail(name, f"expected shape {shape} on {case}, got {tuple(got.shape)}")
    return got.detach().double().cpu()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_high_pass(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """``fn(x, r)``: the HFC view of images ``x`` (N, C, H, W), the bins at distance >= r from DC kept."""
    name = "high_pass"
    g = _gen(1)
    cases = [(torch.rand(2, 3, 32, 32, generator=g), 8.0, "2 images of 3x32x32, r = 8"),
             (torch.rand(1, 3, 31, 31, generator=g), 2.5, "an odd-sized 3x31x31 image, r = 2.5"),
             (torch.rand(1, 1, 16, 16, generator=g), 0.5, "a 1x16x16 image, r = 0.5 (only DC inside the disk)"),
             (torch.rand(1, 3, 8, 8, generator=g), 20.0, "a 3x8x8 image, r = 20 (every bin inside the disk)")]
    for x, r, case in cases:
        got = _tensor(name, _call(name, fn, case, x.clone(), r), case, tuple(x.shape))
        want = high_pass(x, r).double()
        if torch.allclose(got, want, atol=1e-4):
            continue
        if torch.allclose(got, low_pass(x, r).double(), atol=1e-4):
            _fail(name, f"on {case} you returned the low-frequency part: keep the bins at distance >= r, "
                        f"remove those inside the disk (1 - M_r)")
        h, w = x.shape[-2:]
        d = frequency_radius(h, w, dtype=torch.float64)
        strict = torch.fft.ifft2(torch.fft.fft2(x.double()) * (d > r)).real       # the ring d == r dropped
        if torch.allclose(got, strict, atol=1e-4) and bool((d == r).any()):
            _fail(name, f"on {case} the boundary ring is wrong: the bins at distance exactly r belong to the "
                        f"HFC (keep d >= r, not d > r)")
        for scale, why in ((h * w, "multiplied"), (1 / (h * w), "divided")):
            if torch.allclose(got, want * scale, atol=1e-4 * max(1.0, scale)):
                _fail(name, f"on {case} your result is the right one {why} by H*W = {h * w}: use the same "
                            f"normalisation in fft2 and ifft2 (the defaults of both)")
        if x.shape[1] > 1 and torch.allclose(got[:, 0], want[:, 0], atol=1e-4):
            _fail(name, f"on {case} channel 0 is right but channel {int((got - want).abs().amax((0, 2, 3)).argmax())} "
                        f"is not: filter every channel with the same mask")
        mean = got.mean((-2, -1)).abs().max().item()
        if r > 0 and mean > 1e-4:
            _fail(name, f"on {case} the result has a channel mean of {mean:.3g}, but h is zero-mean: DC "
                        f"(distance 0 < r) lies inside the disk and must be removed")
        err = (got - want).abs().max().item()
        _fail(name, f"on {case} the largest difference from the library is {err:.3g}; the distance to DC "
                    f"must be measured in FFT bins (torch.fft.fftfreq(n, 1 / n)), the same mask on every channel")
    return _ok(name, len(cases))


def _views(v: int, b: int, d: int, g) -> list[torch.Tensor]:
    return [F.normalize(torch.randn(b, d, generator=g), dim=1) for _ in range(v)]


def check_contrastive_loss(fn: Callable[[list, float], torch.Tensor]) -> None:
    """``fn(views, temperature)``: the mean multi-view contrastive loss of V L2-normalised (B, d) views."""
    name = "contrastive_loss"
    g = _gen(2)
    cases = [(_views(2, 4, 8, g), 0.5, "V = 2 views of B = 4 images, tau = 0.5"),
             (_views(4, 3, 8, g), 0.5, "V = 4 views of B = 3 images, tau = 0.5 (AdvCL's four views)"),
             (_views(3, 5, 16, g), 0.1, "V = 3 views of B = 5 images, tau = 0.1")]
    for views, tau, case in cases:
        got = _call(name, fn, case, [v.clone() for v in views], tau)
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            _fail(name, f"return one number (a 0-d tensor: the mean over all V*B anchors) on {case}, got "
                        f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
        want = multiview_contrastive_loss(views, tau)
        if abs(float(got) - float(want)) < 1e-4:
            continue
        z = torch.cat(views)
        logp_self = F.log_softmax(z @ z.t() / tau, 1)
        ids = torch.arange(len(views[0])).repeat(len(views))
        pos = (ids[:, None] == ids[None]) & ~torch.eye(len(z), dtype=torch.bool)
        with_self = float(-(logp_self * pos).sum(1).div(len(views) - 1).mean())
        if abs(float(got) - with_self) < 1e-4:
            _fail(name, f"on {case} you got {float(got):.4f}, expected {float(want):.4f}: leave the anchor itself "
                        f"out of the softmax's denominator (mask the diagonal with -inf)")
        if abs(float(got) - float(multiview_contrastive_loss(views, 1.0))) < 1e-4:
            _fail(name, f"on {case} you got {float(got):.4f}, the loss at tau = 1: divide the similarities by the "
                        f"temperature tau = {tau}")
        if abs(float(got) - float(want) * len(views) * len(views[0])) < 1e-3:
            _fail(name, f"on {case} you got {float(got):.4f}, {len(views) * len(views[0])} times the expected "
                        f"{float(want):.4f}: average over the V*B anchors instead of summing")
        _fail(name, f"on {case} you got {float(got):.4f}, expected {float(want):.4f}. Each of the V*B anchors "
                    f"has V - 1 positives (the other views of its image): average -log p over them, then "
                    f"over anchors; similarities are dot products divided by tau")
    return _ok(name, len(cases))


def check_assign(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``fn(features, centres)``: the index of the nearest centre for every row of ``features``."""
    name = "assign"
    g = _gen(3)
    feats, centres = torch.randn(50, 6, generator=g), torch.randn(5, 6, generator=g)
    exact = centres[[3, 0, 4]].clone()
    cases = [(feats, centres, "50 points, 5 centres in 6-D"),
             (exact, centres, "3 points lying exactly on centres 3, 0 and 4"),
             (torch.randn(7, 2, generator=g) * 10, torch.randn(3, 2, generator=g), "7 points far out, 3 centres in 2-D")]
    for f, c, case in cases:
        got = _call(name, fn, case, f.clone(), c.clone())
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (len(f),):
            _fail(name, f"return one cluster index per point, shape ({len(f)},), on {case}")
        if got.dtype not in (torch.int64, torch.int32):
            _fail(name, f"return integer indices (e.g. .argmin(1)), got dtype {got.dtype} on {case}")
        want = assign_to_centres(f, c)
        if torch.equal(got.long(), want):
            continue
        if torch.equal(got.long(), torch.cdist(f.double(), c.double()).argmax(1)):
            _fail(name, f"on {case} you picked the farthest centre: use argmin of the distance")
        bad = int((got.long() != want).nonzero()[0])
        _fail(name, f"on {case} point {bad} went to centre {int(got[bad])}, but centre {int(want[bad])} is nearer "
                    f"(squared Euclidean distance, as k-means uses)")
    return _ok(name, len(cases))


def check_robust_accuracy(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], float]) -> None:
    """``fn(clean_pred, adv_pred, labels)``: robust accuracy, a number in [0, 1]."""
    name = "robust_accuracy"
    g = _gen(4)
    y = torch.randint(0, 10, (40,), generator=g)
    clean = torch.where(torch.rand(40, generator=g) < 0.7, y, (y + 1) % 10)
    adv = torch.where(torch.rand(40, generator=g) < 0.5, clean, (clean + 3) % 10)
    lucky = torch.tensor([1, 2, 3]), torch.tensor([3, 3, 3]), torch.tensor([3, 3, 3])   # clean wrong, adv right
    cases = [(clean, adv, y, "40 images, about 70 % clean-correct"),
             (*lucky, "3 images: clean predictions 1, 2, 3, adversarial 3, 3, 3, labels 3, 3, 3"),
             (y, y, y, "40 images, every prediction right")]
    for c, a, t, case in cases:
        got = _call(name, fn, case, c.clone(), a.clone(), t.clone())
        try:
            got = float(got)
        except (TypeError, ValueError):
            _fail(name, f"return one number in [0, 1] on {case}, got {type(got).__name__}")
        want = robust_accuracy(c, a, t)
        if abs(got - want) < 1e-9:
            continue
        if abs(got - float((a == t).float().mean())) < 1e-9:
            _fail(name, f"on {case} you got {got:.3f}, expected {want:.3f}: an image already wrong on the clean "
                        f"input is never robust, even where the attack lands on the right class (RA <= SA)")
        if got > 1:
            _fail(name, f"on {case} you got {got:.3f}: return a fraction of the images, not a count")
        _fail(name, f"on {case} you got {got:.3f}, expected {want:.3f}: count the images right on both the clean "
                    f"and the adversarial input, divided by all images")
    return _ok(name, len(cases))


def check_radial_spectrum(fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``fn(x)``: ``(radii, power)`` of images ``x`` (N, C, H, W), power averaged per ring, summing to 1."""
    name = "radial_spectrum"
    g = _gen(5)
    cases = [(torch.rand(4, 3, 32, 32, generator=g), "4 images of 3x32x32"),
             (torch.randn(2, 1, 15, 15, generator=g), "2 noise images of 1x15x15 (odd size)")]
    for x, case in cases:
        got = _call(name, fn, case, x.clone())
        want_r, want_p = radial_power_spectrum(x)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            _fail(name, f"return a pair (radii, power) on {case}")
        radii = _tensor(name, got[0], case, tuple(want_r.shape))
        power = _tensor(name, got[1], case, tuple(want_p.shape))
        if not torch.allclose(radii, want_r.double()):
            _fail(name, f"on {case} the radii should be 0, 1, ..., {len(want_r) - 1} (the distance to DC rounded)")
        if torch.allclose(power, want_p.double(), rtol=1e-4, atol=1e-8):
            continue
        if abs(float(power.sum()) - 1) > 1e-4:
            _fail(name, f"on {case} the power sums to {float(power.sum()):.4g}: normalise it to sum to 1")
        _, raw = radial_power_spectrum(x, normalize=False)
        rings = torch.round(frequency_radius(*x.shape[-2:], dtype=torch.float64)).long().flatten()
        summed = raw * torch.bincount(rings, minlength=len(want_p)).double()
        if torch.allclose(power, (summed / summed.sum()).double(), rtol=1e-4, atol=1e-8):
            _fail(name, f"on {case} you summed the power in each ring: average it (divide by the bins per ring)")
        if x.shape[1] > 1 and torch.allclose(power, radial_power_spectrum(x[:, :1])[1].double(), rtol=1e-4, atol=1e-8):
            _fail(name, f"on {case} your spectrum is that of channel 0 alone: average |FFT|^2 over every channel")
        k = int((power - want_p.double()).abs().argmax())
        _fail(name, f"on {case} ring {k} has {float(power[k]):.4g}, expected {float(want_p[k]):.4g}: average "
                    f"|FFT|^2 over images and channels, then over the bins whose rounded distance to DC is k")
    return _ok(name, len(cases))


def check_dynacl_strength(fn: Callable[[int, int, int], float]) -> None:
    """``fn(epoch, epochs, period)``: DynACL's augmentation strength in epoch ``epoch`` (1-based)."""
    name = "dynacl_strength"
    cases = [(1, 1000, 50), (50, 1000, 50), (51, 1000, 50), (1000, 1000, 50), (3, 5, 1), (5, 5, 1), (7, 40, 2)]
    for epoch, epochs, period in cases:
        case = f"epoch {epoch} of {epochs}, period {period}"
        got = _call(name, fn, case, epoch, epochs, period)
        want = strength_at(epoch, epochs, period)
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            _fail(name, f"return a number on {case}, got {type(got).__name__}")
        if abs(got - want) < 1e-9:
            continue
        if abs(got - (1 - (epoch - 1) / epochs)) < 1e-9:
            _fail(name, f"on {case} you got {got:.4f}: the strength changes only when a period starts (epochs 1, "
                        f"1 + period, ...); hold it within each period")
        if abs(got - (1 - epoch / epochs)) < 1e-9 or abs(got - strength_at(epoch + 1, epochs, period)) < 1e-9:
            _fail(name, f"on {case} you got {got:.4f}: epochs are counted from 1, and epoch 1 runs at strength 1")
        _fail(name, f"on {case} you got {got:.4f}, expected {want:.4f}: 1 - (e0 - 1) / epochs, e0 the first epoch "
                    f"of the period that holds this epoch")
    return _ok(name, len(cases))
