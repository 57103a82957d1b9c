"""Study 1 of issue 27: how good must AdvCL's pseudo-labels be before they raise robust accuracy?

AdvCL with **one** pseudo-label head (K = 10) in every row, so that only the labels' quality changes.
Label sources, each scored by its NMI against the true CIFAR-10 labels of the pretraining images:

* ``simclr``: k-means (K = 10) on that seed's SimCLR at the preset (5 epochs at ``benchmark``),
  the labels advcl_lite makes by default;
* ``simclr-long``: k-means on a SimCLR trained ``--long-epochs`` (default 50) on the same images;
* ``oracle``: the true labels (an upper bound that shows the mechanism; never a method);
* ``noise25`` / ``noise50`` / ``noise75``: the true labels with that share replaced by uniform random ones;
* ``random``: uniform random labels (the floor).

Reference rows: AdvCL without pseudo-labels and ACL; and the oracle and ``simclr`` labels with the
contrastive loss unscaled (``base_temperature=0.5``: the original's x7.14 factor makes lambda = 0.2
effectively 0.028). Every run: SLF finetuning, SA and PGD-20 RA on the preset's ``eval_n`` test images
with 95 % Wilson intervals; ``--aa-n N`` adds the standard AutoAttack on N of the same images.

Everything is cached under ``--out`` (one folder per row and seed); an interrupted call resumes at the
first missing stage, and ``--rows`` picks rows in the order given (the most informative first).

    python benchmarks/study_pseudo.py --preset benchmark --data ../shared/data/cifar10-jpeg.zip --seeds 0
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from advcl_lite import get_preset
from advcl_lite.data import load_dataset
from advcl_lite.evaluate import evaluate
from advcl_lite.finetune import get_or_finetune
from advcl_lite.pretrain import get_or_train, pretrain_dataset
from advcl_lite.pseudo_labels import PseudoLabels, _dataset_identity, get_or_make_pseudo_labels, item_means
from advcl_lite.results import format_result, intervals_separate, load_records, make_record, pct, save_records

K = 10
# row: (label source or None, method, preset overrides)
ROWS = {
    "oracle": ("oracle", "advcl", {}),
    "simclr": ("simclr", "advcl", {}),
    "random": ("random", "advcl", {}),
    "oracle-unscaled": ("oracle", "advcl", {"base_temperature": 0.5}),
    "simclr-unscaled": ("simclr", "advcl", {"base_temperature": 0.5}),
    "noise50": ("noise50", "advcl", {}),
    "no-pl": (None, "advcl", {}),
    "acl": (None, "acl", {}),
    "noise25": ("noise25", "advcl", {}),
    "noise75": ("noise75", "advcl", {}),
    "simclr-long": ("simclr-long", "advcl", {}),
}
NAMES = {"oracle": "AdvCL, oracle labels (true classes)", "simclr": "AdvCL, k-means on SimCLR",
         "random": "AdvCL, random labels", "oracle-unscaled": "AdvCL, oracle labels, unscaled loss",
         "simclr-unscaled": "AdvCL, k-means on SimCLR, unscaled loss", "noise25": "AdvCL, oracle 25 % noise",
         "noise50": "AdvCL, oracle 50 % noise", "noise75": "AdvCL, oracle 75 % noise",
         "no-pl": "AdvCL without pseudo-labels", "acl": "ACL", "simclr-long": "AdvCL, k-means on long SimCLR"}


def nmi(a, b) -> float:
    from sklearn.metrics import normalized_mutual_info_score
    return float(normalized_mutual_info_score(np.asarray(a), np.asarray(b)))


def labels_from_classes(ds, source: str, seed: int) -> PseudoLabels:
    """The oracle labels of ``ds`` (its true classes), with ``noiseNN`` percent replaced at random, or all random."""
    y = torch.as_tensor(ds.labels, dtype=torch.long).clone()
    g = torch.Generator().manual_seed(10_000 + seed)
    share = 1.0 if source == "random" else (0.0 if source == "oracle" else int(source[len("noise"):]) / 100)
    replace = torch.rand(len(y), generator=g) < share
    y[replace] = torch.randint(0, K, (int(replace.sum()),), generator=g)
    meta = {**_dataset_identity(ds), "ks": [K], "seed": seed, "encoder": f"{source} (true classes, "
            f"{share:.0%} replaced by uniform random labels)", "encoder_sha256": None, "source": source}
    return PseudoLabels({K: y}, meta, item_means=item_means(ds))


def get_labels(source: str, P, ds, train_full, work: Path, device, long_epochs: int) -> PseudoLabels:
    if source in ("simclr", "simclr-long"):
        Ps = P.replace(epochs=long_epochs) if source == "simclr-long" else P
        sim = get_or_train("simclr", Ps, work / source, data=train_full, device=device)
        return get_or_make_pseudo_labels(work / "labels" / f"{source}.pt", sim.checkpoint, ds, ks=(K,), seed=P.seed,
                                         device=device, encoder_name=f"simclr ({Ps.epochs} epochs, seed {P.seed})")
    return labels_from_classes(ds, source, P.seed)


def run(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(out / "results.json") if (out / "results.json").exists() else []
    done = {(r["row"], r["seed"]) for r in records}
    train_full = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test")
    for seed in args.seeds:
        for row in args.rows:
            if (row, seed) in done:
                continue
            source, method, extra = ROWS[row]
            P = get_preset(args.preset, seed=seed, data=args.data, pseudo_ks=(K,), **extra)
            work = out / f"seed{seed}"
            ds = pretrain_dataset(P, train_full)
            pl, score, t0 = False, None, time.perf_counter()
            if source is not None:
                pl = get_labels(source, P, ds, train_full, work, args.device, args.long_epochs)
                score = nmi(pl.labels[K], ds.labels)
            res = get_or_train(method, P, work / row, data=train_full, pseudo_labels=pl, device=args.device)
            pt_secs = sum(h["seconds"] for h in res.history)
            ft = get_or_finetune(res.checkpoint, "slf", P, work / row / "finetune-slf", data=train_full,
                                 device=args.device)
            t1 = time.perf_counter()
            r = evaluate(ft.model, test, attack="pgd20", n=P.eval_n, device=args.device, seed=seed)
            extra_eval = {}
            if args.aa_n:
                extra_eval["aa"] = evaluate(ft.model, test, attack="autoattack", n=args.aa_n, device=args.device,
                                            seed=seed)
            print(f"[seed {seed}] {row:16s} NMI {'-' if score is None else f'{score:.3f}'}: {format_result(r)}"
                  + (f"; AA {pct(extra_eval['aa']['ra'])}% (n={args.aa_n})" if extra_eval else ""), flush=True)
            rec = make_record(NAMES[row], "SLF", train_full.name, test.name, r, P.name, seed, ft.seconds,
                              pretrain_seconds=pt_secs, eval_seconds=time.perf_counter() - t1, row=row,
                              label_source=source, nmi=score, base_temperature=P.base_temperature,
                              wall_seconds=time.perf_counter() - t0, **extra_eval)
            records = [x for x in records if (x["row"], x["seed"]) != (row, seed)] + [rec]
            save_records(records, out / "results.json")
            write_report(records, out, args)


def write_report(records, out: Path, args) -> None:
    lines = [f"Study 1 (issue 27): preset `{args.preset}`, data `{args.data}`, one pseudo-label head K = {K}; "
             f"SLF; {platform.processor() or platform.machine()}, {args.threads} threads.", "",
             "| row | seed | labels' NMI | SA % [95% CI] | RA PGD-20 % [95% CI] | AA % (n) | n | pretrain s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = list(ROWS)
    for r in sorted(records, key=lambda r: (order.index(r["row"]), r["seed"])):
        aa = f"{pct(r['aa'])} ({r['aa_n']})" if r.get("aa") is not None else "-"
        nmi_s = "-" if r.get("nmi") is None else f"{r['nmi']:.3f}"
        lines.append(f"| {r['method']} | {r['seed']} | {nmi_s} "
                     f"| {pct(r['sa'])} [{pct(r['sa_ci'][0])}, {pct(r['sa_ci'][1])}] "
                     f"| {pct(r['ra'])} [{pct(r['ra_ci'][0])}, {pct(r['ra_ci'][1])}] | {aa} | {r['n']} "
                     f"| {r['pretrain_seconds']:.0f} |")
    lines += ["", "| comparison (RA, PGD-20) | seed | difference | intervals |", "| --- | --- | --- | --- |"]
    by = {(r["row"], r["seed"]): r for r in records}
    for a, b in [("oracle", "no-pl"), ("simclr", "no-pl"), ("random", "no-pl"), ("oracle", "acl"),
                 ("oracle-unscaled", "oracle"), ("simclr-unscaled", "simclr"), ("oracle-unscaled", "acl"),
                 ("noise50", "no-pl"), ("simclr-long", "no-pl")]:
        for seed in sorted({r["seed"] for r in records}):
            if (a, seed) in by and (b, seed) in by:
                x, y = by[a, seed], by[b, seed]
                s = intervals_separate(x, y, "ra")
                lines.append(f"| {a} vs {b} | {seed} | {(x['ra'] - y['ra']) * 100:+.1f} points "
                             f"| {'separate' if s else 'overlap'} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="benchmark")
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--long-epochs", type=int, default=50)
    ap.add_argument("--aa-n", type=int, default=0, help="also the standard AutoAttack on this many test images")
    ap.add_argument("--out", default="benchmarks/out/study-pseudo")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:
        get_preset(args.preset)
    except ValueError as e:
        ap.error(str(e))
    run(args)


if __name__ == "__main__":
    main()
