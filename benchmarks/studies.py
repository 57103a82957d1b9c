"""The studies of issue 27: when does each of AdvCL's ingredients pay? One resumable command per study.

``--study pseudo`` (study 1): how good must AdvCL's pseudo-labels be before they raise robust accuracy?

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

``--study length`` (study 2): ACL, AdvCL without pseudo-labels (HFC view) and AdvCL without pseudo-labels and
without a fourth view, each pretrained for ``--epochs`` (default 5, 15, 40; warm-up 1 % of the run, as the
presets scale the original's 10 of 1000 epochs): does the HFC view's penalty shrink with training?

``--study transfer`` (study 3): pretrain on the images of CIFAR-10 classes 0-4 only (SimCLR, ACL, AdvCL with
pseudo-labels clustered from that SimCLR, a random encoder), finetune SLF and ALF on classes 5-9 and
evaluate on their test images, which no encoder saw: robustness carried to a task the pretraining never saw.

``--study methods`` (issue 32): what came after AdvCL, at the same scale: ACL, AdvCL (its default
pseudo-labels, five heads), DynACL and DynACL-AIR (as AIR's code runs it: AIR's regularisers, no momentum
encoder), each finetuned SLF and ALF: does the leaderboard's order hold on a CPU budget?

Every run: SA and PGD-20 RA on the preset's ``eval_n`` test images with 95 % Wilson intervals; ``--aa-n N``
adds the standard AutoAttack on N of the same images; ``--set FIELD=VALUE`` changes a preset field for
every run (e.g. ``amp=bf16``: each record says so). Everything is cached under ``--out`` (one folder per row
and seed); an interrupted call resumes at the first missing stage, and ``--rows`` picks rows in the order
given (the most informative first).

    python benchmarks/studies.py --study pseudo --preset benchmark --data ../shared/data/cifar10-jpeg.zip --seeds 0
    python benchmarks/studies.py --study length --set amp=bf16 --out benchmarks/out/study-length
    python benchmarks/studies.py --study transfer --out benchmarks/out/study-transfer
    python benchmarks/studies.py --study methods --seeds 0 1 --out benchmarks/out/study-methods
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from advcl_lite import get_preset
from advcl_lite.data import ImageDataset, load_dataset
from advcl_lite.evaluate import evaluate
from advcl_lite.finetune import get_or_finetune
from advcl_lite.models import ResNet18
from advcl_lite.pretrain import auto_pseudo_labels, get_or_train, pretrain_dataset
from advcl_lite.pseudo_labels import PseudoLabels, _dataset_identity, get_or_make_pseudo_labels, item_means
from advcl_lite.results import format_result, intervals_separate, load_records, make_record, pct, save_records

K = 10
# study 1, row: (label source or None, method, preset overrides)
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
# study 2: (method, view) per arm
ARMS = {"acl": ("acl", "hfc", "ACL"), "advcl-nopl": ("advcl", "hfc", "AdvCL without pseudo-labels (HFC view)"),
        "advcl-nopl-none": ("advcl", "none", "AdvCL without pseudo-labels, no 4th view")}
# study 3: the encoders pretrained on classes 0-4
TRANSFER = {"simclr": "SimCLR", "acl": "ACL", "advcl": "AdvCL", "random": "Random init"}
# issue 32: (method, preset overrides, name)
LATER = {"dynacl": ("dynacl", {}, "DynACL"),     # the preset's momentum: off at benchmark (README)
         "dynacl-air": ("dynacl", {"air": True, "dynacl_momentum": 0.0}, "DynACL-AIR"),
         "acl": ("acl", {}, "ACL"), "advcl": ("advcl", {}, "AdvCL"),
         "dynacl-momentum": ("dynacl", {"dynacl_momentum": 0.99}, "DynACL, momentum copy 0.99 per step (exported)")}


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


def classes(ds: ImageDataset, keep: range, name: str) -> ImageDataset:
    """The images of classes ``keep`` only, relabelled 0..len(keep)-1 (their names kept, in order)."""
    idx = torch.nonzero((ds.labels >= keep.start) & (ds.labels < keep.stop)).flatten()
    return ImageDataset(ds.images[idx], ds.labels[idx] - keep.start, list(ds.classes[keep.start:keep.stop]),
                        f"{ds.name}-{name}", ds.split)


class Study:
    """Records of one study in ``out/results.json``, one per (row, scheme, seed); a done row is skipped."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.records = load_records(self.out / "results.json") if (self.out / "results.json").exists() else []
        self.overrides = parse_sets(args.set)

    def done(self, row, seed, scheme="SLF") -> bool:
        return any((r["row"], r["seed"], r["scheme"]) == (row, seed, scheme) for r in self.records)

    def finish(self, row, name, seed, encoder, P, train, test, pt_secs, scheme="slf", folder=None, **extra):
        """Finetune ``encoder`` (``scheme``) on ``train``, evaluate on ``test``, record and report."""
        t0 = time.perf_counter()
        ft = get_or_finetune(encoder, scheme, P, folder or self.out / f"seed{seed}" / row / f"finetune-{scheme}",
                             data=train, device=self.args.device)
        r = evaluate(ft.model, test, attack="pgd20", n=P.eval_n, device=self.args.device, seed=seed)
        ev = {}
        if self.args.aa_n:
            ev["aa"] = evaluate(ft.model, test, attack="autoattack", n=self.args.aa_n, device=self.args.device,
                                seed=seed)
        print(f"[seed {seed}] {row:18s} {scheme.upper()}: {format_result(r)}"
              + (f"; AA {pct(ev['aa']['ra'])}% (n={self.args.aa_n})" if ev else ""), flush=True)
        pretrain_data = extra.pop("pretrain_data", getattr(train, "name", str(train)))
        rec = make_record(name, scheme.upper(), pretrain_data, test.name, r, P.name, seed,
                          ft.seconds, pretrain_seconds=pt_secs, eval_seconds=time.perf_counter() - t0, row=row,
                          amp=P.amp, epochs=P.epochs, **extra, **ev)
        self.records = [x for x in self.records if (x["row"], x["seed"], x["scheme"]) != (row, seed, rec["scheme"])]
        self.records.append(rec)
        save_records(self.records, self.out / "results.json")


def parse_sets(items) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: --set needs FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def study_pseudo(st: Study, train_full, test) -> None:
    a = st.args
    for seed in a.seeds:
        for row in a.rows or list(ROWS):
            if st.done(row, seed):
                continue
            source, method, extra = ROWS[row]
            P = get_preset(a.preset, seed=seed, data=a.data, pseudo_ks=(K,), **{**st.overrides, **extra})
            work = st.out / f"seed{seed}"
            ds = pretrain_dataset(P, train_full)
            pl, score = False, None
            if source is not None:
                pl = get_labels(source, P, ds, train_full, work, a.device, a.long_epochs)
                score = nmi(pl.labels[K], ds.labels)
            res = get_or_train(method, P, work / row, data=train_full, pseudo_labels=pl, device=a.device)
            st.finish(row, NAMES[row], seed, res.checkpoint, P, train_full, test,
                      sum(h["seconds"] for h in res.history), label_source=source, nmi=score,
                      base_temperature=P.base_temperature)
            report_pseudo(st)
    report_pseudo(st)


def study_length(st: Study, train_full, test) -> None:
    a = st.args
    for seed in a.seeds:
        for epochs in a.epochs:
            for arm in a.rows or list(ARMS):
                row = f"{arm}-e{epochs}"
                if st.done(row, seed):
                    continue
                method, view, name = ARMS[arm]
                P = get_preset(a.preset, seed=seed, data=a.data, epochs=epochs, warmup_epochs=0.01 * epochs,
                               **st.overrides)
                res = get_or_train(method, P, st.out / f"seed{seed}" / row, data=train_full, view=view,
                                   pseudo_labels=False, device=a.device)
                st.finish(row, name, seed, res.checkpoint, P, train_full, test,
                          sum(h["seconds"] for h in res.history), arm=arm)
                report_length(st)
    report_length(st)


def study_transfer(st: Study, train_full, test) -> None:
    a = st.args
    pre = classes(train_full, range(0, 5), "classes0-4")
    ft_train, ft_test = classes(train_full, range(5, 10), "classes5-9"), classes(test, range(5, 10), "classes5-9")
    for seed in a.seeds:
        for row in a.rows or list(TRANSFER):
            P = get_preset(a.preset, seed=seed, data=a.data, **st.overrides)
            work = st.out / f"seed{seed}"
            for scheme in ("slf", "alf"):
                if st.done(row, seed, scheme.upper()):
                    continue
                if row == "random":
                    torch.manual_seed(seed)
                    encoder, secs = ResNet18(P.base_width), 0.0
                else:
                    ds = pretrain_dataset(P, pre)
                    pl = auto_pseudo_labels(P, ds, work, device=a.device) if row == "advcl" else False
                    res = get_or_train(row, P, work, data=ds, pseudo_labels=pl if row == "advcl" else "auto",
                                       device=a.device)
                    encoder, secs = res.checkpoint, sum(h["seconds"] for h in res.history)
                st.finish(row, TRANSFER[row], seed, encoder, P, ft_train, ft_test, secs, scheme=scheme,
                          folder=work / "finetune" / f"{row}-{scheme}", pretrain_data=pre.name)
                report_transfer(st)
    report_transfer(st)


def study_methods(st: Study, train_full, test) -> None:
    a = st.args
    for seed in a.seeds:
        work = st.out / f"seed{seed}"
        for row in a.rows or list(LATER):
            method, extra, name = LATER[row]
            P = get_preset(a.preset, seed=seed, data=a.data, **{**st.overrides, **extra})
            for scheme in ("slf", "alf"):
                if st.done(row, seed, scheme.upper()):
                    continue
                res = get_or_train(method, P, work, data=train_full, device=a.device)   # AdvCL: its own SimCLR labels
                st.finish(row, name, seed, res.checkpoint, P, train_full, test,
                          sum(h["seconds"] for h in res.history), scheme=scheme,
                          folder=work / "finetune" / f"{row}-{scheme}", air=P.air, dynacl_momentum=P.dynacl_momentum)
                report_methods(st)
    report_methods(st)


def _row_line(r, extra: str = "") -> str:
    aa = f"{pct(r['aa'])} ({r['aa_n']})" if r.get("aa") is not None else "-"
    return (f"| {r['method']} | {r['scheme']} | {r['seed']} |{extra} {pct(r['sa'])} [{pct(r['sa_ci'][0])}, "
            f"{pct(r['sa_ci'][1])}] | {pct(r['ra'])} [{pct(r['ra_ci'][0])}, {pct(r['ra_ci'][1])}] | {aa} | {r['n']} "
            f"| {r.get('amp', 'none')} | {r['pretrain_seconds']:.0f} |")


def _comparisons(records, pairs) -> list[str]:
    lines = ["", "| comparison (RA, PGD-20) | scheme | seed | difference | intervals |", "| --- | --- | --- | --- | --- |"]
    by = {(r["row"], r["scheme"], r["seed"]): r for r in records}
    for a, b in pairs:
        for (row, scheme, seed), x in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            if row == a and (b, scheme, seed) in by:
                y = by[b, scheme, seed]
                sep = intervals_separate(x, y, "ra")
                lines.append(f"| {a} vs {b} | {scheme} | {seed} | {(x['ra'] - y['ra']) * 100:+.1f} points "
                             f"| {'separate' if sep else 'overlap'} |")
    return lines


HEADER = " SA % [95% CI] | RA PGD-20 % [95% CI] | AA % (n) | n | amp | pretrain s |"


def _write(st: Study, title: str, cols: str, rows: list[str], extra: list[str]) -> None:
    a = st.args
    lines = [f"{title}: preset `{a.preset}`, data `{a.data}`{''.join(f', {k}={v}' for k, v in st.overrides.items())}; "
             f"{platform.processor() or platform.machine()}, {a.threads} threads.", "",
             f"| row | scheme | seed |{cols}{HEADER}", "| --- " * (3 + cols.count("|") + 6) + "|", *rows, *extra]
    (st.out / "results.md").write_text("\n".join(lines) + "\n")


def report_pseudo(st: Study) -> None:
    order = list(ROWS)
    recs = sorted(st.records, key=lambda r: (order.index(r["row"]), r["seed"]))
    rows = [_row_line(r, f" {'-' if r.get('nmi') is None else format(r['nmi'], '.3f')} |") for r in recs]
    _write(st, f"Study 1 (issue 27), one pseudo-label head K = {K}, SLF", " labels' NMI |", rows,
           _comparisons(st.records, [("oracle", "no-pl"), ("simclr", "no-pl"), ("random", "no-pl"), ("oracle", "acl"),
                                     ("oracle-unscaled", "oracle"), ("simclr-unscaled", "simclr"),
                                     ("oracle-unscaled", "acl"), ("noise25", "no-pl"), ("noise50", "no-pl"),
                                     ("noise75", "no-pl"), ("simclr-long", "no-pl"), ("no-pl", "acl")]))


def report_length(st: Study) -> None:
    recs = sorted(st.records, key=lambda r: (list(ARMS).index(r["arm"]), r["epochs"], r["seed"]))
    rows = [_row_line(r, f" {r['epochs']} |") for r in recs]
    pairs = [(f"advcl-nopl-e{e}", f"{other}-e{e}") for e in sorted({r["epochs"] for r in recs})
             for other in ("acl", "advcl-nopl-none")]
    _write(st, "Study 2 (issue 27), the HFC view over training length, SLF", " epochs |", rows,
           _comparisons(st.records, pairs))


def report_transfer(st: Study) -> None:
    order = list(TRANSFER)
    recs = sorted(st.records, key=lambda r: (r["scheme"], order.index(r["row"]), r["seed"]))
    _write(st, "Study 3 (issue 27), pretrained on classes 0-4, finetuned and tested on classes 5-9", "",
           [_row_line(r) for r in recs],
           _comparisons(st.records, [("acl", "simclr"), ("advcl", "simclr"), ("advcl", "acl"), ("acl", "random"),
                                     ("advcl", "random"), ("simclr", "random")]))


def report_methods(st: Study) -> None:
    order = list(LATER)
    recs = sorted(st.records, key=lambda r: (r["scheme"], order.index(r["row"]), r["seed"]))
    _write(st, "Issue 32: DynACL and DynACL-AIR beside ACL and AdvCL", "", [_row_line(r) for r in recs],
           _comparisons(st.records, [("dynacl", "acl"), ("dynacl-air", "acl"), ("dynacl-air", "dynacl"),
                                     ("dynacl", "advcl"), ("advcl", "acl")]))


STUDIES = {"pseudo": study_pseudo, "length": study_length, "transfer": study_transfer, "methods": study_methods}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", required=True, choices=list(STUDIES))
    ap.add_argument("--preset", default="benchmark")
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rows", nargs="+", default=None,
                    help=f"rows in this order (pseudo: {', '.join(ROWS)}; length: {', '.join(ARMS)}; "
                         f"transfer: {', '.join(TRANSFER)}; methods: {', '.join(LATER)})")
    ap.add_argument("--epochs", type=int, nargs="+", default=[5, 15, 40], help="length: the training lengths")
    ap.add_argument("--long-epochs", type=int, default=50, help="pseudo: the long SimCLR's epochs")
    ap.add_argument("--aa-n", type=int, default=0, help="also the standard AutoAttack on this many test images")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a preset field for every run (e.g. amp=bf16; recorded in every row)")
    ap.add_argument("--out", default=None, help="default benchmarks/out/study-<study>")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    valid = {"pseudo": ROWS, "length": ARMS, "transfer": TRANSFER, "methods": LATER}[args.study]
    bad = [r for r in args.rows or [] if r not in valid]
    if bad:
        ap.error(f"--rows {' '.join(bad)}: not a row of study {args.study} (rows: {', '.join(valid)})")
    try:
        get_preset(args.preset, **parse_sets(args.set))
    except ValueError as e:
        ap.error(str(e))
    args.out = args.out or f"benchmarks/out/study-{args.study}"
    torch.set_num_threads(args.threads)
    st = Study(args)
    STUDIES[args.study](st, load_dataset(args.data, "train"), load_dataset(args.data, "test"))


if __name__ == "__main__":
    main()
