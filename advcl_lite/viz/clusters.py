"""Figures of the pseudo-label stage (notebook 03): cluster sizes, cluster members, 2-D maps of the features.

Diagnostics for teaching: they compare clusters with the true classes, which never enter pretraining.
The computations (:class:`~advcl_lite.pseudo_labels.PseudoLabels`, :func:`~advcl_lite.diagnostics.embed_2d`)
live in :mod:`advcl_lite.pseudo_labels`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..data import ImageDataset
from ..diagnostics import as_numpy_labels, embed_2d
from ..pseudo_labels import PseudoLabels
from .core import _plt, plot_views


def plot_cluster_sizes(pseudo: PseudoLabels, ax=None):
    """Cluster sizes per K, largest first (log scale), with the size of a uniform split dashed."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
    else:
        fig = ax.figure
    n = len(pseudo)
    for i, k in enumerate(pseudo.ks):
        sizes = np.sort(pseudo.cluster_sizes(k).numpy())[::-1]
        color = plt.cm.viridis(i / max(1, len(pseudo.ks) - 1))
        ax.plot(np.arange(1, k + 1), sizes, marker="o", ms=3, color=color, label=f"K={k}")
        ax.axhline(n / k, color=color, ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):          # plain numbers (1, 10, 100), not 2x10^0 on the minor ticks
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("cluster rank (largest first)")
    ax.set_ylabel("images in cluster")
    ax.set_title(f"cluster sizes of {n} images (dashed: N/K)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_cluster_grid(dataset: ImageDataset, labels, n_clusters: int = 8, per_cluster: int = 8, k: int | None = None,
                      seed: int = 0, title: str | None = None):
    """Rows of ``per_cluster`` random images from each of the ``n_clusters`` largest clusters.

    ``labels``: a LongTensor (N,) of cluster ids, or a :class:`~advcl_lite.pseudo_labels.PseudoLabels` with ``k``
    (default: its second-smallest K). Each row is labelled with its cluster id, size and
    most common true class (a diagnostic). Drawn by :func:`~advcl_lite.viz.plot_views`;
    returns the matplotlib figure.
    """
    if isinstance(labels, PseudoLabels):
        k = k if k is not None else labels.ks[min(1, len(labels.ks) - 1)]
        labels = labels.labels[k]
    c = as_numpy_labels(labels)
    if len(c) != len(dataset):
        raise ValueError(f"{len(c)} labels for a dataset of {len(dataset)} images")
    sizes = np.bincount(c)
    order = np.argsort(-sizes, kind="stable")[:n_clusters]
    order = order[sizes[order] > 0]
    rng = np.random.default_rng(seed)
    y = dataset.labels.numpy()
    rows = {}
    for cl in order:
        members = np.flatnonzero(c == cl)
        pick = np.sort(rng.choice(members, min(per_cluster, len(members)), replace=False))
        cls, cnt = np.unique(y[members], return_counts=True)
        top = int(cls[cnt.argmax()])
        name = dataset.classes[top] if top < len(dataset.classes) else str(top)
        key = f"c{cl}  n={len(members)}\n{100 * cnt.max() / len(members):.0f}% {name}"
        rows[key] = dataset.images[torch.from_numpy(pick)].float() / 255.0
    return plot_views(rows, n=per_cluster, signed=False, inches=0.9,
                      title=title or f"{len(order)} largest clusters, {per_cluster} random members each")


def plot_embedding(features, labels_by_cluster, true_labels, method: str = "tsne", n: int = 1000, seed: int = 0,
                   class_names: Sequence[str] | None = None, title: str | None = None):
    """Two 2-D maps of the same ``n`` random items (t-SNE or PCA): coloured by cluster, and by true class.

    ``labels_by_cluster``: cluster ids (N,). ``true_labels``: labels (N,) or an ImageDataset
    (its class names are then used). Returns the matplotlib figure.
    """
    plt = _plt()
    if isinstance(true_labels, ImageDataset):
        class_names = class_names or true_labels.classes
    feats = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    c, y = as_numpy_labels(labels_by_cluster), as_numpy_labels(true_labels)
    if not len(feats) == len(c) == len(y):
        raise ValueError(f"features ({len(feats)}), cluster labels ({len(c)}) and true labels ({len(y)}) differ in length")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(feats), min(n, len(feats)), replace=False))
    xy = embed_2d(feats[pick], method, seed)
    k = int(c.max()) + 1
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    axes[0].scatter(xy[:, 0], xy[:, 1], c=c[pick], cmap="tab20" if k > 10 else "tab10", s=6, vmin=0,
                    vmax=max(k - 1, 1) if k > 10 else 9)
    axes[0].set_title(f"coloured by cluster (K={k}{', colours repeat' if k > 20 else ''})", fontsize=10)
    for cls in np.unique(y[pick]):
        sel = y[pick] == cls
        name = class_names[cls] if class_names is not None and cls < len(class_names) else str(cls)
        axes[1].scatter(xy[sel, 0], xy[sel, 1], s=6, label=name, color=plt.cm.tab10(cls % 10))
    axes[1].set_title("coloured by true class (diagnostic only)", fontsize=10)
    axes[1].legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"{method.upper() if method == 'pca' else 't-SNE'} of {len(pick)} encoder features", fontsize=11)
    fig.tight_layout()
    return fig
