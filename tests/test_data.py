"""Datasets: the embedded sample, ImageFolder dirs and zips, torchvision offline."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from advcl_lite.data import (CIFAR10_CLASSES, DataError, ImageDataset, class_balanced_subset, load_dataset,
                             load_image_folder, load_sample, train_val_split)


@pytest.fixture(scope="module")
def sample_test():
    return load_sample("test")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def write_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def tiny_arrays(n, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def image_folder(tmp_path):
    """<root>/train/{cat,dog}/*.png (3 + 2 images) and <root>/test/{cat,dog}/*.png (1 + 1), all 8x8."""
    root = tmp_path / "pets"
    arrays = {}
    for split, counts in (("train", {"cat": 3, "dog": 2}), ("test", {"cat": 1, "dog": 1})):
        for ci, (cls, k) in enumerate(counts.items()):
            for i, a in enumerate(tiny_arrays(k, seed=10 * ci + len(split))):
                write_png(root / split / cls / f"{i}.png", a)
                arrays[(split, cls, i)] = a
    return root, arrays


# --------------------------------------------------------------------------- embedded sample

def test_embedded_sample_shapes_range_and_balance(sample_test):
    train = load_sample("train")
    for ds, n in ((train, 2000), (sample_test, 1000)):
        assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
        assert ds.labels.dtype == torch.int64 and ds.classes == CIFAR10_CLASSES and ds.num_classes == 10
        assert torch.bincount(ds.labels, minlength=10).tolist() == [n // 10] * 10
        assert ds.image_size == 32 and ds.id == f"cifar10-sample:{ds.split}:{n}"
    x, y, i = sample_test[17]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y == int(sample_test.labels[17]) and i == 17
    torch.testing.assert_close(x, sample_test.images[17].float() / 255)
    assert x.std() > 0.02, "a real photo, not a blank"
    assert not torch.equal(train.images[:100], sample_test.images[:100])


def test_load_dataset_sample_and_resize(sample_test):
    ds = load_dataset("sample", "test", image_size=16)
    assert ds.images.shape == (1000, 3, 16, 16) and ds.images.dtype == torch.uint8
    with pytest.raises(DataError, match="splits 'train' and 'test'"):
        load_sample("val")
    with pytest.raises(DataError, match=r"32x32 but 64x64.*image_size=64"):
        load_dataset("sample", "test", expect_size=64)
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_image_dataset_rejects_bad_tensors():
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), ["a"], "x", "train")
    with pytest.raises(DataError, match="2 images but 3 labels"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), ["a"], "x", "train")


def test_batches_tensors_and_subsets(sample_test):
    ds = sample_test.subset(range(50))
    b = list(ds.batches(16))
    assert [len(x) for x, _, _ in b] == [16, 16, 16, 2] and ds.num_batches(16) == 4
    assert [len(x) for x, _, _ in ds.batches(16, drop_last=True)] == [16, 16, 16] and ds.num_batches(16, True) == 3
    x, y, idx = b[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and torch.equal(idx, torch.arange(16))
    s1 = torch.cat([i for _, _, i in ds.batches(16, shuffle=True, generator=gen(3))])
    s2 = torch.cat([i for _, _, i in ds.batches(16, shuffle=True, generator=gen(3))])
    assert torch.equal(s1, s2) and sorted(s1.tolist()) == list(range(50)) and not torch.equal(s1, torch.arange(50))
    xt, yt = ds.tensors(5)
    assert xt.shape == (5, 3, 32, 32) and torch.equal(yt, ds.labels[:5])


def test_class_balanced_subset_and_train_val_split(sample_test):
    sub = class_balanced_subset(sample_test, 50, seed=1)
    assert len(sub) == 50 and torch.bincount(sub.labels, minlength=10).tolist() == [5] * 10
    again = class_balanced_subset(sample_test, 50, seed=1)
    assert torch.equal(sub.images, again.images)
    assert class_balanced_subset(sample_test, None) is sample_test
    tr, va = train_val_split(sample_test, 0.1, seed=0)
    assert len(tr) == 900 and len(va) == 100
    assert torch.bincount(va.labels, minlength=10).tolist() == [10] * 10
    # disjoint: no validation image is also a training image
    tr_set = {bytes(im.numpy()) for im in tr.images}
    assert not any(bytes(im.numpy()) in tr_set for im in va.images)


# --------------------------------------------------------------------------- ImageFolder

def test_image_folder_directory_reads_exact_pixels(image_folder):
    root, arrays = image_folder
    ds = load_image_folder(root, "train", cache=False)
    assert ds.classes == ["cat", "dog"] and len(ds) == 5 and ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert ds.images.shape == (5, 3, 8, 8) and ds.name == "pets"
    np.testing.assert_array_equal(ds.images[3].permute(1, 2, 0).numpy(), arrays[("train", "dog", 0)])
    te = load_dataset(str(root), "test")
    assert len(te) == 2 and te.split == "test"
    with pytest.raises(DataError, match=r"no 'val' split \(found: test, train\)"):
        load_image_folder(root, "val", cache=False)


def test_image_folder_zip_with_top_folder_and_cache(tmp_path, image_folder, monkeypatch):
    root, arrays = image_folder
    zpath = tmp_path / "pets.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(root.rglob("*.png")):
            zf.write(p, "pets_top/" + p.relative_to(root).as_posix())
    cache = tmp_path / "cache"
    monkeypatch.setenv("ADVCL_CACHE", str(cache))
    ds = load_dataset(str(zpath), "train")
    assert ds.classes == ["cat", "dog"] and len(ds) == 5 and ds.name == "pets"
    np.testing.assert_array_equal(ds.images[0].permute(1, 2, 0).numpy(), arrays[("train", "cat", 0)])
    assert len(list(cache.glob("imagefolder-*.npz"))) == 1, "decoded arrays are cached"
    again = load_dataset(str(zpath), "train")
    assert torch.equal(again.images, ds.images) and torch.equal(again.labels, ds.labels)


def test_single_split_folder_mixed_sizes_and_resize(tmp_path):
    root = tmp_path / "flat"
    for i, a in enumerate(tiny_arrays(2, size=8)):
        write_png(root / "a" / f"{i}.png", a)
    write_png(root / "b" / "0.png", tiny_arrays(1, size=12)[0])
    with pytest.raises(DataError, match=r"different sizes.*image_size=32.*--image-size 32"):
        load_image_folder(root, cache=False)
    ds = load_image_folder(root, image_size=6, cache=False)
    assert ds.images.shape == (3, 3, 6, 6) and ds.classes == ["a", "b"]
    with pytest.raises(DataError, match=r"no split folders.*split='test' would silently reuse the training images"):
        load_image_folder(root, "test", image_size=6, cache=False)
    write_png(tmp_path / "wide" / "a" / "0.png", np.zeros((4, 8, 3), np.uint8))
    with pytest.raises(DataError, match="4x8, not square"):
        load_image_folder(tmp_path / "wide", cache=False)


def test_bad_paths_and_files_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*ImageFolder directory.*sample, cifar10"):
        load_dataset(str(tmp_path / "missing_dir"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="neither a directory nor a .zip"):
        load_image_folder(tmp_path / "notes.txt", cache=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images in ImageFolder layout"):
        load_image_folder(tmp_path / "empty", cache=False)
    bad = tmp_path / "broken" / "a"
    bad.mkdir(parents=True)
    (bad / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot decode image .*0\.png"):
        load_image_folder(tmp_path / "broken", cache=False)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_torchvision_dataset_offline_says_how_to_get_the_files(tmp_path, name):
    with pytest.raises(DataError) as e:
        load_dataset(name, "train" if name != "stl10" else "test", root=str(tmp_path))   # download=False: no network
    msg = str(e.value)
    assert str(tmp_path) in msg and "download=True" in msg and "ImageFolder" in msg
