"""Result records, tables, the comparison of intervals, and the published numbers as data.

* :func:`format_result` prints an :func:`~advcl_lite.evaluate.evaluate` result with its 95 %
  intervals and ``n``: ``SA 47.6% [44.5, 50.7] (n=1000)``; :func:`intervals_separate` compares two
  results by their intervals (+1 / -1 when one lies wholly above the other, 0 when they overlap).
* Records (:func:`make_record`) are flat dicts, one per (method, scheme, pretraining data,
  finetuning data, seed), saved as CSV and JSON (:func:`save_records`, read back by
  :func:`load_records`), shown as a markdown table (:func:`records_table`) and drawn by
  :func:`advcl_lite.viz.plot_results`.
* :data:`REFERENCE_RESULTS`: the AdvCL paper's and the RobustSSL leaderboard's numbers as records,
  at :data:`PAPER_SCALE`; :func:`reference_table` puts ours beside them.

Accuracies are fractions in [0, 1] in results and records; the text and the tables show percentages.
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from .checkpoint import write_json

# --------------------------------------------------------------------------- formatting and comparison

def pct(v: float | None) -> str:
    """A fraction as a percentage with one decimal (``0.1234`` -> ``"12.3"``); ``None`` -> ``"-"``."""
    return "-" if v is None else f"{100 * v:.1f}"



def intervals_separate(a: dict[str, Any], b: dict[str, Any], metric: str = "ra") -> int:
    """Compare two result records on ``metric`` by their 95 % intervals (``<metric>_ci``): +1 when a's lies
    wholly above b's, -1 when wholly below, 0 when they overlap (no difference shown)."""
    lo_a, hi_a = a[f"{metric}_ci"]
    lo_b, hi_b = b[f"{metric}_ci"]
    return 1 if lo_a > hi_b else (-1 if lo_b > hi_a else 0)


def format_result(result: dict[str, Any], label: str | None = None) -> str:
    """``SA 47.6% [44.5, 50.7] (n=1000); RA 20.3% [17.9, 22.9] (n=1000)`` from an :func:`evaluate` result."""
    n = result["n"]
    parts = [f"SA {pct(result['sa'])}% [{pct(result['sa_ci'][0])}, {pct(result['sa_ci'][1])}] (n={n})"]
    if "ra" in result:
        name = label or _attack_label(result.get("attack", ""))
        parts.append(f"{name} {pct(result['ra'])}% [{pct(result['ra_ci'][0])}, {pct(result['ra_ci'][1])}] (n={n})")
    return "; ".join(parts)


def _attack_label(attack: str) -> str:
    if attack.startswith("AutoAttack"):
        return "AA"
    m = re.search(r"steps=(\d+)", attack)
    return f"RA (PGD-{m.group(1)})" if attack.startswith("PGD") and m else "RA"



# --------------------------------------------------------------------------- records

def make_record(method: str, scheme: str, pretrain_data: str, finetune_data: str, result: dict[str, Any],
                preset, seed: int, seconds: float, **extra) -> dict[str, Any]:
    """One tidy row: who (method, scheme, data, preset, seed) and what (SA, RA with n and CIs, attack).

    ``result`` is an :func:`evaluate` result. An ``extra`` value that is itself an evaluate
    result (e.g. ``aa=evaluate(..., attack="autoattack")``) adds ``aa``, ``aa_ci``, ``aa_n``,
    ``aa_attack``; other extras are stored as they are. Accuracies are fractions.
    """
    rec: dict[str, Any] = {"method": method, "scheme": scheme, "pretrain_data": pretrain_data,
                           "finetune_data": finetune_data, "preset": getattr(preset, "name", preset), "seed": seed,
                           "n": result["n"], "sa": result["sa"], "sa_ci": list(result["sa_ci"]),
                           "ra": result.get("ra"), "ra_ci": list(result["ra_ci"]) if "ra_ci" in result else None,
                           "attack": result.get("attack"), "eps": result.get("eps"), "seconds": seconds,
                           "eval_seconds": result.get("seconds")}
    for k, v in extra.items():
        if isinstance(v, dict) and "sa" in v and "n" in v:
            rec[k] = v.get("ra")
            rec[f"{k}_ci"] = list(v["ra_ci"]) if "ra_ci" in v else None
            rec[f"{k}_n"] = v["n"]
            rec[f"{k}_attack"] = v.get("attack")
        else:
            rec[k] = v
    return rec


def save_records(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> list[Path]:
    """Write records to ``path``: ``.json`` or ``.csv`` by its suffix, both (``path.json``, ``path.csv``) otherwise.

    In the CSV, list values (the intervals) are JSON text; :func:`load_records` reads them back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [path] if path.suffix in (".json", ".csv") else [path.with_suffix(".json"), path.with_suffix(".csv")]
    records = [dict(r) for r in records]
    written = []
    for t in targets:
        if t.suffix == ".json":
            write_json(t, records, default=str)
        else:
            cols: list[str] = []
            for r in records:
                cols.extend(k for k in r if k not in cols)
            with open(t, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                for r in records:
                    w.writerow({k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else ("" if v is None else v)
                                for k, v in r.items()})
        written.append(t)
    return written


def _parse_cell(s: str):
    if s == "":
        return None
    if s[:1] in "[{":
        try:
            return json.loads(s)
        except ValueError:
            return s
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(s, s)


def load_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records from a ``.json`` or ``.csv`` written by :func:`save_records` (a path without suffix: its JSON)."""
    path = Path(path)
    if path.suffix not in (".json", ".csv"):
        path = path.with_suffix(".json")
    if not path.exists():
        raise FileNotFoundError(f"no records file {str(path)!r}")
    if path.suffix == ".json":
        return json.loads(path.read_text())
    with open(path, newline="") as f:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def records_table(records: Sequence[dict[str, Any]], metrics: Sequence[str] = ("sa", "ra", "aa")) -> str:
    """A markdown table of records: percentages with 95 % intervals and the n behind each."""
    names = {"sa": "SA %", "ra": "RA % (PGD)", "aa": "AA %"}
    shown = [m for m in metrics if any(r.get(m) is not None for r in records)]
    head = ["method", "scheme", "pretrain → finetune"] + [f"{names.get(m, m)} [95% CI] (n)" for m in shown]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in records:
        cells = [str(r["method"]), str(r["scheme"]), f"{r['pretrain_data']} → {r['finetune_data']}"]
        for m in shown:
            v, ci = r.get(m), r.get(f"{m}_ci")
            n = r.get(f"{m}_n", r.get("n")) if m == "aa" else r.get("n")
            cells.append("–" if v is None else f"{pct(v)} [{pct(ci[0])}, {pct(ci[1])}] ({n})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

# --------------------------------------------------------------------------- published numbers

PAPER_SCALE = "ResNet-18 (width 64), 1000 pretraining epochs on all 50,000 CIFAR-10 images, full 10,000-image test set"
PAPER_SCALE_SHORT = "full: width 64, 1000 ep., 50k images"
_LEADERBOARD = "RobustSSL leaderboard (independent re-evaluation)"
_LB = {  # method: (SLF AA, SLF SA, ALF AA, ALF SA, AFF AA, AFF SA), RobustSSL leaderboard, percent (None: not taken)
    "DynACL-AIR++": (46.99, 81.80, 48.23, 79.56, 50.79, 82.36),
    "DynACL++": (46.54, 79.82, 47.98, 78.81, 50.34, 81.93),
    "DynACL": (45.09, None, 45.67, None, 50.52, None),
    "AdvCL": (43.18, 82.36, 44.05, 80.04, 49.61, 83.00),
    "A-InfoNCE": (42.72, 83.70, 43.28, 80.30, 49.73, 82.99),
    "ACL": (39.17, 78.22, 40.60, 75.53, 49.60, 81.25),
    "RoCL": (26.12, 77.90, 29.69, 75.62, 45.02, 78.51),
}


def _ref(source, method, scheme, sa, ra=None, aa=None, finetune_data="cifar10"):
    return {"source": source, "method": method, "scheme": scheme, "pretrain_data": "cifar10",
            "finetune_data": finetune_data, "sa": None if sa is None else sa / 100, "ra": None if ra is None else ra / 100,
            "aa": None if aa is None else aa / 100, "scale": PAPER_SCALE}


REFERENCE_RESULTS: list[dict[str, Any]] = (
    [_ref("AdvCL paper (Fan et al., NeurIPS 2021)", "AdvCL", "SLF", 80.85, ra=50.45)]
    + [_ref(_LEADERBOARD, m, s, v[2 * i + 1], aa=v[2 * i]) for m, v in _LB.items()
       for i, s in enumerate(("SLF", "ALF", "AFF"))]
    + [_ref(_LEADERBOARD, "AdvCL", "SLF", 44.60, aa=19.10, finetune_data="cifar100"),
       _ref(_LEADERBOARD, "AdvCL", "AFF", 58.29, aa=25.26, finetune_data="cifar100"),
       _ref(_LEADERBOARD, "AdvCL", "SLF", 62.78, aa=28.38, finetune_data="stl10"),
       _ref(_LEADERBOARD, "AdvCL", "AFF", 68.14, aa=33.84, finetune_data="stl10")]
)
"""Published numbers (the AdvCL paper and the RobustSSL leaderboard) as records: accuracies as fractions; RA is PGD-20, AA AutoAttack.
For CIFAR-100 the pretraining data is CIFAR-100 itself; for STL-10 it is CIFAR-10 (resized transfer)."""
for _r in REFERENCE_RESULTS:
    if _r["finetune_data"] == "cifar100":
        _r["pretrain_data"] = "cifar100"


def shipped_records(name: str) -> list[dict[str, Any]]:
    """The records of a study shipped with the package (``advcl_lite/_data/records/<name>.json``, written by
    ``benchmarks/studies.py``; BENCHMARKS.md gives each one's command and commit): ``"pseudo"`` (study 1 of
    issue 27: AdvCL with one K = 10 head on labels of known quality, their NMI beside SA / RA), ``"methods"``
    (issue 32's DynACL and DynACL-AIR beside ACL and AdvCL at the ``benchmark`` preset)."""
    path = Path(__file__).parent / "_data" / "records" / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.json"))
        raise FileNotFoundError(f"no shipped records named {name!r}; the package ships {known}")
    return load_records(path)


def reference_table(records: Sequence[dict[str, Any]] = (), methods: Sequence[str] | None = ("AdvCL", "ACL"),
                    finetune_data: str | None = "cifar10", scale: str | None = None):
    """A pandas DataFrame of our records (labelled with ``scale``) beside the published numbers.

    Columns: source, scale, method, scheme, SA %, RA % (PGD), AA %, n. ``methods`` filters the
    published rows (None: all); ours are all kept. Percentages, rounded to one decimal. The
    published rows' scale is :data:`PAPER_SCALE` (shortened in the table; their n is the full
    test set, not stated per row in the sources).
    """
    import pandas as pd

    def num(v):   # a number for the DataFrame, not a string
        return None if v is None else round(100 * float(v), 1)
    rows = []
    for r in records:
        rows.append({"source": "advcl_lite (this run)", "scale": scale or str(r.get("preset", "")),
                     "method": r["method"], "scheme": str(r["scheme"]).upper(), "SA %": num(r.get("sa")),
                     "RA % (PGD)": num(r.get("ra")), "AA %": num(r.get("aa")), "n": r.get("n")})
    for r in REFERENCE_RESULTS:
        if methods is not None and r["method"] not in methods:
            continue
        if finetune_data is not None and r["finetune_data"] != finetune_data:
            continue
        rows.append({"source": r["source"], "scale": PAPER_SCALE_SHORT, "method": r["method"], "scheme": r["scheme"],
                     "SA %": num(r["sa"]), "RA % (PGD)": num(r["ra"]), "AA %": num(r["aa"]), "n": None})
    return pd.DataFrame(rows)
