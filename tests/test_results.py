"""Result records and tables, the comparison of intervals, the published numbers (advcl_lite.results)."""
from __future__ import annotations

import pytest
import torch.nn as nn

from advcl_lite.attacks import PGD
from advcl_lite.evaluate import accuracy_ci
from advcl_lite.results import (PAPER_SCALE, REFERENCE_RESULTS, format_result, intervals_separate, load_records,
                                records_table, reference_table, save_records)
from helpers import example_records


# --------------------------------------------------------------------------- formatting and comparison

def test_format_result():
    r = {"n": 1000, "sa": 0.476, "sa_ci": list(accuracy_ci(476, 1000)), "ra": 0.2, "ra_ci": list(accuracy_ci(200, 1000)),
         "attack": PGD(nn.Linear(1, 1), steps=20).__repr__()}
    s = format_result(r)
    assert s.startswith("SA 47.6% [44.5, 50.7] (n=1000); RA (PGD-20) 20.0% [")
    assert s.endswith("(n=1000)")


def test_intervals_separate_says_which_interval_lies_above():
    hi, lo, mid = {"ra_ci": [0.10, 0.14]}, {"ra_ci": [0.02, 0.04]}, {"ra_ci": [0.03, 0.11]}
    assert intervals_separate(hi, lo) == 1 and intervals_separate(lo, hi) == -1
    assert intervals_separate(hi, mid) == 0 and intervals_separate(mid, lo) == 0      # overlapping: no difference
    assert intervals_separate({"sa_ci": [0.5, 0.6]}, {"sa_ci": [0.2, 0.3]}, "sa") == 1


# --------------------------------------------------------------------------- records and tables

def test_records_roundtrip(tmp_path, tiny, test_set):
    recs = example_records(tiny, test_set)
    assert recs[0]["aa_n"] == 20 and recs[0]["aa_ci"] == recs[0]["ra_ci"] and recs[0]["note"] == "x"
    written = save_records(recs, tmp_path / "res")
    assert sorted(p.suffix for p in written) == [".csv", ".json"]
    assert load_records(tmp_path / "res.json") == recs
    back = load_records(tmp_path / "res.csv")
    assert [{k: v for k, v in r.items()} for r in back] == recs
    save_records(recs, tmp_path / "only.csv")
    assert not (tmp_path / "only.json").exists()
    table = records_table(recs)
    assert table.count("\n") == len(recs) + 1 and "(20)" in table


def test_records_table_leaves_out_a_metric_no_record_has(tiny, test_set):
    recs = example_records(tiny, test_set)
    no_aa = [{k: v for k, v in r.items() if not k.startswith("aa")} for r in recs]   # presets with aa_n = 0
    assert "AA" not in records_table(no_aa) and "AA" in records_table(recs)


# --------------------------------------------------------------------------- published numbers

def test_reference_table_puts_ours_beside_the_published_rows(tiny, test_set):
    recs = example_records(tiny, test_set)[:1]
    df = reference_table(recs, methods=("AdvCL",), scale="smoke")
    assert df.iloc[0]["source"] == "advcl_lite (this run)" and df.iloc[0]["scale"] == "smoke"
    published = df.iloc[1:]
    assert set(published["method"]) == {"AdvCL"} and len(published) == 4        # the paper's SLF and 3 leaderboard rows
    assert published.iloc[0]["SA %"] == round(100 * 0.8085, 1) and published.iloc[0]["RA % (PGD)"] == 50.5
    assert REFERENCE_RESULTS[0]["sa"] == pytest.approx(0.8085) and REFERENCE_RESULTS[0]["ra"] == pytest.approx(0.5045)
    assert all(r["scale"] == PAPER_SCALE for r in REFERENCE_RESULTS)
    assert {r["pretrain_data"] for r in REFERENCE_RESULTS if r["finetune_data"] == "cifar100"} == {"cifar100"}
