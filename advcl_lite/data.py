"""Datasets: decoded images in memory, their labels, subsets and splits, and where they come from.

Every dataset here is an :class:`ImageDataset`: decoded uint8 images held in
memory as one tensor ``(N, 3, H, W)``, integer labels, and the sample index.
Indexing returns ``(image, label, index)`` with the image as float in [0, 1]
(no mean/std normalisation: normalisation, if any, lives inside a model).
:meth:`ImageDataset.batches` yields ``(x, y, index)`` batches straight from that tensor (seeded shuffles, a
rank's share under ``torchrun``); :func:`class_balanced_subset`, :func:`train_val_split` and
:func:`class_interleaved` pick images reproducibly; every dataset has an ``id`` and a content ``fingerprint``
that runs and label files record. What is refused, and how (16-bit and float images, nested folders, symlink
loops, oversized zip members), is in the README's "What happens when things go wrong".

Sources (:func:`load_dataset`):

* ``"sample"`` (default): the real CIFAR-10 sample shipped inside the package
  (2,000 train / 1,000 test images, class balanced). Always offline.
* ``"cifar10"``, ``"cifar100"``, ``"stl10"``: torchvision's datasets under
  ``root`` (``download=True`` fetches them when online).
* a path to an ImageFolder directory (``<dir>/<split>/<class>/*.png`` or a
  single split ``<dir>/<class>/*``) or to a ``.zip`` with that layout, such
  as the CIFAR-10 JPEG zip.

The view transforms (SimCLR's view, crop-flip, several views at once) are in
:mod:`advcl_lite.views`.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .presets import check_count

IMG_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class DataError(ValueError):
    """A dataset could not be found or read; the message says how to fix it."""


@dataclass
class ImageDataset:
    """Decoded images in memory: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    split: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise DataError(f"{self.name}: images must be uint8 (N, 3, H, W), got {tuple(self.images.shape)} {self.images.dtype}")
        if len(self.labels) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].float().div_(255), int(self.labels[i]), i

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def id(self) -> str:
        """Stable identity used to match pseudo-labels and checkpoints to data."""
        return f"{self.name}:{self.split}:{len(self)}"

    @property
    def fingerprint(self) -> str:
        """A hash of the pixels and labels (16 hex digits), so that cached runs notice replaced images.

        Memoised per tensor version: an in-place change or a new tensor is hashed again."""
        key = (id(self.images), self.images._version, id(self.labels), self.labels._version)
        memo = self.__dict__.get("_fingerprint")
        if memo is None or memo[0] != key:
            h = hashlib.blake2b(digest_size=8)
            h.update(str((tuple(self.images.shape), self.classes)).encode())
            h.update(self.images.contiguous().numpy().tobytes())
            h.update(self.labels.contiguous().numpy().tobytes())
            memo = (key, h.hexdigest())
            self.__dict__["_fingerprint"] = memo
        return memo[1]

    def subset(self, indices, split: str | None = None) -> "ImageDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.name,
                            split or f"{self.split}[{len(idx)}]")

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", drop_last: bool = False,
                part: slice | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y, index)`` batches with ``x`` float in [0, 1] on ``device``.

        Batches come straight from the in-memory tensor (no DataLoader workers). ``part``: only that slice
        of every batch (one rank's share of a global batch under ``torchrun``: every rank draws the same
        permutation from the same generator, which plays the role of ``DistributedSampler.set_epoch``).
        """
        batch_size = check_count("batch_size", batch_size, allow_none=False)
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - (n % batch_size) if drop_last else n
        for s in range(0, stop, batch_size):
            idx = order[s:s + batch_size]
            if len(idx) == 0:
                break
            if part is not None:
                idx = idx[part]
            x = self.images[idx].to(device, non_blocking=True).float().div_(255)
            yield x, self.labels[idx].to(device), idx

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        batch_size = check_count("batch_size", batch_size, allow_none=False)
        return len(self) // batch_size if drop_last else math.ceil(len(self) / batch_size)

    def tensors(self, n: int | None = None, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` images as float [0, 1] and their labels."""
        n = len(self) if n is None else min(check_count("n", n), len(self))
        return self.images[:n].to(device).float().div_(255), self.labels[:n].to(device)


def train_val_split(ds: ImageDataset, val_fraction: float, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """Split a training set into disjoint train / validation parts (stratified by label)."""
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in range(ds.num_classes):
        idx = torch.nonzero(ds.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = max(1, int(round(len(idx) * val_fraction))) if len(idx) > 1 else 0
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    tr = torch.cat(train_idx).sort().values
    va = torch.cat(val_idx).sort().values
    return ds.subset(tr, split=f"{ds.split}-train"), ds.subset(va, split=f"{ds.split}-val")


def class_interleaved_order(ds: ImageDataset, seed: int = 0) -> list[int]:
    """All indices of ``ds`` in a seeded round-robin over the classes (0, 1, ..., C-1, 0, 1, ...).

    Within each class the order is shuffled with ``seed``; every prefix is as class-balanced as
    it can be, even for a dataset stored sorted by class (like the embedded sample's test split).
    """
    g = torch.Generator().manual_seed(int(seed))
    per_class = [torch.nonzero(ds.labels == c).flatten() for c in range(ds.num_classes)]
    per_class = [p[torch.randperm(len(p), generator=g)] for p in per_class]
    return [int(p[i]) for i in range(max((len(p) for p in per_class), default=0)) for p in per_class if i < len(p)]


def class_balanced_subset(ds: ImageDataset, n: int | None, seed: int = 0) -> ImageDataset:
    """The first ``n`` images of a seeded, class-interleaved order (all if ``n`` is None or >= len)."""
    n = check_count("n (a number of images)", n)
    if n is None or n >= len(ds):
        return ds
    idx = torch.tensor(sorted(class_interleaved_order(ds, seed)[:n]))
    return ds.subset(idx, split=f"{ds.split}[{n}]")


def class_interleaved(ds: ImageDataset, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of ``ds`` in :func:`class_interleaved_order` (so ``x[:k]`` is balanced for any k).

    Returns ``(x, y)``: float (n, 3, H, W) in [0, 1] and int64 (n,), on the CPU.
    """
    order = class_interleaved_order(ds, seed)
    n = check_count("n (a number of images)", n)
    idx = torch.tensor(order[:n] if n is not None else order, dtype=torch.long)
    return ds.images[idx].float().div_(255), ds.labels[idx].clone()


# --------------------------------------------------------------------------- sources

# Pillow modes whose pixels are wider than 8 bits: scaled to 0-255 (65535 -> 255), never clipped
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb8(img, where: str) -> np.ndarray:
    """A Pillow image as 8-bit RGB (H, W, 3): 16-bit greyscale is scaled by 255/65535 (Pillow's own
    ``convert`` clips it to white), palettes, alpha, CMYK and the other 8-bit modes go through ``convert``;
    float pixels (mode ``F``), whose range is not defined, are refused by name."""
    if img.mode in _WIDE_MODES:
        a = np.asarray(img).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(f"cannot use image {where}: its 32-bit integer pixels span [{a.min():.0f}, {a.max():.0f}], "
                            f"beyond 16 bits; convert it to an 8-bit RGB PNG or JPEG")
        g = np.round(a * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if img.mode == "F":
        raise DataError(f"cannot use image {where}: its pixels are 32-bit floats (Pillow mode 'F') with no defined "
                        f"range; convert it to an 8-bit RGB PNG or JPEG")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _decode(blob: bytes, size: int | None, where: str) -> np.ndarray:
    from PIL import Image
    try:
        img = Image.open(io.BytesIO(blob))
        img.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise DataError(f"cannot decode image {where}: {e}") from None
    arr = _to_rgb8(img, where)
    if size is not None and arr.shape[:2] != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return arr


def load_sample(split: str = "train") -> ImageDataset:
    """The real CIFAR-10 sample shipped with the package (offline)."""
    if split not in ("train", "test"):
        raise DataError(f"the embedded sample has splits 'train' and 'test', not {split!r}")
    base = resources.files("advcl_lite") / "_data"
    meta = json.loads((base / "cifar10_sample.json").read_text())
    with resources.as_file(base / "cifar10_sample.npz") as p, np.load(p, allow_pickle=False) as z:
        blob, off, labels = z[f"{split}_jpeg"], z[f"{split}_offsets"], z[f"{split}_labels"]
        imgs = np.stack([_decode(blob[off[i]:off[i + 1]].tobytes(), None, f"sample {split}[{i}]")
                         for i in range(len(labels))])
    return ImageDataset(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(),
                        torch.from_numpy(labels.astype(np.int64)), list(meta["classes"]), "cifar10-sample", split)


def _cache_dir() -> Path:
    return Path(os.environ.get("ADVCL_CACHE", Path.home() / ".cache" / "advcl_lite"))


SPLIT_NAMES = ("train", "test", "val")


def _is_junk(name: str) -> bool:
    """Files an archiver or a file manager adds beside images: macOS ``__MACOSX/`` and ``._*`` resource forks."""
    parts = name.split("/")
    return "__MACOSX" in parts or parts[-1].startswith("._")


def _split_files(names: list[str], split: str, where: str) -> tuple[list[str], list[str]]:
    """From image paths (posix, relative), pick those of ``split`` in ImageFolder layout:
    ``[<top>/]<split>/<class>/<image>``, or without split folders ``[<top>/]<class>/<image>`` (one training
    split). A file nested deeper (``train/cat/day/x.png``) is refused with its path, never taken as a class."""
    parts = [n.split("/") for n in names if not _is_junk(n)]

    def split_at(p: list[str], name: str) -> int | None:
        for i in range(min(2, len(p) - 2)):      # the split folder is at the top, or under one top folder
            if p[i] == name:
                return i
        return None

    chosen = []
    for p in parts:
        i = split_at(p, split)
        if i is None:
            continue
        if len(p) != i + 3:
            raise DataError(f"{where}: {'/'.join(p)} lies deeper than <split>/<class>/<image>; subfolders of a "
                            f"class folder are not read as classes or merged: move its images into "
                            f"{'/'.join(p[:i + 2])}/")
        chosen.append(p)
    if not chosen:
        splits_seen = sorted({p[i] for p in parts for i in range(min(2, len(p) - 2)) if p[i] in SPLIT_NAMES})
        if splits_seen:
            raise DataError(f"{where} has no {split!r} split (found: {', '.join(splits_seen)}); put its images "
                            f"under {split}/<class>/ beside {splits_seen[0]}/, or pass data that has one")
        if split != "train":
            raise DataError(f"{where} has no split folders, so all its images form one training split; split={split!r} "
                            f"would silently reuse the training images. Put held-out images under {split}/<class>/ "
                            f"(beside train/<class>/), or pass a separate folder of them")
        depths = {len(p) for p in parts}
        tops = {p[0] for p in parts}
        if depths == {2} or (depths == {3} and len(tops) == 1):
            chosen = parts
        elif parts:
            deep = max(parts, key=len)
            raise DataError(f"{where}: {'/'.join(deep)} does not fit the layout [<top>/]<class>/<image> (or "
                            f"<split>/<class>/<image>); subfolders of a class folder are not read: move its images "
                            f"into their class folder")
    if not chosen:
        raise DataError(f"{where} holds no images in ImageFolder layout (<split>/<class>/<image>)")
    classes = sorted({p[-2] for p in chosen})
    return ["/".join(p) for p in sorted(chosen, key=lambda p: (p[-2], p[-1]))], classes


def _image_files(root: Path) -> list[Path]:
    """Every image file under ``root``, following symbolic links to folders (a link that leads back into a
    folder already walked is skipped, so a loop ends). Sorted."""
    out, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        out += [Path(dirpath) / f for f in filenames if f.lower().endswith(IMG_EXTS) and not f.startswith("._")]
    return sorted(out)


# an image member larger than this (declared, uncompressed) is refused before it is read: no image of a data
# set these models take comes near it, and a zip bomb's member does
MAX_MEMBER_BYTES = 64 << 20
MAX_TOTAL_BYTES = 16 << 30


def _zip_members(zf: zipfile.ZipFile, path: Path) -> list[str]:
    """The image members of a zip, with their declared sizes checked before anything is decompressed."""
    infos = [i for i in zf.infolist() if i.filename.lower().endswith(IMG_EXTS) and not _is_junk(i.filename)]
    for i in infos:
        if i.file_size > MAX_MEMBER_BYTES:
            raise DataError(f"{path}: member {i.filename} declares {i.file_size / 2**20:.0f} MiB uncompressed "
                            f"({i.compress_size / 2**20:.1f} MiB in the zip), more than any image here may hold "
                            f"({MAX_MEMBER_BYTES >> 20} MiB); it is not read. Re-create the zip from the image files")
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise DataError(f"{path}: its images declare {total / 2**30:.1f} GiB uncompressed, beyond the "
                        f"{MAX_TOTAL_BYTES >> 30} GiB this loader decodes into memory; split the data or pass a "
                        f"smaller zip")
    return [i.filename for i in infos]


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(f"{path}: member {name} cannot be read ({e}); the zip is damaged: re-copy or re-create "
                        f"it") from None


def _is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip" and not path.is_dir()


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"data path {str(path)!r} is not a readable zip ({e}); re-copy or re-create it "
                        f"(an ImageFolder zip holds <split>/<class>/<image> files)") from None


def _content_key(path: Path) -> str:
    """What determines a folder's or zip's decoded content: every image file's path, size and mtime
    (directory), or every member's name, size and CRC (zip). The decode cache is keyed on it, so
    adding, removing, replacing or renaming an image makes a new cache entry."""
    h = hashlib.sha1()
    if _is_zip(path):
        with _open_zip(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.filename.lower().endswith(IMG_EXTS):
                    h.update(f"{info.filename}|{info.file_size}|{info.CRC}\n".encode())
    elif path.is_dir():
        for p in _image_files(path):
            st = p.stat()
            h.update(f"{p.relative_to(path).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load_image_folder(path: str | os.PathLike, split: str = "train", image_size: int | None = None,
                      cache: bool = True) -> ImageDataset:
    """Read an ImageFolder directory or zip (``[<top>/]<split>/<class>/<image>``).

    All images must share one square size unless ``image_size`` is given, in
    which case they are resized to it. Decoded arrays are cached under
    ``$ADVCL_CACHE`` (default ``~/.cache/advcl_lite``) keyed by the path and every image file's
    path, size and mtime (a zip: every member's name, size and CRC; :func:`_content_key`).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data path {str(path)!r} does not exist; pass an ImageFolder directory, "
                        f"a .zip in that layout, or one of: sample, cifar10, cifar100, stl10")
    key = hashlib.sha1(f"{path.resolve()}|{_content_key(path)}|{split}|{image_size}".encode()).hexdigest()[:16]
    cache_file = _cache_dir() / f"imagefolder-{key}.npz"
    image_size = check_count("image_size (CLI: --image-size)", image_size)
    name = path.stem if _is_zip(path) else path.name
    if cache and cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                return ImageDataset(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]),
                                    [str(c) for c in z["classes"]], name, split)
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt
            pass
    if _is_zip(path):
        with _open_zip(path) as zf:
            files, classes = _split_files(_zip_members(zf, path), split, str(path))
            arrays = [_decode(_read_member(zf, f, path), image_size, f"{f} in {path}") for f in files]
    elif path.is_dir():
        names = [p.relative_to(path).as_posix() for p in _image_files(path)]
        files, classes = _split_files(names, split, str(path))
        arrays = [_decode((path / f).read_bytes(), image_size, str(path / f)) for f in files]
    else:
        raise DataError(f"data path {str(path)!r} is neither a directory nor a .zip file; pass an ImageFolder "
                        f"directory or a .zip of one")
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise DataError(f"{path}: images have different sizes {sorted(sizes)[:4]}; pass image_size=32 (CLI: --image-size 32) to resize them")
    h, w = next(iter(sizes))
    if h != w:
        raise DataError(f"{path}: images are {h}x{w}, not square; pass image_size=N to resize them")
    label_of = {c: i for i, c in enumerate(classes)}
    labels = np.array([label_of[f.split("/")[-2]] for f in files], dtype=np.int64)
    images = np.stack(arrays).transpose(0, 3, 1, 2).copy()
    if cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp.npz")
            np.savez(tmp, images=images, labels=labels, classes=np.array(classes))
            os.replace(tmp, cache_file)
        except OSError:
            pass
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), classes, name, split)


_TV = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "stl10": "STL10"}
BUILTIN_DATASETS = ("sample", *_TV)      # names, not paths (a model records them as names)


def load_torchvision(name: str, split: str = "train", root: str | os.PathLike | None = None,
                     download: bool = False, image_size: int | None = None) -> ImageDataset:
    """CIFAR-10, CIFAR-100 or STL-10 through torchvision (``image_size`` resizes, e.g. STL-10 to 32)."""
    import torchvision

    root = Path(root or os.environ.get("ADVCL_DATA", Path.home() / ".cache" / "advcl_lite" / "datasets"))
    cls = getattr(torchvision.datasets, _TV[name])
    try:
        if name == "stl10":
            ds = cls(str(root), split=split, download=download)
            images, labels = torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64))
        else:
            ds = cls(str(root), train=(split == "train"), download=download)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            labels = torch.as_tensor(ds.targets, dtype=torch.long)
    except RuntimeError as e:
        raise DataError(
            f"{name} ({split}) is not under {root} ({e}). Online: download it once from Python, "
            f"load_dataset({name!r}, download=True). "
            f"Offline: copy torchvision's {name} files into {root}, or pass an ImageFolder directory or zip "
            f"as the data path (e.g. the CIFAR-10 JPEG zip).") from None
    if image_size is not None and images.shape[-1] != image_size:
        images = resize_images(images, image_size)
    return ImageDataset(images, labels, list(ds.classes), name, split)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) resized to ``size`` x ``size``: bilinear with antialiasing, rounded back to uint8."""
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round().clamp(0, 255).to(torch.uint8)


def load_dataset(source: str | os.PathLike = "sample", split: str = "train", *, root: str | None = None,
                 download: bool = False, image_size: int | None = None, expect_size: int | None = None) -> ImageDataset:
    """Load a dataset by name or path (see the module docstring).

    ``expect_size``: raise a clear error if the images are not this size
    (e.g. a CIFAR encoder needs 32x32; pass ``image_size`` to resize).
    """
    src = str(source)
    image_size = check_count("image_size (CLI: --image-size)", image_size)
    if src == "sample":
        ds = load_sample(split)
        if image_size is not None and image_size != ds.image_size:
            ds.images = resize_images(ds.images, image_size)
    elif src in _TV:
        ds = load_torchvision(src, split, root=root, download=download, image_size=image_size)
    elif os.sep in src or "/" in src or src.lower().endswith(".zip") or Path(src).exists():
        ds = load_image_folder(src, split, image_size=image_size)
    else:
        raise DataError(f"unknown dataset {src!r}; use sample, cifar10, cifar100, stl10, or a path "
                        f"to an ImageFolder directory or zip")
    if expect_size is not None and ds.image_size != expect_size:
        raise DataError(f"{ds.name} images are {ds.image_size}x{ds.image_size} but {expect_size}x{expect_size} "
                        f"are expected; pass image_size={expect_size} (CLI: --image-size {expect_size}) to resize")
    return ds
