"""Measured results on real CIFAR-10: pretrain, finetune, evaluate, report (issue 6).

Runs, for one preset and one or more seeds, on the CIFAR-10 JPEG zip (or any
ImageFolder / torchvision dataset given with --data):

* pretraining: SimCLR, ACL, AdvCL (HFC view), and - at the first seed only -
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
from advcl_lite.evaluate import evaluate, format_result, make_record, plot_results, save_records
from advcl_lite.finetune import finetune, load_finetuned
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"benchmarks/out/{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    train_full = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test")
    records, stage_times = [], []
    t_all = time.perf_counter()
    for si, seed in enumerate(args.seeds):
        P = get_preset(args.preset, seed=seed, data=args.data)
        work = out / f"seed{seed}"
        runs = HEADLINE + ([] if (si > 0 or args.no_extra) else EXTRA)
        for method, view, pseudo in runs:
            pl = None
            if pseudo:
                simclr = get_or_train("simclr", P, work, data=train_full, device=args.device)
                pl_path = work / "pseudo_labels" / "simclr.pt"
                ds = pretrain_dataset(P, train_full)
                t0 = time.perf_counter()
                if pl_path.exists():
                    pl = PseudoLabels.load(pl_path, dataset=ds)
                else:
                    pl = make_pseudo_labels(simclr.checkpoint, ds, ks=P.pseudo_ks, seed=seed, device=args.device)
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
                t0 = time.perf_counter()
                if (ft_dir / "model.pt").exists():
                    model, ft_meta = load_finetuned(ft_dir / "model.pt", device=args.device)
                else:
                    ft = finetune(res.checkpoint, scheme, P, data=train_full, out_dir=ft_dir, device=args.device)
                    model, ft_meta = ft.model, ft.meta
                ft_secs = ft_meta.get("seconds", float("nan"))
                val = ft_meta.get("val_metrics") or {}
                t1 = time.perf_counter()
                r = evaluate(model, test, attack="pgd20", n=P.eval_n, device=args.device, seed=seed)
                ev_secs = time.perf_counter() - t1
                print(f"[seed {seed}] {name:34s} {scheme.upper()}: {format_result(r)}", flush=True)
                records.append(make_record(name, scheme.upper(), train_full.name, test.name, r, P.name, seed,
                                           ft_secs, pretrain_seconds=pt_secs, eval_seconds=ev_secs,
                                           train_images=len(pretrain_dataset(P, train_full)),
                                           val_sa=val.get("val_sa"), val_ra=val.get("val_ra"), val_n=val.get("val_n"),
                                           best_epoch=ft_meta.get("best_epoch")))
                save_records(records, out / "results.json")  # after every row: an interrupted call keeps them
    save_records(records, out / "results.json")
    save_records(records, out / "results.csv")
    (out / "stage_times.json").write_text(json.dumps(stage_times, indent=1))
    fig = plot_results(records, metrics=("sa", "ra"))
    fig.savefig(out / "results.png", dpi=80, bbox_inches="tight")
    total = time.perf_counter() - t_all
    lines = [f"Preset `{args.preset}`, data `{args.data}`, seeds {args.seeds}, {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads; this call took {total / 60:.1f} min (cached stages excluded).", "",
             "| method | scheme | seed | SA % [95% CI] | RA PGD-20 % [95% CI] | n | val SA / RA % | pretrain s | finetune s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        lines.append(f"| {r['method']} | {r['scheme']} | {r['seed']} | {r['sa'] * 100:.1f} [{r['sa_ci'][0] * 100:.1f}, {r['sa_ci'][1] * 100:.1f}] "
                     f"| {r['ra'] * 100:.1f} [{r['ra_ci'][0] * 100:.1f}, {r['ra_ci'][1] * 100:.1f}] | {r['n']} "
                     f"| {_pct(r.get('val_sa'))} / {_pct(r.get('val_ra'))} "
                     f"| {r['pretrain_seconds']:.0f} | {r['seconds']:.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
