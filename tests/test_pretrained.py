"""Shipped encoders: every file matches its manifest and loads strictly; an altered file is refused by name."""
from __future__ import annotations

import json

import pytest
import torch

from advcl_lite import pretrained as P
from advcl_lite.cli import main
from advcl_lite.models import ResNet18
from advcl_lite.presets import get_preset


@pytest.fixture
def tiny_set(tmp_path):
    torch.manual_seed(0)
    for name in ("random", "acl"):
        P.save_encoder(ResNet18(4), name, tmp_path, {"method": name, "label": name, "epochs": 1,
                                                     "slf": {"sa": 0.5, "sa_ci": [0.4, 0.6], "ra": 0.1,
                                                             "ra_ci": [0.05, 0.15], "n": 100}})
    return tmp_path


def test_saved_encoders_round_trip_in_fp16_and_load_strictly(tiny_set):
    assert P.available(tiny_set) == ["random", "acl"]                  # the floor first
    enc = P.load_pretrained_encoder("acl", folder=tiny_set)
    assert isinstance(enc, ResNet18) and not enc.training and enc.base_width == 4
    assert all(p.dtype == torch.float32 for p in enc.parameters())
    m = enc.manifest
    assert m["dtype"] == "float16" and m["architecture"]["base_width"] == 4 and len(m["sha256"]) == 64
    ref = torch.load(tiny_set / "acl.pt", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in ref.values() if v.is_floating_point())
    assert "| acl | acl |" in P.table(tiny_set) and "10.0 [5.0, 15.0]" in P.table(tiny_set)


def test_a_flipped_byte_a_truncation_and_a_missing_file_are_refused_by_name(tiny_set):
    path = tiny_set / "acl.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(P.EncoderError, match=r"acl\.pt does not match its manifest.*altered or truncated.*make_encoder_set"):
        P.load_pretrained_encoder("acl", folder=tiny_set)
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(P.EncoderError, match=r"acl\.pt does not match"):
        P.load_pretrained_encoder("acl", folder=tiny_set)
    path.unlink()
    with pytest.raises(P.EncoderError, match=r"acl\.pt is missing"):
        P.load_pretrained_encoder("acl", folder=tiny_set)
    with pytest.raises(P.EncoderError, match=r"no shipped encoder 'moco'.*have: random, acl"):
        P.load_pretrained_encoder("moco", folder=tiny_set)


def test_a_manifest_for_another_architecture_fails_the_strict_load(tiny_set):
    m = json.loads((tiny_set / "acl.json").read_text())
    m["architecture"]["base_width"] = 8
    (tiny_set / "acl.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="shape mismatches"):
        P.load_pretrained_encoder("acl", folder=tiny_set)


def test_cli_list_and_verify(tiny_set, monkeypatch, capsys):
    monkeypatch.setenv("ADVCL_ENCODERS", str(tiny_set))
    assert main(["pretrained", "list"]) == 0
    assert "| random | random |" in capsys.readouterr().out
    assert main(["pretrained", "verify"]) == 0
    assert "all 2 shipped encoders verified" in capsys.readouterr().out
    p = tiny_set / "random.pt"
    p.write_bytes(p.read_bytes()[:-10])
    assert main(["pretrained", "verify"]) == 2
    out, err = capsys.readouterr()
    assert "FAILED  random" in out and "ok      acl" in out and err.startswith("error: 1 of 2")


def test_the_shipped_set_is_complete_small_and_verified():
    names = P.available()
    assert names == list(P.ORDER), f"shipped encoders: {names}"
    total = 0
    for name in names:
        enc = P.load_pretrained_encoder(name)                              # hash + strict load
        m = enc.manifest
        total += m["bytes"]
        assert m["bytes"] <= 16e6 and m["dtype"] == "float16"
        assert m["slf"]["n"] >= 2000 and 0 <= m["slf"]["ra"] <= m["slf"]["sa"] <= 1
        assert m["slf"]["ra_ci"][0] <= m["slf"]["ra"] <= m["slf"]["ra_ci"][1]
        assert m["command"]["train"].startswith("python benchmarks/results.py")
        if name != "random":
            assert m["epochs"] >= 1 and m["images_seen"] > 0 and m["training"]["method"] == m["method"]
            assert m["route"] == ("normal" if name == "simclr" else "pgd")
    assert total <= 30e6
    assert P.manifest("advcl")["training"]["pseudo"] and not P.manifest("advcl-nopl")["training"]["pseudo"]


def test_encoders_switch_resolves_per_preset_and_rejects_other_values():
    assert P.resolve_encoders("auto", "quick") == "pretrained"
    assert P.resolve_encoders("auto", "smoke") == "train"          # CI keeps exercising training
    assert P.resolve_encoders("auto", get_preset("benchmark")) == "train"
    assert P.resolve_encoders("pretrained", "smoke") == "pretrained"
    assert P.resolve_encoders("train", "quick") == "train"
    with pytest.raises(ValueError, match=r"encoders='shipped' is not one of auto, pretrained, train"):
        P.resolve_encoders("shipped", "quick")


def test_load_set_keys_rows_by_the_notebooks_names(tiny_set):
    got = P.load_set(folder=tiny_set)
    assert list(got) == ["Random init", "ACL"] and all(isinstance(e, ResNet18) for e in got.values())
    assert P.history("acl", folder=tiny_set) == []                  # the tiny set records none
    assert P.history("advcl") and all("loss_cl" in h and "loss_ps" in h for h in P.history("advcl"))


def test_the_notebooks_encoder_set_says_where_each_encoder_came_from():
    """advcl_lite.encoders: one record per table row, in the notebooks' order, for the shipped set."""
    from advcl_lite.encoders import get_encoders
    from advcl_lite.presets import get_preset
    P = get_preset("quick")
    rows = get_encoders("pretrained", P)
    assert list(rows) == ["SimCLR", "ACL", "AdvCL", "AdvCL without pseudo-labels", "Random init"]
    assert [e.kind for e in rows.values()] == ["shipped"] * 4 + ["random"]
    assert rows["ACL"].cache_name == "shipped-acl" and rows["ACL"].seconds > 0 and rows["ACL"].history
    assert rows["Random init"].seconds == 0.0 and "random weights" in rows["Random init"].describe()
    assert "sha256" in rows["AdvCL"].describe()
    assert list(get_encoders("pretrained", P, keys=("simclr", "advcl"))) == ["SimCLR", "AdvCL"]
    with pytest.raises(ValueError, match="unknown encoder key"):
        get_encoders("pretrained", P, keys=("moco",))
