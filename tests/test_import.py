"""Importing published checkpoints (issue 29): each code's key layout, written here from an advcl_lite network
with random weights, imports to an encoder whose outputs equal the source network's route exactly; strict after
the mapping; unknown or ambiguous layouts are one line."""
from __future__ import annotations

import re

import pytest
import torch

from advcl_lite.cli import main
from advcl_lite.models import ContrastiveNet, InputNormalize, ResNet18
from advcl_lite.pretrained import ImportError_, detect_format, import_encoder, load_encoder_file

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _source(routes, width=4, seed=0) -> ContrastiveNet:
    torch.manual_seed(seed)
    net = ContrastiveNet(width, routes=routes, pseudo_ks=(2, 10))
    with torch.no_grad():                       # BN statistics that differ by route, so a wrong route shows
        for k, v in net.state_dict().items():
            if "running" in k or k.endswith(("bns.normal.weight", "bns.pgd.bias")):
                v.copy_(torch.rand_like(v) + 0.5)
    return net.eval()


def _original_names(backbone_state, routes) -> dict[str, torch.Tensor]:
    """advcl_lite's backbone keys in the originals' naming: `<bn>.bn_list.<i>`, `downsample.conv` / `downsample.bn`."""
    out = {}
    for k, v in backbone_state.items():
        k = k.replace(".shortcut.0.", ".downsample.conv.").replace(".shortcut.1.", ".downsample.bn.")
        m = re.match(r"^(.*)\.bns\.(\w+)\.(.*)$", k)
        if m:
            k = f"{m.group(1)}.bn_list.{routes.index(m.group(2))}.{m.group(3)}"
        out[k] = v.clone()
    return out


def write_advcl(net, path):
    """LijieFan/AdvCL, pretraining_advCL.py: {'model': DataParallel state dict, 'epoch', 'rng_state'}; heads fc_K,
    head_proj, head_pred, head_ce."""
    sd = _original_names(net.backbone.state_dict(), ("normal", "pgd", "pgd_ce"))
    d = net.backbone.feature_dim
    heads = {"fc_002.weight": torch.randn(2, d), "fc_002.bias": torch.zeros(2), "head_proj.0.weight": torch.randn(d, d),
             "head_proj.1.running_mean": torch.zeros(d), "head_pred.0.weight": torch.randn(8, 8),
             "head_ce.3.weight": torch.randn(1000, d)}
    torch.save({"model": {f"module.{k}": v for k, v in {**sd, **heads}.items()}, "epoch": 1000,
                "rng_state": torch.get_rng_state()}, path)


def _acl_state(net, norm=IMAGENET):
    sd = _original_names(net.backbone.state_dict(), ("normal", "pgd"))
    d = net.backbone.feature_dim
    head = {"fc.fc1.weight": torch.randn(d, d), "fc.fc1.bias": torch.zeros(d), "fc.bn1.bn_list.0.weight": torch.ones(d),
            "fc.bn1.bn_list.1.weight": torch.ones(d), "fc.fc3.weight": torch.randn(d, d)}
    return {"normalize.mean": torch.tensor(norm[0]), "normalize.std": torch.tensor(norm[1]), **sd, **head}


def write_acl(net, path):
    """VITA-Group/Adversarial-Contrastive-Learning, train_simCLR.py with --ACL_DS: {'epoch', 'state_dict', 'optim'}."""
    torch.save({"epoch": 1000, "state_dict": _acl_state(net), "optim": {"state": {}, "param_groups": []}}, path)


def write_dynacl(net, path):
    """PKU-ML/DYNACL model.pt: the whole momentum model, encoder_q. and encoder_k. (the released, evaluated copy)."""
    k_state = _acl_state(net)
    q_state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in k_state.items()}
    torch.save({"epoch": 100, "state_dict": {**{f"encoder_q.{k}": v for k, v in q_state.items()},
                                             **{f"encoder_k.{k}": v for k, v in k_state.items()}}}, path)


def write_robustssl_deacl(net, path):
    """RobustSSL_Benchmark's DeACL: one BN per layer, `backbone.` prefix, torchvision-style downsample.0/1."""
    plain = {k.replace(".shortcut.", ".downsample."): v for k, v in net.backbone.state_dict().items()}
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in plain.items()}}, path)


def _reference(net, route, x, norm=None):
    with torch.no_grad():
        return net.features(InputNormalize(*norm)(x) if norm else x, route)


@pytest.mark.parametrize("fmt, writer, routes, norm", [
    ("advcl", write_advcl, ("normal", "pgd", "pgd_ce"), None),
    ("acl", write_acl, ("normal", "pgd"), IMAGENET),
    ("dynacl", write_dynacl, ("normal", "pgd"), IMAGENET)])
def test_each_layout_imports_to_the_source_route_exactly(tmp_path, fmt, writer, routes, norm):
    net = _source(routes)
    writer(net, tmp_path / "src.pt")
    x = torch.rand(4, 3, 32, 32)
    for route in ("pgd", "normal"):
        m = import_encoder(tmp_path / "src.pt", tmp_path / "out", format=fmt, route=route, name=f"e-{route}")
        enc = load_encoder_file(tmp_path / "out" / f"e-{route}.pt").eval()
        with torch.no_grad():
            assert torch.equal(enc.features(x), _reference(net, route, x, norm)), (fmt, route)
        assert m["route"] == route and m["source"]["format"] == fmt and m["source"]["routes"] == list(routes)
        assert (m["architecture"]["input_normalize"] is not None) == (norm is not None)
        assert "head" in m["dropped"] and m["dropped"][f"route {routes.index('pgd' if route == 'normal' else 'normal')}"]
    if fmt == "dynacl":
        assert any("encoder_k" in n for n in m["source"]["notes"])


def test_a_single_bn_robustssl_file_imports_and_the_default_route_is_pgd(tmp_path):
    plain = _source(None)                       # routes None: one BN per layer, as DeACL's backbone
    write_robustssl_deacl(plain, tmp_path / "deacl.pt")
    m = import_encoder(tmp_path / "deacl.pt", tmp_path / "out")            # auto: the backbone. prefix
    enc = load_encoder_file(tmp_path / "out" / "deacl.pt").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc.features(x), plain.backbone.features(x))
    assert m["source"]["format"] == "robustssl" and m["route"] is None
    net = _source(("normal", "pgd", "pgd_ce"))
    write_advcl(net, tmp_path / "a.pt")
    assert import_encoder(tmp_path / "a.pt", tmp_path / "out")["route"] == "pgd"   # each code's finetuning route


def test_auto_detects_each_layout_and_refuses_an_ambiguous_one(tmp_path):
    for writer, routes, want in ((write_advcl, ("normal", "pgd", "pgd_ce"), "advcl"),
                                 (write_dynacl, ("normal", "pgd"), "dynacl"),
                                 (write_robustssl_deacl, None, "robustssl")):
        writer(_source(routes), tmp_path / f"{want}.pt")
        assert import_encoder(tmp_path / f"{want}.pt", tmp_path / "out")["source"]["format"] == want
    write_acl(_source(("normal", "pgd")), tmp_path / "acl.pt")
    with pytest.raises(ImportError_, match="cannot tell which; pass --format acl, dynacl or robustssl"):
        import_encoder(tmp_path / "acl.pt", tmp_path / "out")
    assert detect_format({"conv1.weight": torch.zeros(1)}) is None


def test_strict_after_the_mapping_names_the_keys(tmp_path, capsys):
    net = _source(("normal", "pgd"))
    state = _acl_state(net)
    cases = {"missing": {k: v for k, v in state.items() if k != "layer2.0.downsample.conv.weight"},
             "shape": {**state, "layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1)},
             "extra": {**state, "layer5.0.conv1.weight": torch.zeros(1)}}
    for what, sd in cases.items():
        torch.save({"state_dict": sd}, tmp_path / f"{what}.pt")
    with pytest.raises(ImportError_, match=r"does not fill: layer2\.0\.shortcut\.0\.weight"):
        import_encoder(tmp_path / "missing.pt", tmp_path / "o", format="acl")
    with pytest.raises(ImportError_, match=r"wrong shapes: layer1\.0\.conv1\.weight \(4, 4, 1, 1\)"):
        import_encoder(tmp_path / "shape.pt", tmp_path / "o", format="acl")
    with pytest.raises(ImportError_, match=r"no place in the network: layer5\.0\.conv1\.weight"):
        import_encoder(tmp_path / "extra.pt", tmp_path / "o", format="acl")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    rc = main(["import-encoder", str(tmp_path / "notes.txt"), "--format", "acl", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "notes.txt is not a checkpoint" in err
    torch.save({"weights": {"a": torch.zeros(1)}}, tmp_path / "odd.pt")
    rc = main(["import-encoder", str(tmp_path / "odd.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no state dict found" in err
    with pytest.raises(ImportError_, match="route 'pgd_ce' is not in this acl file"):
        import_encoder(tmp_path / "missing.pt", tmp_path / "o", format="acl", route="pgd_ce")


def test_the_cli_imports_and_finetune_and_evaluate_take_the_file(tmp_path, capsys):
    from advcl_lite.finetune import finetune, load_finetuned
    from advcl_lite.presets import get_preset
    write_acl(_source(("normal", "pgd"), width=4), tmp_path / "ACL_DS.pt")
    assert main(["import-encoder", str(tmp_path / "ACL_DS.pt"), "--format", "acl", "--out", str(tmp_path / "zoo")]) == 0
    out = capsys.readouterr().out
    assert "acl layout, width 4, route pgd" in out and "input normalisation yes" in out
    assert main(["import-encoder", str(tmp_path / "ACL_DS.pt"), "--format", "acl", "--out", str(tmp_path / "zoo")]) == 2
    assert "--overwrite" in capsys.readouterr().err                   # an import is never replaced silently
    res = finetune(tmp_path / "zoo" / "ACL_DS.pt", "slf", get_preset("smoke", ft_subset=64), data="sample",
                   out_dir=tmp_path / "ft", device="cpu", progress=False)
    model, meta = load_finetuned(tmp_path / "ft" / "model.pt")          # rebuilt with its input normalisation
    assert meta["encoder"]["input_normalize"]["mean"] == pytest.approx(IMAGENET[0])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), res.model.eval()(x))
    assert isinstance(model.encoder, ResNet18) and model.encoder.normalize is not None


def test_pseudo_labels_take_an_imported_encoder_file(tmp_path, capsys):
    from advcl_lite.pseudo_labels import PseudoLabels
    write_acl(_source(("normal", "pgd"), width=4), tmp_path / "src.pt")
    import_encoder(tmp_path / "src.pt", tmp_path / "zoo", format="acl", route="normal", name="acl")
    rc = main(["pseudo-labels", "--encoder", str(tmp_path / "zoo" / "acl.pt"), "--preset", "smoke", "--k", "2,5",
               "--out", str(tmp_path / "labels.pt"), "--set", "train_subset=64", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    pl = PseudoLabels.load(tmp_path / "labels.pt")
    assert pl.ks == (2, 5) and len(pl) == 64 and pl.meta["encoder"] == "acl"


def test_notebook_04_runs_on_a_folder_of_imported_encoders(run_nb, tmp_path):
    """encoders=<folder>: one row per imported encoder, named by its manifest, finetuned (SLF at smoke) and
    attacked like the shipped set; the comparisons pair the folder's encoders."""
    write_advcl(_source(("normal", "pgd", "pgd_ce"), width=4, seed=1), tmp_path / "AdvCL.pt")
    write_acl(_source(("normal", "pgd"), width=4, seed=2), tmp_path / "ACL_DS.pt")
    zoo = tmp_path / "zoo"
    import_encoder(tmp_path / "AdvCL.pt", zoo)
    import_encoder(tmp_path / "ACL_DS.pt", zoo, format="acl")
    rec = run_nb("04", encoders=str(zoo))
    assert rec["schemes"] == ["SLF"] and rec["encoders"] == str(zoo.resolve())
    assert sorted(r["method"] for r in rec["results"]) == ["ACL_DS", "AdvCL"]
    assert all(r["n"] == 64 and r["ra_ci"][0] <= r["ra"] <= r["ra_ci"][1] for r in rec["results"])
    assert any(c.startswith("SLF: ACL_DS RA") and "vs AdvCL" in c for c in rec["comparisons"])
