"""Measured results on real CIFAR-10: pretrain, finetune, evaluate, report (issue 6).

Runs, for one preset and one or more seeds, on the CIFAR-10 JPEG zip (or any
ImageFolder / torchvision dataset given with --data):

* pretraining: SimCLR, ACL, AdvCL (HFC view) at every seed, then - at the first seed only -
  AdvCL with pseudo-labels (k-means on that seed's SimCLR features), AdvCL with
  the LFC view instead of HFC, and AdvCL without the fourth view;
* finetuning: SLF for every encoder; ALF at the first seed for SimCLR, ACL, AdvCL
  and AdvCL with pseudo-labels (``--alf-all``: every encoder; AFF with --aff);
* evaluation: SA and PGD-20 RA on the preset's ``eval_n`` test images, with
  95% Wilson intervals.

Everything is cached under --out (a second call only reports; an interrupted
call resumes at the first missing stage). The finetuning validation split
(held out from the training images) is what settings were chosen on; its
accuracy is stored beside each test number (``val_sa``, ``val_ra`` for ALF).
Writes, after every evaluation,
``results.json`` / ``results.csv`` and ``results.md`` (a markdown table) there,
and ``results.png``.

    python benchmarks/results.py --preset quick --data ../shared/data/cifar10-jpeg.zip --seeds 0 1 --out benchmarks/out/quick
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from advcl_lite import get_preset
from advcl_lite.data import load_dataset
from advcl_lite.evaluate import evaluate, format_result, load_records, make_record, plot_results, save_records
from advcl_lite.finetune import get_or_finetune
from advcl_lite.pretrain import get_or_train, pretrain_dataset
from advcl_lite.pseudo_labels import PseudoLabels, make_pseudo_labels

HEADLINE = [("simclr", "hfc", False), ("acl", "hfc", False), ("advcl", "hfc", False)]
EXTRA = [("advcl", "hfc", True), ("advcl", "lfc", False), ("advcl", "none", False)]


def label(method: str, view: str, pseudo: bool) -> str:
    if method != "advcl":
        return {"simclr": "SimCLR", "acl": "ACL"}[method]
    return "AdvCL" + {"hfc": "", "lfc": " (LFC view)", "none": " (no 4th view)"}[view] + (" + pseudo-labels" if pseudo else "")


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.1f}"


def _rows(records, method, scheme="SLF", seed=None):
    return [r for r in records if r["method"] == method and r["scheme"] == scheme and (seed is None or r["seed"] == seed)]


def _cmp(a: dict, b: dict, metric: str = "ra") -> str:
    """``a`` vs ``b`` on one metric: the difference in points and whether the 95% intervals overlap."""
    d = (a[metric] - b[metric]) * 100
    lo_a, hi_a = a[f"{metric}_ci"]
    lo_b, hi_b = b[f"{metric}_ci"]
    sep = "intervals do not overlap" if (lo_a > hi_b or lo_b > hi_a) else "intervals overlap"
    return f"{a[metric] * 100:.1f} vs {b[metric] * 100:.1f} ({d:+.1f} points; {sep})"


def claims(records) -> list[str]:
    """The paper's three claims, checked on these records (SLF, PGD-20 RA), one line each."""
    out = ["| claim (SLF, RA under PGD-20) | seed | measured | reproduced? |", "| --- | --- | --- | --- |"]
    seeds = sorted({r["seed"] for r in records})
    for seed in seeds:
        adv, acl, sim = (_rows(records, m, seed=seed) for m in ("AdvCL", "ACL", "SimCLR"))
        if adv and acl and sim:
            a, c, s_ = adv[0], acl[0], sim[0]
            ok = a["ra"] > c["ra"] > s_["ra"]
            out.append(f"| AdvCL > ACL > SimCLR | {seed} | AdvCL {a['ra'] * 100:.1f}, ACL {c['ra'] * 100:.1f}, "
                       f"SimCLR {s_['ra'] * 100:.1f} | {'yes' if ok else 'no'} |")
    for other, what in (("AdvCL (LFC view)", "HFC view beats the LFC view"), ("AdvCL (no 4th view)", "HFC view beats no 4th view"),
                        ("AdvCL + pseudo-labels", "pseudo-labels add robustness")):
        for seed in seeds:
            o, a = _rows(records, other, seed=seed), _rows(records, "AdvCL", seed=seed)
            if o and a:
                first, second = (o[0], a[0]) if other.endswith("pseudo-labels") else (a[0], o[0])
                names = f"{first['method']} vs {second['method']}"
                ok = first["ra"] > second["ra"] and "do not overlap" in _cmp(first, second)
                out.append(f"| {what} | {seed} | {names}: {_cmp(first, second)} | "
                           f"{'yes' if ok else ('same direction, within noise' if first['ra'] > second['ra'] else 'no')} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--aff", action="store_true", help="also run AFF (TRADES) at the first seed")
    ap.add_argument("--no-extra", action="store_true", help="only the headline methods")
    ap.add_argument("--no-alf", action="store_true")
    ap.add_argument("--alf-all", action="store_true", help="ALF for the ablations too")
    ap.add_argument("--report-only", action="store_true",
                    help="only rewrite results.md / results.png from the results.json already in --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"benchmarks/out/{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        write_report(load_records(out / "results.json"), out, f"Preset `{args.preset}`, data `{args.data}` (report rewritten from results.json).")
        return
    train_full = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test")
    records, stage_times = [], []
    t_all = time.perf_counter()
    # the headline comparison at every seed first, then the ablations at the first seed
    jobs = [(si, seed, run) for si, seed in enumerate(args.seeds) for run in HEADLINE]
    jobs += [] if args.no_extra else [(0, args.seeds[0], run) for run in EXTRA]
    for si, seed, (method, view, pseudo) in jobs:
        P = get_preset(args.preset, seed=seed, data=args.data)
        work = out / f"seed{seed}"
        pt_ds = pretrain_dataset(P, train_full)   # the images this preset and seed pretrain on
        pl = None
        if pseudo:
            simclr = get_or_train("simclr", P, work, data=train_full, device=args.device)
            pl_path = work / "pseudo_labels" / "simclr.pt"
            t0 = time.perf_counter()
            if pl_path.exists():
                pl = PseudoLabels.load(pl_path, dataset=pt_ds)
            else:
                pl = make_pseudo_labels(simclr.checkpoint, pt_ds, ks=P.pseudo_ks, seed=seed, device=args.device)
                pl.save(pl_path)
                stage_times.append({"stage": "pseudo-labels (k-means)", "seed": seed, "seconds": time.perf_counter() - t0})
        res = get_or_train(method, P, work, data=train_full, view=view, pseudo_labels=pl, device=args.device)
        pt_secs = sum(h["seconds"] for h in res.history)
        name = label(method, view, pseudo)
        stage_times.append({"stage": f"pretrain {name}", "seed": seed, "seconds": pt_secs})
        alf = si == 0 and not args.no_alf and (args.alf_all or view == "hfc")
        schemes = ["slf"] + (["alf"] if alf else []) + (["aff"] if (args.aff and si == 0) else [])
        for scheme in schemes:
            ft_dir = work / "finetune" / f"{res.checkpoint.parent.name}-{scheme}"
            ft = get_or_finetune(res.checkpoint, scheme, P, ft_dir, data=train_full, device=args.device)
            val = ft.val or {}
            t1 = time.perf_counter()
            r = evaluate(ft.model, test, attack="pgd20", n=P.eval_n, device=args.device, seed=seed)
            ev_secs = time.perf_counter() - t1
            print(f"[seed {seed}] {name:34s} {scheme.upper()}: {format_result(r)}", flush=True)
            records.append(make_record(name, scheme.upper(), train_full.name, test.name, r, P.name, seed,
                                       ft.seconds, pretrain_seconds=pt_secs, eval_seconds=ev_secs,
                                       train_images=len(pt_ds),
                                       val_sa=val.get("val_sa"), val_ra=val.get("val_ra"), val_n=val.get("val_n"),
                                       best_epoch=ft.best_epoch))
            save_records(records, out / "results.json")  # after every row: an interrupted call keeps them
    save_records(records, out / "results.json")
    save_records(records, out / "results.csv")
    (out / "stage_times.json").write_text(json.dumps(stage_times, indent=1))
    total = time.perf_counter() - t_all
    write_report(records, out, f"Preset `{args.preset}`, data `{args.data}`, seeds {args.seeds}, "
                               f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
                               f"this call took {total / 60:.1f} min (cached stages excluded).")


def write_report(records, out: Path, header: str) -> None:
    """``results.md`` (per-run table, then the claims) and ``results.png`` in ``out``."""
    fig = plot_results(records, metrics=("sa", "ra"))
    fig.savefig(out / "results.png", dpi=80, bbox_inches="tight")
    lines = [header, "",
             "| method | scheme | seed | SA % [95% CI] | RA PGD-20 % [95% CI] | n | val SA / RA % | pretrain s | finetune s | eval s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        lines.append(f"| {r['method']} | {r['scheme']} | {r['seed']} | {r['sa'] * 100:.1f} [{r['sa_ci'][0] * 100:.1f}, {r['sa_ci'][1] * 100:.1f}] "
                     f"| {r['ra'] * 100:.1f} [{r['ra_ci'][0] * 100:.1f}, {r['ra_ci'][1] * 100:.1f}] | {r['n']} "
                     f"| {_pct(r.get('val_sa'))} / {_pct(r.get('val_ra'))} "
                     f"| {r['pretrain_seconds']:.0f} | {r['seconds']:.0f} | {r['eval_seconds']:.0f} |")
    lines += ["", *claims(records)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
