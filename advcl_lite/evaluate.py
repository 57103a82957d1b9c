"""Clean and robust accuracy, with confidence intervals.

One evaluation loop, :func:`evaluate`, takes an *attack hook*: ``None`` (clean
accuracy only), ``"pgd20"`` (the paper's RA: L-inf PGD, eps 8/255, step 2/255,
20 steps, random start, cross-entropy), ``"pgd<K>"`` (the same with K steps),
``"autoattack"`` (AutoAttack's standard version through the authors' package,
``pyautoattack``), or any callable ``attack(images, labels) -> adv_images`` on
[0, 1] images - a torchattacks attack object works as is.

* **SA** is the clean accuracy. **RA** counts an example as robust only if it is
  classified correctly on the clean input *and* on the attacked input, so
  RA <= SA by construction (also for an attack that fails to find an
  adversarial example for a misclassified input).
* Every accuracy comes with its number of examples ``n`` and a 95 % Wilson
  interval (:func:`accuracy_ci`); :func:`~advcl_lite.results.format_result` prints them together:
  ``SA 47.6% [44.5, 50.7] (n=1000)``. A subset of ``n`` test images is the seeded,
  class-balanced subset (:func:`~advcl_lite.data.class_balanced_subset`).
* Accuracies are fractions in [0, 1] in results and records; the text and the
  plots show percentages.
* :func:`accuracy_vs_eps`: RA under PGD over a list of eps.

Result records, tables, the comparison of two intervals and the published numbers are in
:mod:`advcl_lite.results`; the figures (:func:`~advcl_lite.viz.plot_results`,
:func:`~advcl_lite.viz.plot_accuracy_vs_eps`) in :mod:`advcl_lite.viz`.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from . import distributed
from .attacks import EPS, PGD, check_attack_params, make_attack
from .data import ImageDataset, class_balanced_subset, load_dataset
from .presets import check_count
from .runtime import announce_eta, model_device, model_mode, progress_bar, progress_enabled, seeded

# --------------------------------------------------------------------------- intervals

def accuracy_ci(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``correct / n`` (95 % for z = 1.96), as fractions.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n successes.
    ``n = 0`` gives (0, 1): nothing is known.
    """
    if n < 0 or correct < 0 or correct > n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------- the loop

def _as_dataset(data, n: int | None, seed: int) -> tuple[Iterable, int, str]:
    """(batches factory, size, identity) for an ImageDataset, a name/path (test split), or (images, labels)."""
    n = check_count("n (test images)", n)
    if isinstance(data, (str, os.PathLike)):
        data = load_dataset(str(data), "test")
    if isinstance(data, ImageDataset):
        ds = class_balanced_subset(data, n, seed=seed) if n is not None else data
        return ds, len(ds), ds.id
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if n is not None:
            x, y = x[:n], y[:n]
        if x.dtype == torch.uint8:
            x = x.float().div(255)
        return (x, y.long()), len(x), f"tensors:{len(x)}"
    raise TypeError(f"data must be an ImageDataset, a dataset name/path, or (images, labels); got {type(data).__name__}")


def _batches(src, batch_size: int, device):
    if isinstance(src, ImageDataset):
        for x, y, _ in src.batches(batch_size, device=device):
            yield x, y
        return
    x, y = src
    for s in range(0, len(x), batch_size):
        yield x[s:s + batch_size].to(device).float(), y[s:s + batch_size].to(device)


def robust_correct(clean_pred: torch.Tensor, adv_pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Which images count as robust: right on the clean image *and* on its adversarial copy. An image the
    model already gets wrong is never robust, even where the attack happens to land on the right class,
    so RA <= SA always."""
    return (clean_pred == labels) & (adv_pred == labels)


def robust_accuracy(clean_pred: torch.Tensor, adv_pred: torch.Tensor, labels: torch.Tensor) -> float:
    """RA: the fraction of images that are :func:`robust_correct` (predicted class indices, shape (N,))."""
    return float(robust_correct(clean_pred, adv_pred, labels).float().mean()) if len(labels) else float("nan")


def evaluate(model: nn.Module, data, attack=None, n: int | None = None, batch_size: int = 256, device=None,
             seed: int = 0, eps: float = EPS, progress: bool | None = None,
             return_examples: int = 0) -> dict[str, Any]:
    """Clean accuracy (SA) and, with an ``attack``, robust accuracy (RA) of ``model`` on ``data``.

    ``data``: an ImageDataset, a dataset name/path (its test split) or ``(images, labels)``.
    ``n``: evaluate on this many images (the seeded class-balanced subset; None: all).
    ``attack``: None, "pgd20", "pgd<K>", "autoattack", or ``attack(images, labels) -> adv``.
    ``device``: None keeps the model where it is; otherwise the model is moved there.
    ``seed`` fixes the attack's random starts. ``return_examples`` keeps up to that many
    (x, x_adv, y) triples of examples that are correct clean but wrong under attack.

    Returns a dict: ``sa``, ``sa_ci``, ``n``, ``correct``; with an attack also ``ra``,
    ``ra_ci``, ``robust``, ``attack`` (its repr), ``max_linf`` (the largest L-inf
    perturbation the attack produced); ``seconds``, ``dataset``, ``eps``. RA <= SA by
    construction (see the module docstring).

    Under ``torchrun`` every rank attacks every N-th batch and the counts are summed over the ranks, so
    ``n`` and the intervals are those of the whole set on every rank (the random starts differ from a
    single process's, each rank drawing its own).
    """
    dev = model_device(model, device)
    world, rank = distributed.world_size(), distributed.rank()
    src, size, ident = _as_dataset(data, n, seed)
    hook = make_attack(model, attack, eps=eps, device=dev, seed=seed)
    t0 = time.perf_counter()
    correct = robust = 0
    max_linf = 0.0
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    bar = progress_bar(_batches(src, batch_size, dev), total=math.ceil(size / batch_size), desc="evaluate",
                       disable=not progress_enabled(progress) or hook is None or not distributed.is_main())
    with model_mode(model, "eval"), seeded(seed + 7919 * rank if world > 1 else seed, dev):
        for i, (x, y) in enumerate(bar):
            if i % world != rank:            # another rank's batch
                continue
            with torch.no_grad():
                pred = model(x).argmax(1)
                ok = pred == y
            correct += int(ok.sum())
            if hook is None:
                continue
            x_adv = hook(x, y)
            if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
                raise ValueError(f"the attack returned {getattr(x_adv, 'shape', type(x_adv))}, expected a tensor "
                                 f"of the input shape {tuple(x.shape)}")
            x_adv = x_adv.detach().to(dev)
            if i == rank and distributed.is_main():   # the first batch: how long the attack will take
                announce_eta(f"evaluate ({hook!r})", time.perf_counter() - t0, math.ceil(size / batch_size / world),
                             progress)
            with torch.no_grad():
                ok_adv = robust_correct(pred, model(x_adv).argmax(1), y)
            robust += int(ok_adv.sum())
            max_linf = max(max_linf, float((x_adv - x).abs().amax()) if len(x) else 0.0)
            if return_examples and len(kept) < return_examples:
                for i in torch.nonzero(ok & ~ok_adv).flatten()[: return_examples - len(kept)]:
                    kept.append((x[i].cpu(), x_adv[i].cpu(), y[i].cpu()))
    if world > 1:
        correct, robust = (int(v) for v in distributed.all_reduce_sum(torch.tensor([correct, robust], device=dev)))
        max_linf = max(distributed.all_gather_object(max_linf))
    out: dict[str, Any] = {"n": size, "correct": correct, "sa": correct / size if size else float("nan"),
                           "sa_ci": list(accuracy_ci(correct, size)), "dataset": ident, "eps": float(eps),
                           "attack": "none" if hook is None else repr(hook), "seed": seed}
    if hook is not None:
        out.update({"robust": robust, "ra": robust / size if size else float("nan"),
                    "ra_ci": list(accuracy_ci(robust, size)), "max_linf": max_linf})
    if return_examples:
        out["examples"] = kept
    out["seconds"] = time.perf_counter() - t0
    return out


def accuracy_vs_eps(model: nn.Module, data, eps_list: Sequence[float], n: int | None = None, steps: int = 20,
                    batch_size: int = 256, device=None, seed: int = 0, progress: bool | None = False) -> dict[str, Any]:
    """Robust accuracy under PGD-``steps`` for every eps in ``eps_list`` (step size eps/4, i.e. 2/255 at 8/255).

    Returns ``{"eps": [...], "sa", "ra": [...], "ra_ci": [...], "n"}`` (fractions). eps = 0 gives the SA.
    """
    eps_list = [float(e) for e in eps_list]
    ras, cis, sa = [], [], None
    for e in eps_list:
        check_attack_params(e, e / 4, steps)
        att = PGD(model, e, e / 4, steps if e > 0 else 0, random_start=e > 0, mode="eval")
        r = evaluate(model, data, attack=att, n=n, batch_size=batch_size, device=device, seed=seed, eps=e,
                     progress=progress)
        sa = r["sa"]
        ras.append(r["ra"])
        cis.append(r["ra_ci"])
    return {"eps": eps_list, "sa": sa, "ra": ras, "ra_ci": cis, "n": r["n"] if eps_list else 0, "steps": steps}
