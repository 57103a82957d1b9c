"""Clean and robust accuracy, with confidence intervals, and tidy result records.

One evaluation loop, :func:`evaluate`, takes an *attack hook*: ``None`` (clean
accuracy only), ``"pgd20"`` (the paper's RA: L-inf PGD, eps 8/255, step 2/255,
20 steps, random start, cross-entropy), ``"pgd<K>"`` (the same with K steps),
``"autoattack"`` (AutoAttack's standard version through the authors' package,
``pyautoattack``), or any callable ``attack(images, labels) -> adv_images`` on
[0, 1] images - a torchattacks attack object works as is.

* **SA** is the clean accuracy. **RA** counts an example as robust only if it is
  classified correctly on the clean input *and* on the attacked input, so
  RA <= SA by construction (also for an attack that fails to find an
  adversarial example for a misclassified input).
* Every accuracy comes with its number of examples ``n`` and a 95 % Wilson
  interval (:func:`accuracy_ci`); :func:`format_result` prints them together:
  ``SA 47.6% [44.5, 50.7] (n=1000)``. A subset of ``n`` test images is the seeded,
  class-balanced subset (:func:`~advcl_lite.data.class_balanced_subset`).
* Accuracies are fractions in [0, 1] in results and records; the text and the
  plots show percentages.

Records (:func:`make_record`) are flat dicts, one per (method, scheme,
pretraining data, finetuning data, seed), saved as CSV and JSON
(:func:`save_records`) and drawn by :func:`plot_results`.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from .attacks import EPS, PGD, check_attack_params, make_attack, model_mode
from .checkpoint import write_json
from .data import ImageDataset, class_balanced_subset, load_dataset
from .presets import check_count
from .runtime import model_device, progress_bar, progress_enabled, seeded

# --------------------------------------------------------------------------- intervals

def accuracy_ci(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``correct / n`` (95 % for z = 1.96), as fractions.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n successes.
    ``n = 0`` gives (0, 1): nothing is known.
    """
    if n < 0 or correct < 0 or correct > n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------- attacks

# --------------------------------------------------------------------------- the loop

def _as_dataset(data, n: int | None, seed: int) -> tuple[Iterable, int, str]:
    """(batches factory, size, identity) for an ImageDataset, a name/path (test split), or (images, labels)."""
    n = check_count("n (test images)", n)
    if isinstance(data, (str, os.PathLike)):
        data = load_dataset(str(data), "test")
    if isinstance(data, ImageDataset):
        ds = class_balanced_subset(data, n, seed=seed) if n is not None else data
        return ds, len(ds), ds.id
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if n is not None:
            x, y = x[:n], y[:n]
        if x.dtype == torch.uint8:
            x = x.float().div(255)
        return (x, y.long()), len(x), f"tensors:{len(x)}"
    raise TypeError(f"data must be an ImageDataset, a dataset name/path, or (images, labels); got {type(data).__name__}")


def _batches(src, batch_size: int, device):
    if isinstance(src, ImageDataset):
        for x, y, _ in src.batches(batch_size, device=device):
            yield x, y
        return
    x, y = src
    for s in range(0, len(x), batch_size):
        yield x[s:s + batch_size].to(device).float(), y[s:s + batch_size].to(device)


def robust_correct(clean_pred: torch.Tensor, adv_pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Which images count as robust: right on the clean image *and* on its adversarial copy. An image the
    model already gets wrong is never robust, even where the attack happens to land on the right class,
    so RA <= SA always."""
    return (clean_pred == labels) & (adv_pred == labels)


def robust_accuracy(clean_pred: torch.Tensor, adv_pred: torch.Tensor, labels: torch.Tensor) -> float:
    """RA: the fraction of images that are :func:`robust_correct` (predicted class indices, shape (N,))."""
    return float(robust_correct(clean_pred, adv_pred, labels).float().mean()) if len(labels) else float("nan")


def evaluate(model: nn.Module, data, attack=None, n: int | None = None, batch_size: int = 256, device=None,
             seed: int = 0, eps: float = EPS, progress: bool | None = None,
             return_examples: int = 0) -> dict[str, Any]:
    """Clean accuracy (SA) and, with an ``attack``, robust accuracy (RA) of ``model`` on ``data``.

    ``data``: an ImageDataset, a dataset name/path (its test split) or ``(images, labels)``.
    ``n``: evaluate on this many images (the seeded class-balanced subset; None: all).
    ``attack``: None, "pgd20", "pgd<K>", "autoattack", or ``attack(images, labels) -> adv``.
    ``device``: None keeps the model where it is; otherwise the model is moved there.
    ``seed`` fixes the attack's random starts. ``return_examples`` keeps up to that many
    (x, x_adv, y) triples of examples that are correct clean but wrong under attack.

    Returns a dict: ``sa``, ``sa_ci``, ``n``, ``correct``; with an attack also ``ra``,
    ``ra_ci``, ``robust``, ``attack`` (its repr), ``max_linf`` (the largest L-inf
    perturbation the attack produced); ``seconds``, ``dataset``, ``eps``. RA <= SA by
    construction (see the module docstring).
    """
    dev = model_device(model, device)
    src, size, ident = _as_dataset(data, n, seed)
    hook = make_attack(model, attack, eps=eps, device=dev, seed=seed)
    t0 = time.perf_counter()
    correct = robust = 0
    max_linf = 0.0
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    bar = progress_bar(_batches(src, batch_size, dev), total=math.ceil(size / batch_size), desc="evaluate",
                       disable=not progress_enabled(progress) or hook is None)
    with model_mode(model, "eval"), seeded(seed, dev):
        for x, y in bar:
            with torch.no_grad():
                pred = model(x).argmax(1)
                ok = pred == y
            correct += int(ok.sum())
            if hook is None:
                continue
            x_adv = hook(x, y)
            if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
                raise ValueError(f"the attack returned {getattr(x_adv, 'shape', type(x_adv))}, expected a tensor "
                                 f"of the input shape {tuple(x.shape)}")
            x_adv = x_adv.detach().to(dev)
            with torch.no_grad():
                ok_adv = robust_correct(pred, model(x_adv).argmax(1), y)
            robust += int(ok_adv.sum())
            max_linf = max(max_linf, float((x_adv - x).abs().amax()) if len(x) else 0.0)
            if return_examples and len(kept) < return_examples:
                for i in torch.nonzero(ok & ~ok_adv).flatten()[: return_examples - len(kept)]:
                    kept.append((x[i].cpu(), x_adv[i].cpu(), y[i].cpu()))
    out: dict[str, Any] = {"n": size, "correct": correct, "sa": correct / size if size else float("nan"),
                           "sa_ci": list(accuracy_ci(correct, size)), "dataset": ident, "eps": float(eps),
                           "attack": "none" if hook is None else repr(hook), "seed": seed}
    if hook is not None:
        out.update({"robust": robust, "ra": robust / size if size else float("nan"),
                    "ra_ci": list(accuracy_ci(robust, size)), "max_linf": max_linf})
    if return_examples:
        out["examples"] = kept
    out["seconds"] = time.perf_counter() - t0
    return out


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def intervals_separate(a: dict[str, Any], b: dict[str, Any], metric: str = "ra") -> int:
    """Compare two result records on ``metric`` by their 95 % intervals (``<metric>_ci``): +1 when a's lies
    wholly above b's, -1 when wholly below, 0 when they overlap (no difference shown)."""
    lo_a, hi_a = a[f"{metric}_ci"]
    lo_b, hi_b = b[f"{metric}_ci"]
    return 1 if lo_a > hi_b else (-1 if lo_b > hi_a else 0)


def format_result(result: dict[str, Any], label: str | None = None) -> str:
    """``SA 47.6% [44.5, 50.7] (n=1000); RA 20.3% [17.9, 22.9] (n=1000)`` from an :func:`evaluate` result."""
    n = result["n"]
    parts = [f"SA {_pct(result['sa'])}% [{_pct(result['sa_ci'][0])}, {_pct(result['sa_ci'][1])}] (n={n})"]
    if "ra" in result:
        name = label or _attack_label(result.get("attack", ""))
        parts.append(f"{name} {_pct(result['ra'])}% [{_pct(result['ra_ci'][0])}, {_pct(result['ra_ci'][1])}] (n={n})")
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
            cells.append("–" if v is None else f"{_pct(v)} [{_pct(ci[0])}, {_pct(ci[1])}] ({n})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- published numbers

PAPER_SCALE = "ResNet-18 (width 64), 1000 pretraining epochs on all 50,000 CIFAR-10 images, full 10,000-image test set"
PAPER_SCALE_SHORT = "full: width 64, 1000 ep., 50k images"
_LEADERBOARD = "RobustSSL leaderboard (independent re-evaluation)"
_LB = {  # method: (SLF AA, SLF SA, ALF AA, ALF SA, AFF AA, AFF SA), RobustSSL leaderboard, percent
    "DynACL-AIR++": (46.99, 81.80, 48.23, 79.56, 50.79, 82.36),
    "DynACL++": (46.54, 79.82, 47.98, 78.81, 50.34, 81.93),
    "AdvCL": (43.18, 82.36, 44.05, 80.04, 49.61, 83.00),
    "A-InfoNCE": (42.72, 83.70, 43.28, 80.30, 49.73, 82.99),
    "ACL": (39.17, 78.22, 40.60, 75.53, 49.60, 81.25),
    "RoCL": (26.12, 77.90, 29.69, 75.62, 45.02, 78.51),
}


def _ref(source, method, scheme, sa, ra=None, aa=None, finetune_data="cifar10"):
    return {"source": source, "method": method, "scheme": scheme, "pretrain_data": "cifar10",
            "finetune_data": finetune_data, "sa": sa / 100, "ra": None if ra is None else ra / 100,
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


def reference_table(records: Sequence[dict[str, Any]] = (), methods: Sequence[str] | None = ("AdvCL", "ACL"),
                    finetune_data: str | None = "cifar10", scale: str | None = None):
    """A pandas DataFrame of our records (labelled with ``scale``) beside the published numbers.

    Columns: source, scale, method, scheme, SA %, RA % (PGD), AA %, n. ``methods`` filters the
    published rows (None: all); ours are all kept. Percentages, rounded to one decimal. The
    published rows' scale is :data:`PAPER_SCALE` (shortened in the table; their n is the full
    test set, not stated per row in the sources).
    """
    import pandas as pd

    def pct(v):
        return None if v is None else round(100 * float(v), 1)
    rows = []
    for r in records:
        rows.append({"source": "advcl_lite (this run)", "scale": scale or str(r.get("preset", "")),
                     "method": r["method"], "scheme": str(r["scheme"]).upper(), "SA %": pct(r.get("sa")),
                     "RA % (PGD)": pct(r.get("ra")), "AA %": pct(r.get("aa")), "n": r.get("n")})
    for r in REFERENCE_RESULTS:
        if methods is not None and r["method"] not in methods:
            continue
        if finetune_data is not None and r["finetune_data"] != finetune_data:
            continue
        rows.append({"source": r["source"], "scale": PAPER_SCALE_SHORT, "method": r["method"], "scheme": r["scheme"],
                     "SA %": pct(r["sa"]), "RA % (PGD)": pct(r["ra"]), "AA %": pct(r["aa"]), "n": None})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- plots

def plot_results(records: Sequence[dict[str, Any]], metrics: Sequence[str] = ("sa", "ra", "aa"), title: str | None = None):
    """Grouped bars: SA / RA / AA (percent, 95 % intervals as error bars) per method, one panel per scheme."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    labels = {"sa": "SA (clean)", "ra": "RA (PGD)", "aa": "AA (AutoAttack)"}
    rows = []
    for r in records:
        for m in metrics:
            if r.get(m) is None:
                continue
            ci = r.get(f"{m}_ci") or [r[m], r[m]]
            n = r.get(f"{m}_n", r.get("n")) if m == "aa" else r.get("n")
            rows.append({"method": r["method"], "scheme": str(r["scheme"]).upper(), "metric": labels.get(m, m),
                         "acc": 100 * r[m], "low": 100 * ci[0], "high": 100 * ci[1], "n": n})
    if not rows:
        raise ValueError("no records with accuracies to plot")
    df = pd.DataFrame(rows)
    schemes = list(dict.fromkeys(df["scheme"]))
    methods = list(dict.fromkeys(df["method"]))
    hue_order = [labels.get(m, m) for m in metrics if labels.get(m, m) in set(df["metric"])]
    fig, axes = plt.subplots(1, len(schemes), figsize=(max(4.0, 1.3 * len(methods) + 1.5) * len(schemes), 3.8),
                             sharey=True, squeeze=False)
    for ax, scheme in zip(axes[0], schemes):
        sub = df[df["scheme"] == scheme]
        sns.barplot(data=sub, x="method", y="acc", hue="metric", order=methods, hue_order=hue_order, ax=ax,
                    errorbar=None, palette="deep")
        from matplotlib.container import BarContainer
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]   # one per metric, bars in method order
        for container, metric in zip(bars, hue_order):
            for bar in container:
                cx = bar.get_x() + bar.get_width() / 2
                method = methods[min(len(methods) - 1, max(0, int(round(cx))))]   # categories sit at 0, 1, ...
                row = sub[(sub["metric"] == metric) & (sub["method"] == method)]
                if row.empty:
                    continue
                ax.errorbar(cx, row["acc"].iloc[0], yerr=[[row["acc"].iloc[0] - row["low"].iloc[0]],
                                                          [row["high"].iloc[0] - row["acc"].iloc[0]]],
                            fmt="none", ecolor="black", elinewidth=1, capsize=2)
        ns = {metric: sorted(set(int(v) for v in sub[sub["metric"] == metric]["n"])) for metric in hue_order}
        parts = [f"{m.split()[0]} n = {', '.join(map(str, v))}" for m, v in ns.items() if v]
        same = len({tuple(v) for v in ns.values() if v}) == 1
        ax.set_title(f"{scheme} (n = {', '.join(map(str, next(iter(ns.values()))))})" if same
                     else f"{scheme} ({'; '.join(parts)})", fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", rotation=20)
        if ax is not axes[0][-1] and ax.get_legend() is not None:
            ax.get_legend().remove()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_vs_eps(model: nn.Module, data, eps_list: Sequence[float], n: int | None = None, steps: int = 20,
                    batch_size: int = 256, device=None, seed: int = 0, progress: bool | None = False) -> dict[str, Any]:
    """Robust accuracy under PGD-``steps`` for every eps in ``eps_list`` (step size eps/4, i.e. 2/255 at 8/255).

    Returns ``{"eps": [...], "sa", "ra": [...], "ra_ci": [...], "n"}`` (fractions). eps = 0 gives the SA.
    """
    eps_list = [float(e) for e in eps_list]
    ras, cis, sa = [], [], None
    for e in eps_list:
        check_attack_params(e, e / 4, steps)
        att = PGD(model, e, e / 4, steps if e > 0 else 0, random_start=e > 0, mode="eval")
        r = evaluate(model, data, attack=att, n=n, batch_size=batch_size, device=device, seed=seed, eps=e,
                     progress=progress)
        sa = r["sa"]
        ras.append(r["ra"])
        cis.append(r["ra_ci"])
    return {"eps": eps_list, "sa": sa, "ra": ras, "ra_ci": cis, "n": r["n"] if eps_list else 0, "steps": steps}


def plot_accuracy_vs_eps(curves: dict[str, dict[str, Any]] | Sequence[dict[str, Any]], ax=None, title: str | None = None):
    """Robust accuracy (%) against eps (in /255) with 95 % bands, one line per curve (``{label: curve}``)."""
    import matplotlib.pyplot as plt
    if not isinstance(curves, dict):
        curves = {c.get("label", f"model {i}"): c for i, c in enumerate(curves)}
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
    else:
        fig = ax.figure
    ns = set()
    for label, c in curves.items():
        x = [255 * e for e in c["eps"]]
        y = [100 * v for v in c["ra"]]
        lo = [100 * ci[0] for ci in c["ra_ci"]]
        hi = [100 * ci[1] for ci in c["ra_ci"]]
        (line,) = ax.plot(x, y, marker="o", label=label)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
        ns.add(c["n"])
    ax.set_xlabel("eps (x/255, L-inf)")
    ax.set_ylabel("robust accuracy (%), PGD")
    ax.set_ylim(0, 100)
    ax.set_title(title or f"accuracy vs attack strength (n = {', '.join(map(str, sorted(ns)))})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- CLI
