"""Measured results on real CIFAR-10: pretrain, finetune, evaluate, report (issue 6).

Runs, for one preset and one or more seeds, on the CIFAR-10 JPEG zip (or any
ImageFolder / torchvision dataset given with --data):

* pretraining, with the original codes' settings (``advcl_lite.presets``): SimCLR, ACL and
  AdvCL (with its pseudo-labels: k-means on that seed's SimCLR features) at every seed, and
  a random-init encoder (the floor a pretrained encoder must clear); then, at the first seed
  only, the ablations of AdvCL: without pseudo-labels, the LFC view instead of HFC, no fourth
  view, the attack in eval mode, and the contrastive loss without the x7.14;
* finetuning: SLF for every encoder; ALF at the first seed for SimCLR, ACL and AdvCL
  unless --no-alf (``--alf-all``: every encoder; AFF with --aff);
* evaluation: SA and PGD-20 RA on the preset's ``eval_n`` test images, with
  95% Wilson intervals.

Everything is cached under --out (a second call only reports; an interrupted
call resumes at the first missing stage). The finetuning validation split
(held out from the training images) is what settings were chosen on; its
accuracy is stored beside each test number (``val_sa``, ``val_ra`` for ALF).
Writes, after every evaluation,
``results.json`` / ``results.csv`` and ``results.md`` (a markdown table) there,
and ``results.png``.

    python benchmarks/results.py --preset benchmark --data ../shared/data/cifar10-jpeg.zip --seeds 0 1 --no-alf
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
from advcl_lite.evaluate import evaluate
from advcl_lite.finetune import get_or_finetune
from advcl_lite.models import ResNet18
from advcl_lite.pretrain import auto_pseudo_labels, get_or_train, pretrain_dataset
from advcl_lite.results import format_result, pct, intervals_separate, load_records, make_record, save_records
from advcl_lite.viz import plot_results

# (row label, method, view, pseudo-labels, preset overrides); "random" is an untrained encoder
HEADLINE = [("SimCLR", "simclr", "hfc", False, {}), ("ACL", "acl", "hfc", False, {}),
            ("AdvCL", "advcl", "hfc", True, {}), ("Random init", "random", None, False, {})]
EXTRA = [("AdvCL without pseudo-labels", "advcl", "hfc", False, {}),   # most informative first
         ("AdvCL (eval-mode attack)", "advcl", "hfc", True, {"attack_mode": "eval"}),
         ("AdvCL (unscaled loss)", "advcl", "hfc", True, {"base_temperature": 0.5}),
         ("AdvCL (LFC view)", "advcl", "lfc", True, {}),
         ("AdvCL (no 4th view)", "advcl", "none", True, {})]


def _rows(records, method, scheme="SLF", seed=None):
    return [r for r in records if r["method"] == method and r["scheme"] == scheme and (seed is None or r["seed"] == seed)]


def _cmp(a: dict, b: dict, metric: str = "ra") -> str:
    """``a`` vs ``b`` on one metric: the difference in points and whether the 95% intervals overlap."""
    d = (a[metric] - b[metric]) * 100
    sep = "intervals do not overlap" if intervals_separate(a, b, metric) else "intervals overlap"
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
    pairs = [("AdvCL", "ACL", "AdvCL beats ACL"), ("ACL", "SimCLR", "ACL beats SimCLR"),
             ("AdvCL", "Random init", "AdvCL beats a random encoder"), ("SimCLR", "Random init", "SimCLR beats a random encoder"),
             ("AdvCL", "AdvCL without pseudo-labels", "pseudo-labels add robustness"),
             ("AdvCL", "AdvCL (LFC view)", "HFC view beats the LFC view"),
             ("AdvCL", "AdvCL (no 4th view)", "HFC view beats no 4th view"),
             ("AdvCL", "AdvCL (eval-mode attack)", "the original's train-mode attack beats eval mode"),
             ("AdvCL", "AdvCL (unscaled loss)", "the original's x7.14 loss beats the unscaled one")]
    for a_name, b_name, what in pairs:
        for seed in seeds:
            a, o = _rows(records, a_name, seed=seed), _rows(records, b_name, seed=seed)
            if o and a:
                first, second = a[0], o[0]
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
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a preset field for every run, e.g. --set amp=bf16 (repeatable); "
                         "use a separate --out, since the runs' configurations change")
    ap.add_argument("--report-only", action="store_true",
                    help="only rewrite results.md / results.png from the results.json already in --out")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        if "=" not in item:
            ap.error(f"--set needs FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    try:
        get_preset(args.preset, **overrides)   # a bad field or value stops here, before any data is read
    except ValueError as e:
        ap.error(str(e))
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
    # the first seed's headline and ablations, then the headline at the other seeds
    jobs = [(0, args.seeds[0], run) for run in HEADLINE + ([] if args.no_extra else EXTRA)]
    jobs += [(si, seed, run) for si, seed in enumerate(args.seeds) if si > 0 for run in HEADLINE]
    labels = {}
    sets = "".join(f" --set {k}={v}" for k, v in overrides.items())
    for si, seed, (name, method, view, pseudo, extra) in jobs:
        P = get_preset(args.preset, **{**overrides, "seed": seed, "data": args.data})
        work = out / f"seed{seed}"
        pt_ds = pretrain_dataset(P, train_full)   # the images this preset and seed pretrain on
        if method == "random":                   # the floor: an untrained encoder, seeded
            torch.manual_seed(seed)
            encoder, pt_secs, ft_name = ResNet18(P.base_width), 0.0, "random"
        else:
            pl = False
            if pseudo:
                if seed not in labels:           # k-means on this seed's SimCLR features, once per seed
                    t0 = time.perf_counter()
                    labels[seed] = auto_pseudo_labels(P, pt_ds, work, device=args.device)
                    if not labels[seed].meta.get("cached"):
                        stage_times.append({"stage": "pseudo-labels (k-means)", "seed": seed,
                                            "seconds": time.perf_counter() - t0})
                pl = labels[seed]
            # an ablation that changes preset fields gets its own folder, so it never replaces the headline run
            run_dir = work if not extra else work / ("ablation-" + "-".join(f"{k}={v}" for k, v in extra.items()))
            res = get_or_train(method, P.replace(**extra), run_dir, data=train_full, view=view, pseudo_labels=pl,
                               device=args.device)
            pt_secs = sum(h["seconds"] for h in res.history)
            encoder, ft_name = res.checkpoint, f"{run_dir.name}-{res.checkpoint.parent.name}" if extra else res.checkpoint.parent.name
            stage_times.append({"stage": f"pretrain {name}", "seed": seed, "seconds": pt_secs})
        alf = si == 0 and not args.no_alf and (args.alf_all or name in ("SimCLR", "ACL", "AdvCL"))
        schemes = ["slf"] + (["alf"] if alf else []) + (["aff"] if (args.aff and si == 0) else [])
        for scheme in schemes:
            ft_dir = work / "finetune" / f"{ft_name}-{scheme}"
            ft = get_or_finetune(encoder, scheme, P, ft_dir, data=train_full, device=args.device)
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
            write_report(records, out, f"Preset `{args.preset}`{sets}, data `{args.data}`, seeds {args.seeds} "
                                       f"(partial: {len(records)} rows so far).")
    save_records(records, out / "results.json")
    save_records(records, out / "results.csv")
    (out / "stage_times.json").write_text(json.dumps(stage_times, indent=1))
    total = time.perf_counter() - t_all
    write_report(records, out, f"Preset `{args.preset}`{sets}, data `{args.data}`, seeds {args.seeds}, "
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
                     f"| {pct(r.get('val_sa'))} / {pct(r.get('val_ra'))} "
                     f"| {r['pretrain_seconds']:.0f} | {r['seconds']:.0f} | {r['eval_seconds']:.0f} |")
    lines += ["", *claims(records)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
