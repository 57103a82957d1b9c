"""Diagnostics of cluster pseudo-labels for teaching: how they compare with the true classes.

:func:`cluster_stats` (sizes, purity, NMI against its chance level, ARI per K), :func:`purity`,
:func:`embed_2d` (t-SNE or PCA of the features); their figures are in :mod:`advcl_lite.viz`. They are kept
apart from training: true labels never enter pretraining.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data import ImageDataset


def as_numpy_labels(y) -> np.ndarray:
    """Labels (a tensor, an array, a list or an ImageDataset's labels) as a flat int64 numpy array."""
    if isinstance(y, ImageDataset):
        y = y.labels
    if isinstance(y, torch.Tensor):
        y = y.cpu().numpy()
    return np.asarray(y).astype(np.int64).reshape(-1)


def purity(clusters, true_labels) -> float:
    """Fraction of items whose cluster's most common true class is their own class."""
    c, y = as_numpy_labels(clusters), as_numpy_labels(true_labels)
    table = np.zeros((c.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(table, (c, y), 1)
    return float(table.max(1).sum() / len(c))


def cluster_stats(pseudo, true_labels, seed: int = 0):
    """Per K: cluster sizes, purity, NMI and ARI against the true classes (a pandas DataFrame indexed by K).

    ``nmi_shuffled`` is the NMI of the same clusters assigned to random items: the chance
    level, which grows with K (many small clusters share information with any labelling
    by luck), so read ``nmi`` against it. ``pseudo``: a :class:`~advcl_lite.pseudo_labels.PseudoLabels` or a dict
    K -> labels. ``true_labels``: labels or an ImageDataset. A diagnostic for teaching;
    true labels never enter pretraining.
    """
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    y = as_numpy_labels(true_labels)
    rng = np.random.default_rng(seed)
    items = pseudo.labels if hasattr(pseudo, "ks") else pseudo         # a PseudoLabels, or a dict K -> labels
    ks = pseudo.ks if hasattr(pseudo, "ks") else sorted(items)
    rows = []
    for k in ks:
        c = as_numpy_labels(items[k])
        if len(c) != len(y):
            raise ValueError(f"K={k}: {len(c)} pseudo-labels but {len(y)} true labels; pass the labels of the same dataset")
        sizes = np.bincount(c, minlength=int(k))
        rows.append({"K": int(k), "clusters": int((sizes > 0).sum()), "min_size": int(sizes.min()),
                     "median_size": float(np.median(sizes)), "max_size": int(sizes.max()),
                     "purity": purity(c, y), "nmi": float(normalized_mutual_info_score(y, c)),
                     "nmi_shuffled": float(normalized_mutual_info_score(y, rng.permutation(c))),
                     "ari": float(adjusted_rand_score(y, c))})
    return pd.DataFrame(rows).set_index("K")


def embed_2d(features, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D coordinates of L2-normalised ``features`` by t-SNE (PCA to 50 dims first) or PCA."""
    from sklearn.decomposition import PCA

    x = F.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float32), dim=1).numpy()
    if method == "pca":
        return PCA(2, random_state=seed).fit_transform(x)
    if method != "tsne":
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    from sklearn.manifold import TSNE
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)
