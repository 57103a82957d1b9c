"""Evaluation: Wilson intervals, the attack-hook loop (clean, PGD-20, AutoAttack, callables), accuracy vs eps.

Records, tables and the comparison of intervals are tested in test_results.py, the figures in test_viz.py.
"""
from __future__ import annotations

import math

import matplotlib
import pytest
import torch
import torch.nn as nn

from advcl_lite.attacks import PGD
from advcl_lite.attacks import AutoAttackHook
from advcl_lite.evaluate import accuracy_ci, accuracy_vs_eps, evaluate, make_attack

matplotlib.use("Agg")
EPS = 8 / 255


@pytest.fixture(scope="module")
def own_labels(tiny, test_set):
    """16 test images labelled with the tiny model's own predictions: SA is 100 %, so attacks have work to do."""
    x, _ = test_set.tensors(16)
    with torch.no_grad():
        y = tiny(x).argmax(1)
    return x, y


class FirstPixel(nn.Module):
    """Predicts class round(x[0, 0, 0] * (C - 1)): an attack can set the pixel to any class it likes."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.c = c
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        k = (x[:, 0, 0, 0] * (self.c - 1)).round().long().clamp(0, self.c - 1)
        return nn.functional.one_hot(k, self.c).float() + 0 * self.dummy


# --------------------------------------------------------------------------- intervals

def _wilson_by_inversion(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson interval as the set of p whose score test accepts k/n (bisection, independent of the formula)."""
    ph = k / n

    def accepts(p):
        return abs(ph - p) <= z * math.sqrt(p * (1 - p) / n) + 1e-15

    def edge(lo, hi, inside_at_hi):
        for _ in range(200):
            mid = (lo + hi) / 2
            if accepts(mid) == inside_at_hi:
                hi = mid
            else:
                lo = mid
        return (lo + hi) / 2
    low = 0.0 if k == 0 else edge(0.0, ph, True)
    high = 1.0 if k == n else edge(ph, 1.0, False)
    return low, high


@pytest.mark.parametrize("k,n", [(476, 1000), (0, 10), (10, 10), (3, 7), (1, 64), (950, 1000)])
def test_accuracy_ci_matches_score_test_inversion(k, n):
    low, high = accuracy_ci(k, n)
    ref = _wilson_by_inversion(k, n)
    assert low == pytest.approx(ref[0], abs=1e-9) and high == pytest.approx(ref[1], abs=1e-9)
    assert 0 <= low <= k / n <= high <= 1


def test_accuracy_ci_known_values():
    low, high = accuracy_ci(476, 1000)
    assert (round(100 * low, 1), round(100 * high, 1)) == (44.5, 50.7)
    z2 = 1.96 ** 2
    assert accuracy_ci(0, 20)[1] == pytest.approx(z2 / (20 + z2))        # closed form at 0 successes
    assert accuracy_ci(20, 20)[0] == pytest.approx(20 / (20 + z2))
    lo, hi = accuracy_ci(3, 11)
    lo2, hi2 = accuracy_ci(8, 11)
    assert (lo, hi) == pytest.approx((1 - hi2, 1 - lo2))                 # symmetry
    assert accuracy_ci(0, 0) == (0.0, 1.0)
    assert accuracy_ci(50, 100, z=2.576)[1] - accuracy_ci(50, 100)[1] > 0  # 99 % is wider
    with pytest.raises(ValueError):
        accuracy_ci(5, 4)


# --------------------------------------------------------------------------- the loop

def test_pgd20_stays_in_eps_ball_and_image_range(tiny, own_labels):
    x, y = own_labels
    att = make_attack(tiny, "pgd20")
    assert isinstance(att, PGD) and att.steps == 20 and att.alpha == pytest.approx(2 / 255) and att.random_start
    x_adv = att(x, y)
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    r = evaluate(tiny, (x, y), attack="pgd20", progress=False)
    assert r["max_linf"] <= EPS + 1e-6
    assert r["ra"] < r["sa"] == 1.0     # labels are the model's own predictions; PGD-20 breaks some


def test_robust_never_exceeds_clean_on_real_labels(tiny, test_set):
    r = evaluate(tiny, test_set, attack="pgd20", n=40, progress=False, seed=1)
    assert r["n"] == 40 and r["ra"] == r["robust"] / 40 and r["sa"] == r["correct"] / 40
    assert r["sa_ci"][0] <= r["sa"] <= r["sa_ci"][1]


def test_robust_requires_clean_correct():
    """An 'attack' that moves every input to its label's class must not raise RA above SA."""
    model = FirstPixel(4)
    x = torch.rand(20, 3, 8, 8)
    y = torch.arange(20) % 4

    def helpful(images, labels):
        out = images.clone()
        out[:, 0, 0, 0] = labels.float() / 3
        return out
    with torch.no_grad():
        clean_ok = int((model(x).argmax(1) == y).sum())
        adv_ok = int((model(helpful(x, y)).argmax(1) == y).sum())
    assert adv_ok == 20 > clean_ok                 # alone, the adversarial input is always right ...
    r = evaluate(model, (x, y), attack=helpful, progress=False)
    assert r["robust"] == r["correct"] == clean_ok   # ... but robust counts only clean-correct examples


def test_identity_attack_gives_ra_equal_sa_and_callables_work(tiny, test_set):
    r = evaluate(tiny, test_set, attack=lambda images, labels: images, n=24, progress=False)
    assert r["ra"] == r["sa"] and r["max_linf"] == 0.0
    # a torchattacks-shaped object (our PGD) and its repr travel through unchanged
    att = PGD(tiny, EPS, 2 / 255, 3)
    r2 = evaluate(tiny, test_set, attack=att, n=24, progress=False)
    assert r2["attack"] == repr(att)


def test_evaluate_is_seeded_and_keeps_model_state(tiny, own_labels):
    x, y = own_labels
    tiny.train()
    before = torch.get_rng_state()
    a = evaluate(tiny, (x, y), attack="pgd3", seed=5, progress=False)
    b = evaluate(tiny, (x, y), attack="pgd3", seed=5, progress=False)
    assert tiny.training                       # mode restored
    assert torch.equal(before, torch.get_rng_state())   # the caller's random state is untouched
    tiny.eval()
    assert a["robust"] == b["robust"] and a["attack"].startswith("PGD(") and "steps=3" in a["attack"]


def test_clean_only_and_bad_attack(tiny, test_set):
    r = evaluate(tiny, test_set, attack=None, n=30, progress=False)
    assert "ra" not in r and r["attack"] == "none" and r["n"] == 30
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate(tiny, test_set, attack="fgsm", n=4)
    with pytest.raises(ValueError, match="outside"):
        evaluate(tiny, test_set, attack="pgd20", n=4, eps=8)
    with pytest.raises(ValueError, match="input shape"):
        evaluate(tiny, test_set, attack=lambda a, b: a[:1], n=4)


def test_return_examples_are_successful_attacks(tiny, own_labels):
    x, y = own_labels
    r = evaluate(tiny, (x, y), attack="pgd20", progress=False, return_examples=3)
    assert 0 < len(r["examples"]) <= 3
    xs, xa, ys = map(torch.stack, zip(*r["examples"]))
    with torch.no_grad():
        assert bool((tiny(xs).argmax(1) == ys).all()) and bool((tiny(xa).argmax(1) != ys).all())


def test_autoattack_runs_on_cpu(tiny, own_labels, capfd):
    x, y = own_labels[0][:6], own_labels[1][:6]
    r = evaluate(tiny, (x, y), attack="autoattack", seed=0, progress=False)
    assert r["attack"].startswith("AutoAttack(") and "version='standard'" in r["attack"] and "seed=0" in r["attack"]
    assert r["sa"] == 1.0 and r["max_linf"] <= EPS + 1e-6
    out, err = capfd.readouterr()
    assert out == "" and err == ""              # quiet by default


def test_autoattack_needs_four_classes():
    model = FirstPixel(3)
    with pytest.raises(ValueError, match="at least 4 classes"):
        AutoAttackHook(model, device="cpu")(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))


@pytest.mark.slow
def test_autoattack_is_at_least_as_strong_as_pgd20(tiny, own_labels):
    """At eps = 1/255 some points survive APGD-CE, so APGD-T, FAB-T and Square all run (~40 s on CPU)."""
    x, y = own_labels[0][:8], own_labels[1][:8]
    aa = evaluate(tiny, (x, y), attack="autoattack", eps=1 / 255, progress=False)
    pgd = evaluate(tiny, (x, y), attack="pgd20", eps=1 / 255, progress=False)
    assert aa["ra"] <= pgd["ra"] and aa["max_linf"] <= 1 / 255 + 1e-6


# --------------------------------------------------------------------------- accuracy vs eps

def test_accuracy_vs_eps(tiny, test_set):
    x, y = test_set.tensors(12)
    with torch.no_grad():
        y = tiny(x).argmax(1)
    curve = accuracy_vs_eps(tiny, (x, y), [0.0, 2 / 255, 8 / 255], steps=3)
    assert curve["ra"][0] == curve["sa"] == 1.0 and curve["n"] == 12 and len(curve["ra_ci"]) == 3


# --------------------------------------------------------------------------- notebook 04

@pytest.mark.slow
def test_notebook_04_smoke(run_nb, tour_dirs):
    from advcl_lite.finetune import load_finetuned
    from advcl_lite.presets import get_preset
    P = get_preset("smoke")
    rec = run_nb("04")
    rows = rec["results"]
    methods = ["SimCLR", "ACL", "AdvCL", "AdvCL without pseudo-labels", "Random init"]
    assert rec["schemes"] == ["SLF", "ALF", "AFF"]                      # all three run at smoke
    assert [(r["method"], r["scheme"]) for r in rows] == [(m, s) for m in methods for s in rec["schemes"]]
    for r in rows:
        assert r["n"] == P.eval_n and r["preset"] == "smoke" and f"steps={P.eval_pgd_steps}" in r["attack"]
        assert r["ra"] * r["n"] == pytest.approx(round(r["ra"] * r["n"]))  # a count of the n test images
        assert r["ra_ci"][0] <= r["ra"] <= r["ra_ci"][1] and r["sa_ci"][0] <= r["sa"] <= r["sa_ci"][1]
        if r["method"] == "Random init":                                # AutoAttack runs for pretrained encoders only
            assert "aa" not in r and r["pretrain_seconds"] == 0.0
        else:
            assert r["aa_n"] == P.aa_n and 0.0 <= r["aa"] <= 1.0 and r["aa_attack"].startswith("AutoAttack(")
        assert 1 <= r["best_epoch"] <= P.ft_epochs
    assert rec["min_sa_minus_ra"] == pytest.approx(min(r["sa"] - r["ra"] for r in rows))
    assert rec["n_rows"] == len(methods) * 3
    tr = rec["transfer_results"]
    assert [r["method"] for r in tr] == methods and all(r["finetune_data"].endswith("animal-vehicle") for r in tr)
    assert all(r["n"] == P.eval_n for r in tr)
    assert all(len(c) == 5 and all(0.0 <= v <= 1.0 for v in c) for c in rec["eps_curves"].values())
    assert rec["panel_examples"] <= 4 and len(rec["comparisons"]) >= 1
    # the cached finetuned models are strict-loadable checkpoints of the recorded schemes
    _, work = tour_dirs
    model, meta = load_finetuned(work / "finetune" / "advcl-aff" / "model.pt")     # AdvCL with pseudo-labels
    assert meta["scheme"] == "aff" and meta["encoder"]["route"] == "pgd" and meta["num_classes"] == 10
    assert load_finetuned(work / "finetune" / "simclr-slf" / "model.pt")[1]["encoder"]["route"] == "normal"
    assert meta["encoder"]["run_name"] == "advcl"
    assert load_finetuned(work / "finetune" / "advcl-nopl-slf" / "model.pt")[1]["encoder"]["run_name"] == "advcl-nopl"
    assert load_finetuned(work / "finetune" / "random-slf" / "model.pt")[1]["encoder"]["source"] == "ResNet18"


@pytest.mark.slow    # 63 s; notebook 04's non-training path runs in the default suite on imported encoders (test_import)
def test_notebook_04_pretrained_finetunes_the_shipped_set(run_nb, tour_dirs):
    """encoders="pretrained" at smoke size: the five shipped encoders, every scheme, and the headline."""
    from advcl_lite import pretrained
    from advcl_lite.finetune import load_finetuned
    rec = run_nb("04", encoders="pretrained")
    methods = ["SimCLR", "ACL", "AdvCL", "AdvCL without pseudo-labels", "Random init"]
    rows = rec["results"]
    assert rec["encoders"] == "pretrained" and rec["schemes"] == ["SLF"]    # at smoke; the train path runs all three
    assert [(r["method"], r["scheme"]) for r in rows] == [(m, s) for m in methods for s in rec["schemes"]]
    assert all(r["pretrain_data"].startswith("cifar10-jpeg (5000") for r in rows)
    assert all(r["n"] == 64 and "aa" not in r for r in rows)                  # the smoke preset's eval_n
    shipped_s = pretrained.manifest("acl")["wall_seconds"]
    assert next(r for r in rows if r["method"] == "ACL")["pretrain_seconds"] == pytest.approx(shipped_s)
    assert next(r for r in rows if r["method"] == "Random init")["pretrain_seconds"] == 0.0
    # the heads were trained on the shipped weights (same digest) and cached under shipped-<name>-<scheme>
    _, work = tour_dirs
    _, meta = load_finetuned(work / "finetune" / "shipped-acl-slf" / "model.pt")
    from advcl_lite.finetune import resolve_encoder
    assert meta["encoder"]["sha256"] == resolve_encoder(pretrained.load_pretrained_encoder("acl"))[1]["sha256"]
    head = rec["headline"]
    assert head[0].startswith("Robustness transfer, shipped encoders") and "smoke preset" in head[-1]
    assert any(line.startswith("SLF: ACL RA") and "vs SimCLR" in line for line in head)
