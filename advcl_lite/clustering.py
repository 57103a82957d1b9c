"""Features of a frozen encoder and k-means: the two computations behind AdvCL's pseudo-labels.

* :func:`extract_features` - pooled backbone features of every image from a frozen encoder (eval mode, no
  gradients): an advcl_lite checkpoint or network, or any module mapping [0, 1] images to vectors;
* :func:`kmeans` - scikit-learn k-means with k-means++ seeding on a seeded subsample, clusters renumbered by
  size; :func:`assign_to_centres` - k-means' own assignment rule; :func:`valid_ks` - which K a dataset allows.

:mod:`advcl_lite.pseudo_labels` turns them into label files; :mod:`advcl_lite.diagnostics` compares clusters
with the true classes.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import CheckpointError, sha256_file, state_dict_sha256
from .data import DataError, ImageDataset
from .models import ContrastiveNet, ResNet18, load_pretrained
from .runtime import model_mode, progress_bar, resolve_device, unwrap


# --------------------------------------------------------------------------- features

def _unwrap_result(encoder):
    """A :class:`~advcl_lite.pretrain.PretrainResult` stands for its checkpoint file."""
    if not isinstance(encoder, (nn.Module, str, os.PathLike)) and hasattr(encoder, "checkpoint") \
            and hasattr(encoder, "net"):
        return encoder.checkpoint
    return encoder


def encoder_sha256(encoder) -> str:
    """SHA-256 of a checkpoint file (path or PretrainResult) or of a module's state dict."""
    encoder = _unwrap_result(encoder)
    if isinstance(encoder, (str, os.PathLike)):
        return sha256_file(encoder)
    return state_dict_sha256(encoder)


def _load_encoder(encoder, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint path becomes its ContrastiveNet; return (module, description for the metadata)."""
    encoder = _unwrap_result(encoder)
    if isinstance(encoder, (str, os.PathLike)):
        path = Path(encoder)
        if not path.exists():
            raise CheckpointError(f"encoder checkpoint {str(path)!r} does not exist; pass a pretraining "
                                  f"checkpoint such as runs/quick/pretrain/simclr/final.pt "
                                  f"(make one with: advcl-lite pretrain --method simclr --preset quick)")
        net, meta = load_pretrained(path, device)
        return net, {"encoder": meta.get("run_name") or meta.get("method", path.stem), "encoder_path": str(path),
                     "encoder_sha256": sha256_file(path), "encoder_hash_of": "checkpoint file",
                     "encoder_method": meta.get("method"), "encoder_epoch": meta.get("epoch"),
                     "encoder_base_width": meta.get("base_width")}
    module = unwrap(encoder)
    if not isinstance(module, nn.Module):
        raise TypeError(f"encoder must be a checkpoint path or a torch.nn.Module, got {type(encoder).__name__}")
    return module, {"encoder": type(module).__name__, "encoder_path": None,
                    "encoder_sha256": state_dict_sha256(module), "encoder_hash_of": "state dict",
                    "encoder_method": None, "encoder_epoch": None,
                    "encoder_base_width": getattr(getattr(module, "backbone", module), "base_width", None)}


def _feature_fn(module: nn.Module, route: str | None):
    """The function images -> features for ``module`` (pooled backbone features for advcl_lite encoders)."""
    if isinstance(module, ContrastiveNet):
        key = getattr(module, "key", None)
        module = key if key is not None else module     # DynACL: the momentum copy is the encoder it releases
        r = route or "normal"
        if r not in module.routes:
            raise ValueError(f"route {r!r} is not one of this encoder's BN routes {module.routes}")
        return lambda x: module.features(x, r)
    if isinstance(module, ResNet18):
        r = None if module.routes is None else (route or module.routes[0])
        if r is not None and r not in module.routes:
            raise ValueError(f"route {r!r} is not one of this encoder's BN routes {module.routes}")
        return lambda x: module.features(x, r)
    if route is not None:
        raise ValueError(f"route={route!r} applies to advcl_lite encoders only, not to {type(module).__name__}")
    return module


def _batches(data, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    if isinstance(data, ImageDataset):
        for x, _, _ in data.batches(batch_size, device=device):
            yield x
        return
    if isinstance(data, torch.Tensor):
        for s in range(0, len(data), batch_size):
            x = data[s:s + batch_size].to(device)
            yield x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        return
    # any map-style dataset whose items are an image or a tuple starting with one
    for s in range(0, len(data), batch_size):
        items = [data[i] for i in range(s, min(s + batch_size, len(data)))]
        xs = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
        x = torch.stack([torch.as_tensor(v) for v in xs]).to(device)
        yield x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def extract_features(encoder, dataset_or_tensor, batch_size: int = 512, device=None, route: str | None = None,
                     progress: bool | None = None) -> torch.Tensor:
    """Features (N, D) float32 on the CPU, one row per item, in dataset order.

    ``encoder``: a :class:`~advcl_lite.models.ContrastiveNet` (pooled backbone features f
    through BN ``route``, default ``"normal"``), a :class:`~advcl_lite.models.ResNet18`,
    a path to a pretraining checkpoint (or the PretrainResult of ``pretrain.get_or_train``),
    or any module mapping [0, 1] images to vectors.
    ``dataset_or_tensor``: an :class:`~advcl_lite.data.ImageDataset`, a tensor (uint8 images
    are scaled to [0, 1]; float input is used as is), or a map-style dataset of images or
    ``(image, ...)`` tuples. The encoder runs in eval mode under ``torch.no_grad``; its
    train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = resolve_device(device)
    encoder = _unwrap_result(encoder)
    if isinstance(encoder, (str, os.PathLike)):
        encoder, _ = _load_encoder(encoder, device)
    module = unwrap(encoder)
    if not isinstance(module, nn.Module):
        raise TypeError(f"encoder must be a checkpoint path or a torch.nn.Module, got {type(encoder).__name__}")
    module = module.to(device)
    fn = _feature_fn(module, route)
    n = len(dataset_or_tensor)
    if n == 0:
        raise DataError("cannot extract features of an empty dataset")
    out = []
    with model_mode(module, "eval"):        # every submodule's own flag comes back afterwards
        bar = progress_bar(_batches(dataset_or_tensor, batch_size, device), total=-(-n // batch_size),
                           desc="features", progress=progress)
        for x in bar:
            f = fn(x)
            if isinstance(f, (tuple, list)):
                f = f[0]
            out.append(f.reshape(len(x), -1).float().cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- k-means

def valid_ks(ks: Iterable[int], n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Split ``ks`` into (kept, dropped): K must be an integer >= 2 and at most n // 2."""
    kept, dropped = [], []
    for k in ks:
        if isinstance(k, bool) or int(k) != k:
            raise ValueError(f"every K must be a whole number, got {k!r}")
        k = int(k)
        if k < 2:
            raise ValueError(f"every K must be >= 2 (one cluster labels nothing), got {k}")
        if k in kept or k in dropped:
            continue
        (kept if k <= n // 2 else dropped).append(k)
    return tuple(kept), tuple(dropped)


def assign_to_centres(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The pseudo-label of each row of ``features`` (N, D): the index of its nearest row of ``centres`` (K, D)
    in squared Euclidean distance (k-means' own rule; ties go to the lower index). int64, shape (N,)."""
    if features.ndim != 2 or centres.ndim != 2 or features.shape[1] != centres.shape[1]:
        raise ValueError(f"features (N, D) and centres (K, D) must share D, got {tuple(features.shape)} and "
                         f"{tuple(centres.shape)}")
    f, c = features.double(), centres.double()
    d = (f * f).sum(1, keepdim=True) - 2 * f @ c.t() + (c * c).sum(1)[None]
    return d.argmin(1)


def kmeans(features, k: int, seed: int = 0, init_sample: int | None = None, max_iter: int = 300,
           tol: float = 1e-4) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster rows of ``features`` (N, D) into ``k`` clusters with scikit-learn.

    Greedy k-means++ seeding on a seeded subsample of ``init_sample`` rows (default
    ``max(10000, 20 k)``), then Lloyd iterations on all rows. Features are used as given
    (normalise them first). Clusters are renumbered by size, largest first.
    Returns ``(labels int64 (N,), info)`` with inertia, iterations and seconds.
    """
    from sklearn.cluster import KMeans, kmeans_plusplus

    x = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"k={k} must be between 1 and the number of points ({n}) minus one")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    m = min(n, init_sample or max(10000, 20 * k))
    sub = x if m >= n else x[np.sort(rng.choice(n, m, replace=False))]
    centres, _ = kmeans_plusplus(sub, k, random_state=seed)
    t1 = time.perf_counter()
    km = KMeans(k, init=centres, n_init=1, max_iter=max_iter, tol=tol, random_state=seed).fit(x)
    raw = km.labels_.astype(np.int64)
    sizes = np.bincount(raw, minlength=k)
    order = np.lexsort((np.arange(k), -sizes))          # largest first, ties by cluster id
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    labels = rank[raw]
    t2 = time.perf_counter()
    info = {"k": k, "inertia": float(km.inertia_), "n_iter": int(km.n_iter_), "init_sample": int(m),
            "seconds": t2 - t0, "init_seconds": t1 - t0}
    return labels, info
