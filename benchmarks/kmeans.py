"""Time the k-means behind ``advcl_lite.pseudo_labels`` on CIFAR-10-sized feature sets.

Target: K in {2, 10, 50, 100, 500} on 50,000 x 512 features in at most 60 s in
total on 2 CPU cores. Each K is clustered with ``clustering.kmeans`` exactly as
``make_pseudo_labels`` does (L2-normalised float32 features; greedy k-means++ on a
seeded subsample of max(10000, 20 K) points, then scikit-learn Lloyd on all points).

Features (``--features``):

* ``synthetic`` (default): 50,000 x 512 clustered features, made in about a second:
  10 "classes" x 10 sub-modes as a Gaussian mixture in a random rank-64 subspace,
  plus small isotropic noise, L2-normalised. Extracting 512-d features of 50,000
  real images needs a width-64 ResNet-18, about 8 minutes on 2 CPU cores (measured:
  108 images/s), so the 512-d target is timed on synthetic features.
* ``real``: pooled features of the real CIFAR-10 training images (the JPEG zip,
  ``--data``) from a random-init CIFAR ResNet-18 of ``--width`` (16 gives 128-d
  features, the width of the quick/benchmark presets; 64 gives 512-d). Cached in
  ``$ADVCL_CACHE`` (default ``~/.cache/advcl_lite``) after the first run.

``--compare`` also times scikit-learn's defaults, ``KMeans(K, n_init=1)`` (k-means++
on all points) and ``MiniBatchKMeans(K, n_init=3, batch_size=4096)``, for the choice.

    python benchmarks/kmeans.py                       # synthetic 50,000 x 512
    python benchmarks/kmeans.py --features real --width 16
    python benchmarks/kmeans.py --compare
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_features(n: int = 50000, dim: int = 512, seed: int = 0, classes: int = 10, modes: int = 10,
                       rank: int = 64) -> np.ndarray:
    """Clustered, L2-normalised (n, dim) float32 features (see the module docstring)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0]
    centres = rng.standard_normal((classes, 1, rank)) * 0.5 + rng.standard_normal((classes, modes, rank)) * 0.4
    y = rng.integers(0, classes, n)
    m = rng.integers(0, modes, n)
    z = centres[y, m] + rng.standard_normal((n, rank)) * 0.6
    x = z @ basis.T + rng.standard_normal((n, dim)) * 0.02
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def real_features(data: str, width: int, n: int, seed: int = 0) -> np.ndarray:
    from advcl_lite.data import _cache_dir, load_dataset
    from advcl_lite.models import ResNet18
    from advcl_lite.clustering import extract_features

    key = hashlib.sha1(f"{Path(data).resolve()}|{width}|{n}|{seed}".encode()).hexdigest()[:12]
    cache = _cache_dir() / f"bench-features-{key}.npy"
    if cache.exists():
        print(f"features: cached {cache}", file=sys.stderr)
        return np.load(cache)
    ds = load_dataset(data, "train")
    ds = ds.subset(range(min(n, len(ds))), split=ds.split) if n < len(ds) else ds
    torch.manual_seed(seed)
    net = ResNet18(width)
    t = time.perf_counter()
    f = extract_features(net, ds, batch_size=256, device="cpu").numpy()
    print(f"features: {len(ds)} images through a random-init width-{width} ResNet-18 in "
          f"{time.perf_counter() - t:.0f}s", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, f)
    return f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", choices=["synthetic", "real"], default="synthetic")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--dim", type=int, default=512, help="synthetic feature dimension")
    ap.add_argument("--width", type=int, default=16, help="ResNet-18 width for --features real (8w-d features)")
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.zip", help="images for --features real")
    ap.add_argument("--ks", default="2,10,50,100,500")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", action="store_true", help="also time scikit-learn's default KMeans and MiniBatchKMeans")
    args = ap.parse_args(argv)

    from sklearn.cluster import KMeans, MiniBatchKMeans
    import sklearn
    from advcl_lite.clustering import kmeans

    ks = [int(k) for k in args.ks.split(",")]
    if args.features == "synthetic":
        x = synthetic_features(args.n, args.dim, args.seed)
        what = f"synthetic clustered features {x.shape[0]} x {x.shape[1]}"
    else:
        x = real_features(args.data, args.width, args.n, args.seed)
        x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
        what = (f"real CIFAR-10 train features {x.shape[0]} x {x.shape[1]} "
                f"(random-init width-{args.width} ResNet-18)")
    x = np.ascontiguousarray(x, dtype=np.float32)

    rows = []
    for k in ks:
        _, info = kmeans(x, k, seed=args.seed)
        rows.append(("advcl_lite", k, info["seconds"], info["inertia"], info["n_iter"]))
        print(f"advcl_lite K={k}: {info['seconds']:.1f}s", file=sys.stderr, flush=True)
        if args.compare:
            t = time.perf_counter()
            m = KMeans(k, n_init=1, random_state=args.seed).fit(x)
            rows.append(("KMeans default", k, time.perf_counter() - t, float(m.inertia_), int(m.n_iter_)))
            t = time.perf_counter()
            m = MiniBatchKMeans(k, n_init=3, batch_size=4096, random_state=args.seed).fit(x)
            secs = time.perf_counter() - t
            inertia = float(((x - m.cluster_centers_[m.labels_]) ** 2).sum())
            rows.append(("MiniBatchKMeans", k, secs, inertia, int(m.n_iter_)))

    threads = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count())
    print(f"\nk-means on {what}; {platform.processor() or platform.machine()}, {threads} CPU threads, "
          f"scikit-learn {sklearn.__version__}, torch {torch.__version__}\n")
    print("| method | K | seconds | inertia | iterations |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, k, secs, inertia, it in rows:
        print(f"| {name} | {k} | {secs:.1f} | {inertia:.1f} | {it} |")
    total = sum(r[2] for r in rows if r[0] == "advcl_lite")
    print(f"| advcl_lite | total | {total:.1f} | | |")
    print(f"\ncommand: python benchmarks/kmeans.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
