"""Figures of the evaluation stage (notebook 04): accuracies per method and scheme, accuracy against eps.

The records they draw are made by :func:`~advcl_lite.results.make_record`; the curves by
:func:`~advcl_lite.evaluate.accuracy_vs_eps`.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..methods import dynacl_strength, dynacl_weight
from .core import _plt


def plot_results(records: Sequence[dict[str, Any]], metrics: Sequence[str] = ("sa", "ra", "aa"), title: str | None = None):
    """Grouped bars: SA / RA / AA (percent, 95 % intervals as error bars) per method, one panel per scheme."""
    import pandas as pd
    import seaborn as sns

    plt = _plt()

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


def plot_accuracy_vs_eps(curves: dict[str, dict[str, Any]] | Sequence[dict[str, Any]], ax=None, title: str | None = None):
    """Robust accuracy (%) against eps (in /255) with 95 % bands, one line per curve (``{label: curve}``)."""
    plt = _plt()
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


def plot_leaderboard(records: Sequence[dict[str, Any]], metric: str = "aa", title: str | None = None):
    """One line per method across the schemes SLF -> ALF -> AFF (``metric`` in percent): published numbers
    (:data:`advcl_lite.results.REFERENCE_RESULTS`) have no intervals, so none are drawn. Lines that converge at
    AFF show full finetuning washing out what pretraining added."""
    plt = _plt()
    order = ["SLF", "ALF", "AFF"]
    by: dict[str, dict[str, float]] = {}
    for r in records:
        if r.get(metric) is not None and str(r["scheme"]).upper() in order:
            by.setdefault(r["method"], {})[str(r["scheme"]).upper()] = 100 * r[metric]
    if not by:
        raise ValueError(f"no records with {metric!r} to plot")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, acc in by.items():
        xs = [i for i, s in enumerate(order) if s in acc]
        ax.plot(xs, [acc[order[i]] for i in xs], marker="o", label=method)
    ax.set_xticks(range(len(order)), order)
    ax.set_ylabel({"aa": "AA (AutoAttack) %", "ra": "RA (PGD) %", "sa": "SA %"}.get(metric, metric))
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_dynacl_schedule(runs: Sequence[int] = (1000, 5), stages: int = 20, swap: float = 2 / 3):
    """DynACL's augmentation strength and loss weight w over a run, for runs of each length in ``runs`` (x: the
    fraction of the run), as :func:`advcl_lite.methods.dynacl_strength` / :func:`~advcl_lite.methods.dynacl_weight`
    compute them."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.2), sharex=True)
    for epochs in runs:
        e = list(range(1, epochs + 1))
        x = [(i - 1) / epochs for i in e] + [1.0]
        s = [dynacl_strength(i, epochs, stages) for i in e]
        w = [dynacl_weight(i, epochs, stages, swap) for i in e]
        axes[0].step(x, s + s[-1:], where="post", label=f"{epochs} epochs")
        axes[1].step(x, w + w[-1:], where="post", label=f"{epochs} epochs")
    axes[0].set_title("augmentation strength s", fontsize=10)
    axes[1].set_title("loss weight w: ((1 - w) L_clean + (1 + w) L_adv) / 2", fontsize=10)
    for ax in axes:
        ax.set_xlabel("fraction of the run")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_ra_vs_nmi(records: Sequence[dict[str, Any]], ours: float | None = None, scheme: str = "SLF",
                   title: str | None = None):
    """Study 1 of issue 27 (:func:`advcl_lite.results.shipped_records` ``("pseudo")``): robust accuracy (PGD-20,
    95 % intervals as error bars) against the pseudo-labels' NMI with the true classes, one point per label source
    and seed; the loss as the original scales it (x7.14) and unscaled as two series; AdvCL without pseudo-labels
    and ACL as horizontal bands (their intervals). ``ours``: the NMI of a notebook's own labels, drawn as a
    vertical line."""
    plt = _plt()
    recs = [r for r in records if str(r.get("scheme", "")).upper() == scheme]
    if not recs:
        raise ValueError(f"no {scheme} records to plot")
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for row, color in (("no-pl", "tab:gray"), ("acl", "tab:green")):
        for r in (r for r in recs if r.get("row") == row):
            lo, hi = (100 * v for v in r["ra_ci"])
            ax.axhspan(lo, hi, color=color, alpha=0.15, lw=0)
            ax.axhline(100 * r["ra"], color=color, lw=1, ls="--", label=f"{r['method']} (seed {r['seed']})")
    for unscaled, marker, label in ((False, "o", "AdvCL, loss x7.14 (the original)"), (True, "s", "AdvCL, loss unscaled")):
        pts = [r for r in recs if r.get("nmi") is not None
               and (float(r.get("base_temperature") or 0.07) >= 0.5) == unscaled]     # 0.5 / 0.5: no x7.14
        if not pts:
            continue
        x = [r["nmi"] for r in pts]
        y = [100 * r["ra"] for r in pts]
        err = [[100 * (r["ra"] - r["ra_ci"][0]) for r in pts], [100 * (r["ra_ci"][1] - r["ra"]) for r in pts]]
        ax.errorbar(x, y, yerr=err, fmt=marker, capsize=3, label=label)
        for r, xi, yi in zip(pts, x, y):
            ax.annotate(str(r["row"]).replace("-unscaled", ""), (xi, yi), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    if ours is not None:
        ax.axvline(ours, color="tab:purple", lw=1, ls=":", label=f"this notebook's labels (NMI {ours:.2f})")
    ax.set_xlabel("pseudo-labels' NMI with the true classes (K = 10)")
    ax.set_ylabel(f"{scheme} RA, PGD-20 (%)")
    ax.set_xlim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    n = sorted({r["n"] for r in recs})
    ax.set_title(title or f"Study 1 (issue 27): benchmark preset, n = {', '.join(map(str, n))} test images", fontsize=9)
    fig.tight_layout()
    return fig
