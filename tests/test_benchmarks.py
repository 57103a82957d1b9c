"""The benchmark scripts that no other test runs: the GPU step script on its CPU path, and results.py's --set.

``benchmarks/gpu_step.py`` is meant for a GPU session with a few minutes of device time, so it has to
work the first time it meets one; these tests run the same code on the CPU at tiny sizes.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY = ["--data", "sample", "--device", "cpu", "--width", "4", "--batch", "8", "--ks", "2,3",
        "--warmup", "0", "--steps", "1", "--no-compile"]


def test_gpu_step_prints_a_row_per_variant_on_the_cpu(capsys):
    gpu_step = _load("gpu_step")
    torch.set_num_threads(2)
    assert gpu_step.main(TINY) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"variant", "eager", "batched"}   # no compile variants with --no-compile, none off the GPU
    for name in ("eager", "batched"):
        cells = [c.strip() for c in rows[name].split("|")[1:-1]]
        assert float(cells[1]) > 0 and float(cells[2]) > 0, rows[name]   # s / step, images / s
        assert cells[4].endswith(" min") and cells[5].endswith(" h")
    assert "command: python benchmarks/gpu_step.py --data sample" in out


def test_gpu_step_variants_compute_the_same_step():
    """eager and batched are the same math: the same first-step loss from the same seed and images."""
    gpu_step = _load("gpu_step")
    args = gpu_step.build_parser().parse_args(TINY[:-5] + ["--warmup", "0", "--steps", "1"])
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    dev = torch.device("cpu")
    eager = gpu_step.run_variant("eager", args, dev, x)
    batched = gpu_step.run_variant("batched", args, dev, x)
    assert eager["loss"] == pytest.approx(batched["loss"], rel=1e-5)
    assert eager["images_per_s"] > 0 and batched["images_per_s"] > 0


def test_gpu_step_skips_variants_past_its_budget(capsys):
    gpu_step = _load("gpu_step")
    assert gpu_step.main(TINY + ["--budget-s", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped: past --budget-s 0 s") == 2


def test_results_set_rejects_a_bad_field_in_one_line():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "results.py"), "--preset", "smoke",
                        "--set", "amp=bf17", "--out", "unused"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "results.py: error: preset field 'amp' must be one of ('none', 'bf16', 'fp16'), not 'bf17'")
    assert not (ROOT / "unused").exists()


def test_advcl_step_profile_prints_the_op_table(capsys):
    advcl_step = _load("advcl_step")
    assert advcl_step.main(["--widths", "4", "--batch", "4", "--pgd", "1", "--threads", "1", "--contiguous",
                            "--profile", "batched"]) == 0
    out = capsys.readouterr().out
    assert "Self CPU time total" in out and "aten::convolution_backward" in out


@pytest.mark.parametrize("what", ["layout", "relu"])
def test_advcl_step_ab_times_both_variants_and_restores_the_model(what):
    advcl_step = _load("advcl_step")
    from advcl_lite import models
    saved = models.F
    r = advcl_step.ab(what, width=4, batch=8, steps=1, threads=2, pgd=1)
    assert set(r["median_s"]) == {"A", "B"} and all(v > 0 for v in r["median_s"].values())
    assert r["ratio_b_over_a"] == pytest.approx(r["median_s"]["B"] / r["median_s"]["A"])
    assert models.F is saved


def test_in_place_relu_candidate_computes_the_same_features():
    advcl_step = _load("advcl_step")
    from advcl_lite.methods import build_net
    torch.manual_seed(0)
    net, x = build_net("advcl", 4).train(), torch.rand(6, 3, 32, 32)
    ref = net.features(x, "pgd")
    with advcl_step._relu_inplace(True):
        got = net.features(x, "pgd")
        from advcl_lite import models
        t = torch.tensor([-1.0, 2.0])
        models.F.relu(t)
        assert t.tolist() == [0.0, 2.0]            # the network's relu did run in place
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


TINY_STUDY = ["--preset", "smoke", "--data", "sample", "--device", "cpu", "--threads", "1",
              "--set", "train_subset=64", "--set", "batch_size=32", "--set", "base_width=4", "--set", "ft_subset=64",
              "--set", "eval_n=16", "--set", "eval_pgd_steps=2", "--set", "ft_pgd_steps=1", "--set", "pgd_steps=1"]


@pytest.mark.parametrize("study, rows, expect", [
    ("pseudo", ["oracle", "random"], {("oracle", "SLF"), ("random", "SLF")}),
    ("transfer", ["random"], {("random", "SLF"), ("random", "ALF")}),
    ("methods", ["dynacl-air"], {("dynacl-air", "SLF"), ("dynacl-air", "ALF")})])
def test_each_study_writes_its_records_and_a_second_call_recomputes_nothing(tmp_path, monkeypatch, study, rows, expect):
    """benchmarks/studies.py (issue 27) at a tiny size: one record per row and scheme with its interval, the
    oracle's labels score NMI 1 and random labels near 0, the transfer rows train on classes 5-9 only; a second
    call finds every row done and trains nothing."""
    import json
    import sys
    studies = _load("studies")
    argv = ["studies.py", "--study", study, "--rows", *rows, "--out", str(tmp_path), *TINY_STUDY]
    monkeypatch.setattr(sys, "argv", argv)
    studies.main()
    recs = json.loads((tmp_path / "results.json").read_text())
    assert {(r["row"], r["scheme"]) for r in recs} == expect
    assert all(r["n"] == 16 and r["ra_ci"][0] <= r["ra"] <= r["ra_ci"][1] for r in recs)
    if study == "pseudo":
        by = {r["row"]: r for r in recs}
        assert by["oracle"]["nmi"] == pytest.approx(1.0) and by["random"]["nmi"] < 0.5   # 64 images: NMI of chance is not 0
    elif study == "methods":
        assert all(r["air"] and r["dynacl_momentum"] == 0 for r in recs)   # DynACL-AIR as AIR's code runs it
    else:
        assert all(r["finetune_data"].endswith("classes5-9") and r["pretrain_data"].endswith("classes0-4")
                   for r in recs)
    assert "| comparison (RA, PGD-20)" in (tmp_path / "results.md").read_text()
    monkeypatch.setattr(studies, "get_or_finetune", lambda *a, **k: pytest.fail("a done row was recomputed"))
    studies.main()


def test_gpu_pretrain_cpu_path_plans_epochs_trains_and_writes_its_numbers(tmp_path):
    """benchmarks/gpu_pretrain.py at a tiny size on the CPU: a probe, planned epochs, an encoder file and a JSON
    of what it measured, for ACL and AdvCL with pseudo-labels."""
    import json
    gpu_pretrain = _load("gpu_pretrain")
    assert gpu_pretrain.plan_epochs(180, 1000, 50_000) == 3 and gpu_pretrain.plan_epochs(1, 1, 50_000) == 1
    rc = gpu_pretrain.main(["--data", "sample", "--device", "cpu", "--width", "4", "--batch", "16", "--probe", "32",
                            "--train-subset", "32", "--budget-s", "0.5", "--ft-epochs", "1", "--eval-n", "8",
                            "--amp", "none", "--out", str(tmp_path)])
    assert rc == 0
    rep = json.loads((tmp_path / "gpu_pretrain.json").read_text())
    assert set(rep["runs"]) == {"acl", "advcl"} and rep["images"] == 32
    for run in rep["runs"].values():
        assert run["epochs"] >= 1 and run["n"] == 8 and run["ra_ci"][0] <= run["ra"] <= run["ra_ci"][1]
        assert (tmp_path / "encoders" / run["encoder_file"]).exists()
