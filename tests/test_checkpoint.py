"""Checkpoints: atomic save, safe (weights_only) load, strict weights, clear errors naming the file."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from advcl_lite import checkpoint as ckm
from advcl_lite.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint, strip_prefix
from advcl_lite.models import ResNet18


class _Evil:
    """Unpickling this would create a file: weights_only loading must refuse it."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return ResNet18(4, num_classes=3)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_roundtrip_with_meta_and_extra_state(tmp_path, net):
    path = tmp_path / "sub" / "model.pt"
    meta = {"config": {"routes": ("normal", "pgd"), "dir": tmp_path}, "seed": 3, "eps": 8 / 255}
    save_checkpoint(path, kind="finetune", state_dict=net.state_dict(), meta=meta, history="[1, 2]")
    assert path.exists() and leftovers(path.parent) == []
    ck = load_checkpoint(path, kind=("pretrain", "finetune"))
    assert ck["format"] == "advcl_lite" and ck["format_version"] == ckm.FORMAT_VERSION and ck["kind"] == "finetune"
    assert ck["meta"] == {"config": {"routes": ["normal", "pgd"], "dir": str(tmp_path)}, "seed": 3, "eps": 8 / 255}
    assert ck["history"] == "[1, 2]" and ck["path"] == str(path)
    other = ResNet18(4, num_classes=3)
    load_weights(other, ck["state_dict"], str(path))
    for k, v in net.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    # the file is a plain dict of tensors and builtins: torch's safe loader reads it directly
    assert isinstance(torch.load(path, weights_only=True), dict)


def test_save_is_atomic_a_crash_keeps_the_old_file(tmp_path, net, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, kind="pretrain", state_dict=net.state_dict(), meta={"epoch": 1})
    good = path.read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckm.torch, "save", crash)
    with pytest.raises(CheckpointError, match=r"cannot write .*last\.pt: disk full; the file it would replace"):
        save_checkpoint(path, kind="pretrain", state_dict=net.state_dict(), meta={"epoch": 2})
    assert path.read_bytes() == good and leftovers(tmp_path) == []
    monkeypatch.undo()
    assert load_checkpoint(path)["meta"]["epoch"] == 1
    save_checkpoint(path, kind="pretrain", state_dict=net.state_dict(), meta={"epoch": 2})   # overwrite
    assert load_checkpoint(path)["meta"]["epoch"] == 2 and leftovers(tmp_path) == []


def test_dataparallel_prefix_is_stripped_on_save_and_tolerated_on_load(tmp_path, net):
    wrapped = nn.DataParallel(net)
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    path = save_checkpoint(tmp_path / "dp.pt", kind="pretrain", state_dict=wrapped.state_dict())
    sd = load_checkpoint(path)["state_dict"]
    assert not any(k.startswith("module.") for k in sd)
    load_weights(ResNet18(4, num_classes=3), wrapped.state_dict())          # prefixed dict, plain model
    load_weights(nn.DataParallel(ResNet18(4, num_classes=3)), sd)         # plain dict, wrapped model
    assert strip_prefix({"module._orig_mod.fc.weight": 1, "fc.bias": 2}) == {"fc.weight": 1, "fc.bias": 2}


def test_truncated_and_random_files_are_named_in_the_error(tmp_path, net):
    path = save_checkpoint(tmp_path / "good.pt", kind="pretrain", state_dict=net.state_dict())
    data = path.read_bytes()
    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"'.*truncated\.pt' is truncated or corrupt"):
        load_checkpoint(trunc)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"junk\.pt.*truncated or corrupt"):
        load_checkpoint(junk)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match=r"'.*nope\.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_wrong_kind_foreign_file_and_newer_format(tmp_path, net):
    path = save_checkpoint(tmp_path / "ft.pt", kind="finetune", state_dict=net.state_dict())
    with pytest.raises(CheckpointError, match=r"ft\.pt' is a 'finetune' checkpoint, but a 'pretrain' checkpoint"):
        load_checkpoint(path, kind="pretrain")
    foreign = tmp_path / "plain_state_dict.pt"
    torch.save(net.state_dict(), foreign)
    with pytest.raises(CheckpointError, match=r"plain_state_dict\.pt' is not an advcl_lite checkpoint.*load_weights"):
        load_checkpoint(foreign)
    future = tmp_path / "future.pt"
    torch.save({"format": "advcl_lite", "format_version": 99, "kind": "pretrain", "meta": {}, "state_dict": {}}, future)
    with pytest.raises(CheckpointError, match="format version 99.*upgrade"):
        load_checkpoint(future)


def test_weights_only_refuses_pickled_code(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "advcl_lite", "format_version": 1, "kind": "pretrain", "meta": {},
                "state_dict": {}, "payload": _Evil(str(target))}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*not written by advcl_lite") as info:
        load_checkpoint(evil)
    assert not target.exists(), "loading must not run code stored in the file"
    assert "weights_only=False" not in str(info.value), "never suggest the unsafe loader"


def test_metadata_subclasses_of_plain_types_are_stored_plain(tmp_path, net):
    import enum

    class Mode(enum.IntEnum):
        A = 3

    path = save_checkpoint(tmp_path / "v.pt", kind="pretrain", state_dict=net.state_dict(),
                           meta={"torch": torch.__version__, "mode": Mode.A, "flag": True})
    meta = load_checkpoint(path)["meta"]
    assert meta == {"torch": str(torch.__version__), "mode": 3, "flag": True}
    assert type(meta["torch"]) is str and type(meta["mode"]) is int and type(meta["flag"]) is bool


def test_mismatched_keys_and_shapes_fail_loudly(tmp_path, net):
    sd = net.state_dict()
    with pytest.raises(CheckpointError, match=r"run\.pt does not match the model: 1 missing keys \(e\.g\. \['fc\.bias'\]\)"):
        load_weights(net, {k: v for k, v in sd.items() if k != "fc.bias"}, "run.pt")
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(e\.g\. \['extra\.weight'\]\)"):
        load_weights(net, {**sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"shape mismatches \(e\.g\. fc\.weight: file \(5, 32\) vs model \(3, 32\)\)"):
        load_weights(net, {**sd, "fc.weight": torch.zeros(5, 32)})
    wider = ResNet18(8, num_classes=3).state_dict()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match="shape mismatches.*another width"):
        load_weights(net, wider)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "nothing was loaded partially"
