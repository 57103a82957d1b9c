"""Cluster pseudo-labels: features of a frozen standard encoder, k-means once per K.

AdvCL's pseudo-supervision (Fan et al. 2021, section 4; ``pretraining_advCL.py``) adds, to the contrastive
loss, a cross-entropy term on an adversarial view x_ce against cluster labels::

    L = 7.14 * L_CL(t1, t2, x_cl, h) + lambda * 1/|K| * sum_K CE(head_K(f(x_ce; pgd_ce)), y_K)

(7.14 = temperature / base_temperature = 0.5 / 0.07, the original ``SupConLoss``'s factor; lambda = 0.2).

The original release ships five label arrays (K = 2, 10, 50, 100, 500) made by
clustering features of an ImageNet "ClusterFit" model whose code was never
released. Here we make them ourselves:

1. :func:`extract_features` - pooled backbone features f of every training image
   from a frozen encoder (eval mode, no gradients), normally a SimCLR run.
2. :func:`make_pseudo_labels` - L2-normalise the features (contrastive features
   live on the unit sphere; their direction, not their norm, carries meaning), then
   run scikit-learn k-means once per K: greedy k-means++ seeding on a seeded
   subsample of at most ``max(10000, 20 K)`` points, then Lloyd iterations on all
   points (``KMeans(init=centres, n_init=1)``). k-means++ seeding is what makes
   scikit-learn's default slow at large K (it scans all points K times). On 50,000 x 512
   synthetic features, seeding on the subsample reached an inertia within 0.5 % of the
   default's at every K (MiniBatchKMeans: up to 2.9 % worse) and was usually several times
   faster at K = 500 (``benchmarks/kmeans.py --compare``; timings on shared CPU cores vary).
   Clusters are renumbered by size, largest first.
3. :class:`PseudoLabels` - the label arrays by dataset index, with metadata
   (encoder and its hash, dataset identity, Ks, seed, versions), saved atomically
   and checked against the dataset before any pretraining uses them.

The features and k-means are in :mod:`advcl_lite.clustering`. Diagnostics for teaching
(:func:`~advcl_lite.diagnostics.cluster_stats`, :func:`~advcl_lite.diagnostics.purity`,
:func:`~advcl_lite.diagnostics.embed_2d`, in :mod:`advcl_lite.diagnostics`, and the figures
:func:`~advcl_lite.viz.plot_cluster_sizes`, :func:`~advcl_lite.viz.plot_cluster_grid`,
:func:`~advcl_lite.viz.plot_embedding` in :mod:`advcl_lite.viz`) compare clusters with the true
classes. They are kept apart from training: true labels never enter pretraining.
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import CheckpointError, load_checkpoint, remove_stale_temps, save_checkpoint, tensor_bytes
from .clustering import _load_encoder, encoder_sha256, extract_features, kmeans, valid_ks
from .data import DataError, ImageDataset
from .methods import METHOD_CLASSES
from .presets import PRESETS
from .runtime import __version__, resolve_device

DEFAULT_KS = (2, 10, 50, 100, 500)
KIND = "pseudo_labels"


class PseudoLabelsNotFound(FileNotFoundError):
    """A pseudo-label file does not exist; the message says how to make one."""


# --------------------------------------------------------------------------- helpers

def _labels_sha256(ks: Sequence[int], labels: dict[int, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in ks:
        h.update(f"K={k}|".encode())
        h.update(tensor_bytes(labels[k].to(torch.int64)))
    return h.hexdigest()


def _dataset_identity(data) -> dict[str, Any]:
    """Identity of what the labels index: ImageDataset id/name/split, or a content hash for a tensor."""
    if isinstance(data, ImageDataset):
        return {"dataset": data.id, "dataset_name": data.name, "dataset_split": data.split, "n": len(data),
                "image_size": data.image_size,
                # order of the true labels: tells two subsets with the same id apart (e.g. another seed).
                # Used only to check identity; true labels never enter pretraining.
                "dataset_fingerprint": hashlib.sha256(tensor_bytes(data.labels.to(torch.int64))).hexdigest()[:16]}
    if isinstance(data, torch.Tensor):
        digest = hashlib.sha256(tensor_bytes(data)).hexdigest()[:16]
        return {"dataset": f"tensor:{digest}:{len(data)}", "dataset_name": "tensor", "dataset_split": "",
                "n": len(data), "image_size": int(data.shape[-1]) if data.ndim == 4 else None,
                "dataset_fingerprint": digest}
    n = len(data)
    name = type(data).__name__
    return {"dataset": f"{name}:{n}", "dataset_name": name, "dataset_split": "", "n": n, "image_size": None,
            "dataset_fingerprint": None}


MEAN_TOLERANCE = 2 / 255   # per-image mean brightness may differ this much (e.g. another JPEG decoder)


def item_means(data) -> torch.Tensor | None:
    """Mean value of every item (images in [0, 1]), float32 (N,): a cheap content fingerprint
    that tells two subsets of the same size apart. ``None`` for datasets other than
    ImageDataset / tensor."""
    if isinstance(data, ImageDataset):
        x, scale = data.images, 255.0
    elif isinstance(data, torch.Tensor):
        x, scale = data, (255.0 if data.dtype == torch.uint8 else 1.0)
    else:
        return None
    out = [x[s:s + 4096].reshape(min(4096, len(x) - s), -1).float().mean(1) / scale for s in range(0, len(x), 4096)]
    return torch.cat(out) if out else torch.zeros(0)


def _versions() -> dict[str, str]:
    import sklearn
    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses
    return {"torch": str(torch.__version__), "sklearn": str(sklearn.__version__), "advcl_lite": str(__version__),
            "numpy": str(np.__version__)}


# --------------------------------------------------------------------------- the label file

class PseudoLabels:
    """Cluster pseudo-labels by dataset index, one LongTensor (N,) per K, with metadata.

    ``labels[K][i]`` is the cluster of dataset item ``i`` at granularity K; clusters are
    numbered by size (0 = largest). ``meta`` records the encoder (name, SHA-256 of its
    checkpoint file or state dict), the dataset identity, Ks, seed, library versions and
    creation time. :meth:`describe` is the short identity stored in pretraining checkpoints.
    """

    def __init__(self, labels: dict[int, torch.Tensor], meta: dict[str, Any], path: str | os.PathLike | None = None,
                 item_means: torch.Tensor | None = None):
        if not labels:
            raise ValueError("PseudoLabels needs at least one K")
        self.ks: tuple[int, ...] = tuple(int(k) for k in (meta.get("ks") or labels))
        self.labels: dict[int, torch.Tensor] = {int(k): torch.as_tensor(v, dtype=torch.long) for k, v in labels.items()}
        if set(self.ks) != set(self.labels):
            raise ValueError(f"meta lists Ks {self.ks} but labels are stored for {sorted(self.labels)}")
        lengths = {len(v) for v in self.labels.values()}
        if len(lengths) != 1:
            raise ValueError(f"label arrays have different lengths {sorted(lengths)}")
        for k, v in self.labels.items():
            if len(v) and (int(v.min()) < 0 or int(v.max()) >= k):
                raise ValueError(f"labels for K={k} are outside [0, {k - 1}]")
        self.meta: dict[str, Any] = dict(meta)
        self.meta["ks"] = list(self.ks)
        self.meta.setdefault("n", lengths.pop())
        self.meta.setdefault("labels_sha256", _labels_sha256(self.ks, self.labels))
        self.path = Path(path) if path is not None else None
        self.item_means = item_means

    def __len__(self) -> int:
        return int(self.meta["n"])

    def __repr__(self) -> str:
        return (f"PseudoLabels(ks={self.ks}, n={len(self)}, dataset={self.meta.get('dataset')!r}, "
                f"encoder={self.meta.get('encoder')!r}, seed={self.meta.get('seed')})")

    # --- use in training
    def targets(self, idx: torch.Tensor, device=None) -> list[torch.Tensor]:
        """The labels of dataset items ``idx``, one LongTensor per K in ``ks`` order, on ``device``."""
        idx = torch.as_tensor(idx, dtype=torch.long).cpu()
        dev = resolve_device(device) if device is not None else torch.device("cpu")
        return [self.labels[k][idx].to(dev, non_blocking=True) for k in self.ks]

    def describe(self) -> dict[str, Any]:
        """Short JSON-able identity (content hash, Ks, seed, encoder, dataset) for checkpoint metadata.

        Uses the hash of the label arrays, not of the file, so re-saving identical labels
        (with a new creation time) keeps the identity.
        """
        m = self.meta
        return {"labels_sha256": m["labels_sha256"], "ks": list(self.ks), "seed": m.get("seed"),
                "encoder": m.get("encoder"), "encoder_sha256": m.get("encoder_sha256"),
                "dataset": m.get("dataset"), "n": len(self)}

    # --- checks
    def make_command(self, data_id: str | None = None) -> str:
        """The CLI command that makes labels for the dataset ``data_id`` (default: the one these are for)."""
        return make_command(data_id or self.meta.get("dataset", ""), self.ks)

    def check_dataset(self, ds) -> None:
        """Raise :class:`~advcl_lite.data.DataError` unless these labels were made for ``ds``
        (same length and dataset id, and the same subset)."""
        want = _dataset_identity(ds)
        m = self.meta
        problem = None
        if want["n"] != len(self):
            problem = f"it has {want['n']} images, the labels cover {len(self)}"
        elif want["dataset"] != m.get("dataset"):
            problem = f"its id is {want['dataset']!r}, not {m.get('dataset')!r}"
        elif m.get("dataset_fingerprint") and want["dataset_fingerprint"] and \
                want["dataset_fingerprint"] != m["dataset_fingerprint"]:
            problem = "it holds other images in another order (another subset, e.g. another seed)"
        elif self.item_means is not None and len(self.item_means) == want["n"]:
            means = item_means(ds)
            if means is not None and float((means - self.item_means.float()).abs().max()) > MEAN_TOLERANCE:
                problem = "it holds other images (another subset, e.g. another seed, or other data under the same name)"
        if problem is None:
            return
        where = f" in {str(self.path)!r}" if self.path else ""
        made = (f"{m.get('dataset')!r} ({m.get('dataset_name')}, split {m.get('dataset_split')!r}, "
                f"{len(self)} images) by encoder {m.get('encoder')!r}")
        raise DataError(
            f"the pseudo-labels{where} were made for dataset {made}, but this dataset differs: {problem}. "
            f"Labels are indexed by dataset position, so they cannot be reused. Make labels for this dataset "
            f"with: {make_command(want['dataset'], self.ks)}")

    # --- files
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write atomically (temporary file + rename) as an advcl_lite checkpoint of kind ``pseudo_labels``.

        An existing file that is not a pseudo-label file (an encoder checkpoint, say) is never replaced
        unless ``overwrite=True``; an earlier pseudo-label file is."""
        path = Path(path)
        if path.exists() and not overwrite:
            try:
                load_checkpoint(path, kind=KIND, map_location="cpu")
            except CheckpointError:
                raise CheckpointError(f"{path} exists and is not a pseudo-label file; it is not replaced. "
                                      f"Write the labels elsewhere (CLI: --out FILE)") from None
        state = {f"k{k}": self.labels[k] for k in self.ks}
        if self.item_means is not None:
            state["item_means"] = self.item_means.float()
        save_checkpoint(path, kind=KIND, state_dict=state, meta=self.meta)
        remove_stale_temps(path.parent, path.name)   # an earlier write of this file killed midway left them
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, dataset=None) -> "PseudoLabels":
        """Read a label file (``torch.load(weights_only=True)``); if ``dataset`` is given, check it."""
        path = Path(path)
        if not path.exists():
            cmd = make_command(_dataset_identity(dataset)["dataset"] if dataset is not None else "cifar10-sample:train:2000")
            cmd = cmd.replace(" (after", f" --out {path} (after", 1)
            raise PseudoLabelsNotFound(
                f"pseudo-label file {str(path)!r} does not exist. Make one from a standard (SimCLR) encoder "
                f"with: {cmd}; or in Python: make_pseudo_labels(encoder, dataset, ks).save(path)")
        ck = load_checkpoint(path, kind=KIND)
        meta = ck["meta"]
        ks = [int(k) for k in meta.get("ks", [])]
        try:
            labels = {k: ck["state_dict"][f"k{k}"] for k in ks}
        except KeyError as e:
            raise CheckpointError(f"{str(path)!r} lacks the labels for {e}; re-create the file") from None
        stored = meta.get("labels_sha256")
        if stored and stored != _labels_sha256(ks, labels):
            raise CheckpointError(f"{str(path)!r}: the label arrays do not match their recorded hash "
                                  f"(the file was modified); re-create it")
        pl = cls(labels, meta, path=path, item_means=ck["state_dict"].get("item_means"))
        if dataset is not None:
            pl.check_dataset(dataset)
        return pl

    def cluster_sizes(self, k: int) -> torch.Tensor:
        """Sizes of the K clusters (largest first)."""
        return torch.bincount(self.labels[k], minlength=k)

    def summary(self) -> list[str]:
        """One line per K: cluster sizes and k-means inertia."""
        lines = []
        for k in self.ks:
            s = self.cluster_sizes(k).float()
            info = self.meta.get("kmeans", {}).get(str(k), {})
            extra = (f", inertia {info['inertia']:.1f}, {info['n_iter']} iterations, {info['seconds']:.1f}s"
                     if "inertia" in info else "")
            lines.append(f"K={k}: cluster sizes min {int(s.min())} / median {int(s.median())} / "
                         f"max {int(s.max())}{extra}")
        return lines


def _guess_cli_source(dataset_id: str) -> tuple[str, str]:
    """From an ImageDataset id ('name:split:n'), the --preset/--data that rebuild it (best effort)."""
    parts = dataset_id.split(":")
    name = parts[0] if parts else ""
    split = parts[1] if len(parts) > 1 else ""
    n = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    data = {"cifar10-sample": "sample", "cifar10": "cifar10", "cifar100": "cifar100", "stl10": "stl10"}.get(
        name, f"PATH/TO/{name}" + ("" if "." in name else ".zip"))
    subset = None
    if "[" in split:   # a train_subset ("train[256]"); anything else re-made by size
        head = split.split("]")[0]
        subset = int(head.split("[")[1]) if split.count("[") == 1 and head.split("[")[1].isdigit() else n
    for pname in ("quick", "smoke", "benchmark", "paper"):
        if PRESETS[pname].train_subset == subset and (subset is not None or n is not None):
            return pname, data
    if subset is None:
        return "quick", data
    return f"quick --set train_subset={subset}", data


def make_command(dataset_id: str, ks: Sequence[int] | None = None) -> str:
    """The exact ``advcl-lite pseudo-labels`` command for the dataset with this id (``ks``: default the preset's)."""
    preset, data = _guess_cli_source(dataset_id)
    pname = preset.split()[0]
    ks = PRESETS[pname].pseudo_ks if ks is None else ks
    return (f"advcl-lite pseudo-labels --encoder runs/{pname}/pretrain/simclr/final.pt --preset {preset} "
            f"--data {data} --k {','.join(str(k) for k in ks)} "
            f"(after advcl-lite pretrain --method simclr --preset {preset} --data {data})")


def make_pseudo_labels(encoder, dataset, ks: Sequence[int] = DEFAULT_KS, seed: int = 0, device=None,
                       batch_size: int = 512, progress: bool | None = None,
                       encoder_name: str | None = None, warn_dropped: bool = True) -> PseudoLabels:
    """Pseudo-labels for ``dataset`` from the frozen ``encoder``: features, L2 normalisation, k-means per K.

    Ks above ``len(dataset) // 2`` are dropped, with a warning naming them unless ``warn_dropped=False``
    (a preset's own K set, whose drop is documented); ``meta["dropped_ks"]`` names them either way.
    ``encoder`` is anything :func:`extract_features` takes (normally a SimCLR checkpoint path).
    """
    n = len(dataset)
    kept, dropped = valid_ks(ks, n)
    if dropped and warn_dropped:
        warnings.warn(f"dropping K={', '.join(map(str, dropped))}: this dataset has {n} images and K must be "
                      f"at most N/2 = {n // 2}", UserWarning, stacklevel=2)
    if not kept:
        raise ValueError(f"no usable K in {tuple(ks)} for a dataset of {n} images (K must be in [2, {n // 2}])")
    dev = resolve_device(device)
    net, info = _load_encoder(encoder, dev)
    if info.get("encoder_method") in METHOD_CLASSES and METHOD_CLASSES[info["encoder_method"]].attacks:
        warnings.warn(f"the encoder is an adversarially trained {info['encoder_method']} run; AdvCL's pseudo-labels "
                      f"come from a standard (SimCLR) encoder", UserWarning, stacklevel=2)
    t0 = time.perf_counter()
    feats = extract_features(net, dataset, batch_size=batch_size, device=dev, progress=progress)
    t_feat = time.perf_counter() - t0
    x = F.normalize(feats.float(), dim=1)
    labels, km_info = {}, {}
    for k in kept:
        lab, inf = kmeans(x, k, seed=seed)
        labels[k] = torch.from_numpy(lab)
        km_info[str(k)] = inf
    if encoder_name:
        info["encoder"] = encoder_name
    meta = {**info, **_dataset_identity(dataset), "ks": list(kept), "dropped_ks": list(dropped), "seed": int(seed),
            "feature_dim": int(feats.shape[1]), "normalize": "l2",
            "algorithm": "scikit-learn k-means: greedy k-means++ on a subsample, then Lloyd on all points",
            "kmeans": km_info, "feature_seconds": t_feat, "versions": _versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return PseudoLabels(labels, meta, item_means=item_means(dataset))


def get_or_make_pseudo_labels(path: str | os.PathLike, encoder, dataset, ks: Sequence[int] = DEFAULT_KS,
                              seed: int = 0, device=None, batch_size: int = 512, progress: bool | None = None,
                              encoder_name: str | None = None, warn_dropped: bool = True) -> PseudoLabels:
    """Load ``path`` if it holds labels for this dataset, encoder (same hash), Ks and seed; else make and save
    them (:func:`make_pseudo_labels`; ``warn_dropped`` as there)."""
    path = Path(path)
    if path.exists():
        try:
            pl = PseudoLabels.load(path, dataset=dataset)
            n = len(dataset)
            if (pl.meta.get("encoder_sha256") == encoder_sha256(encoder) and pl.meta.get("seed") == seed
                    and pl.ks == valid_ks(ks, n)[0]):
                pl.meta["cached"] = True
                return pl
        except (CheckpointError, DataError):
            pass
    pl = make_pseudo_labels(encoder, dataset, ks, seed=seed, device=device, batch_size=batch_size,
                            progress=progress, encoder_name=encoder_name, warn_dropped=warn_dropped)
    pl.save(path)
    return pl
