"""``advcl-lite`` command line (also ``python -m advcl_lite``).

Subcommands: ``tour``, ``pretrain``, ``pretrained``, ``import-encoder``, ``pseudo-labels``, ``finetune``,
``evaluate``, ``spectra``, ``site``, ``presets``, ``student``. Expected problems (bad path, wrong image size, eps
out of range, unknown preset, corrupt or mismatched checkpoint) print one
``error: ...`` line that says what to do, and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from . import distributed
from .checkpoint import CheckpointError, check_writable, load_checkpoint, write_json
from .data import DataError, load_dataset
from .evaluate import evaluate
from .methods import METHODS, method_class
from .finetune import CHECKPOINT_NAME, SELECTION_RULE, check_classes, check_image_size, finetune, load_finetuned, load_split
from .presets import PRESETS, check_count, get_preset
from .pretrain import pretrain, pretrain_dataset, run_name
from .pretrained import KIND as ENCODER_KIND
from .pretrained import (IMPORT_FORMATS, REMAKE, EncoderError, available, encoder_dir, import_encoder,
                         load_encoder_file, load_pretrained_encoder, table)
from .pseudo_labels import make_pseudo_labels
from .results import format_result
from .runtime import debug_enabled
from .analysis import ANALYSES, run_spectra
from .course import write_student_copies
from .site import build_site
from .tour import list_notebooks, run_tour


def _preset_args(p: argparse.ArgumentParser, default: str = "quick") -> None:
    p.add_argument("--preset", default=default, help=f"one of {', '.join(PRESETS)} (default {default})")
    p.add_argument("--data", default=None, help="sample (embedded), cifar10, cifar100, stl10, or an ImageFolder dir/zip")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this size (e.g. 32 for STL-10)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a preset field, e.g. --set epochs=3 --set base_width=32 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _progress(args: argparse.Namespace) -> bool | None:
    """``--no-progress`` turns the bars off; otherwise ``None`` leaves the choice to ``ADVCL_PROGRESS``."""
    return False if args.no_progress else None


def preset_from_args(args: argparse.Namespace):
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set needs FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    if args.data:
        overrides["data"] = args.data
    if getattr(args, "image_size", None) is not None:
        check_count("--image-size", args.image_size)
    return get_preset(args.preset, **overrides)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="advcl-lite", description="Understand and reproduce AdvCL (NeurIPS 2021).")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (_run_commands, _encoder_commands, _publishing_commands):
        add(sub)
    return ap


def _run_commands(sub) -> None:
    """The subcommands of the stages: tour, pretrain, pseudo-labels, finetune, evaluate."""

    p = sub.add_parser("tour", help="execute the notebooks in order with papermill and write a summary")
    p.add_argument("--preset", default="smoke", help=f"one of {', '.join(PRESETS)} (default smoke)")
    p.add_argument("--data", default="sample")
    p.add_argument("--out", default="tour-out", help="folder for executed notebooks, artifacts and SUMMARY.md")
    p.add_argument("--only", default=None, help="comma-separated notebook numbers or names to run, e.g. 01,02")
    p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    p.add_argument("--encoders", default="auto",
                   help="encoders of notebooks 03-05: the shipped set (pretrained), trained at the preset (train), or "
                        "a folder of imported encoders (advcl-lite import-encoder --out DIR); auto (default) is "
                        "pretrained at quick, train at every other preset")

    p = sub.add_parser("pretrain", help="pretrain an encoder with SimCLR, ACL, AdvCL or DynACL")
    _preset_args(p)
    p.add_argument("--method", required=True, choices=list(METHODS),
                   help="dynacl: DynACL (ICLR 2023); AIR's regularisers on acl or dynacl with --set air=true")
    p.add_argument("--out", default=None, help="run folder (default runs/<preset>/pretrain/<name>)")
    p.add_argument("--resume", dest="resume", action="store_true", default=True, help="continue from out/last.pt (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over, ignoring out/last.pt")
    p.add_argument("--view", default="hfc", choices=["hfc", "lfc", "none"], help="AdvCL's fourth view (ablations: lfc, none)")
    p.add_argument("--radius", type=float, default=None, help="HFC/LFC radius (default: 8 at 32x32, scaled)")
    p.add_argument("--pseudo-labels", default=None,
                   help="AdvCL: a pseudo-label file from `advcl-lite pseudo-labels` (default: made from a SimCLR run)")
    p.add_argument("--no-pseudo-labels", action="store_true",
                   help="AdvCL without the pseudo-label term (an ablation; the paper's AdvCL has it)")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="under torchrun: each process normalises its share of the batch on its own (default: "
                        "the global batch's statistics, as the original's SyncBN)")
    p.add_argument("--recompute-anchors", action="store_true",
                   help="re-embed the clean views at every PGD step, as the original code (slower, same result)")

    p = sub.add_parser("pseudo-labels", help="cluster features of a standard encoder into pseudo-labels")
    _preset_args(p)
    p.add_argument("--encoder", required=True, help="pretraining checkpoint (e.g. a SimCLR run's final.pt), or a "
                                                    "shipped or imported encoder file")
    p.add_argument("--k", default="2,10,50,100,500", help="granularities K, comma-separated")
    p.add_argument("--out", default=None, help="output .pt file (default beside the encoder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    p = sub.add_parser("finetune", help="SLF / ALF / AFF finetuning of a pretrained encoder")
    _preset_args(p)
    p.add_argument("--encoder", required=True, help="pretraining checkpoint")
    p.add_argument("--scheme", required=True, choices=["slf", "alf", "aff"])
    p.add_argument("--out", default=None, help="folder for the finetuned model and its metrics")
    p.add_argument("--overwrite", action="store_true", help="replace a finetuned model already in --out")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over instead of continuing an interrupted run from out/resume.pt")

    p = sub.add_parser("evaluate", help="clean and robust accuracy of a finetuned model")
    _preset_args(p)
    p.add_argument("--model", required=True, help="finetuned checkpoint from `advcl-lite finetune`")
    p.add_argument("--attack", default="pgd20", choices=["pgd20", "autoattack", "none"])
    p.add_argument("--n", type=int, default=None, help="test images (default: the preset's eval_n / aa_n)")
    p.add_argument("--eps", type=float, default=8 / 255, help="L-inf radius in [0, 1] (default 8/255)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _encoder_commands(sub) -> None:
    """The subcommands on encoders and models: pretrained, import-encoder, spectra."""
    p = sub.add_parser("pretrained", help="the encoders shipped with the package: list them, or verify their files")
    p.add_argument("action", choices=["list", "verify"])

    p = sub.add_parser("import-encoder", help="import a published AdvCL / ACL / RobustSSL / DynACL ResNet-18 checkpoint "
                                              "as an advcl_lite encoder file with its manifest")
    p.add_argument("file", help="the checkpoint (e.g. AdvCL's epoch_1000.ckpt, ACL_DS.pt, RobustSSL's DynACL.pt)")
    p.add_argument("--format", default="auto", choices=["auto", *IMPORT_FORMATS],
                   help="the code that wrote it (auto detects AdvCL's, DynACL's whole model and RobustSSL's own "
                        "layouts; ACL's layout, shared by DynACL's and RobustSSL's files, needs a name)")
    p.add_argument("--route", default=None, help="the BN route to keep (default pgd, as each code's finetuning)")
    p.add_argument("--name", default=None, help="the encoder's name in --out (default: the file's stem)")
    p.add_argument("--out", required=True, help="folder of imported encoders (finetune --encoder DIR/NAME.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an encoder of the same name in --out")

    p = sub.add_parser("spectra", help="spectra of adversarial perturbations, Fourier heat maps, band-limited "
                                       "attacks and subspace margins of any classifier; arrays, tables, figures")
    p.add_argument("--model", required=True, help="advcl:<finetuned model.pt>, torchvision:<name> or timm:<name>")
    p.add_argument("--weights", default=None, help="a local state dict for a torchvision/timm model (default: "
                                                   "random weights; nothing is downloaded)")
    p.add_argument("--num-classes", type=int, default=None, help="outputs of a torchvision/timm model")
    p.add_argument("--data", default="sample", help="sample, cifar10, or an ImageFolder dir/zip (its test split)")
    p.add_argument("--image-size", type=int, default=None, help="resize the images (e.g. 224 for ImageNet models)")
    p.add_argument("--n", type=int, default=64, help="test images (class-balanced)")
    p.add_argument("--eps", default="2,4,8", help="L-inf radii in /255, comma-separated")
    p.add_argument("--steps", type=int, default=10, help="PGD steps of the spectrum and band analyses")
    p.add_argument("--analyses", default=",".join(ANALYSES), help=f"any of {', '.join(ANALYSES)}")
    p.add_argument("--heat-norm", type=float, default=4.0, help="L2 norm of the Fourier basis perturbation")
    p.add_argument("--heat-stride", type=int, default=None, help="every N-th frequency (default: size / 32)")
    p.add_argument("--heat-max-freq", type=int, default=None, help="only frequencies up to this one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="folder for the arrays, tables, figures and settings.json")


def _publishing_commands(sub) -> None:
    """The subcommands for teaching and publishing: site, presets, student."""
    p = sub.add_parser("site", help="render an executed tour as a static site (Sphinx, myst-nb; the docs extra)")
    p.add_argument("--tour", default="tour-out", help="a folder of advcl-lite tour (default tour-out)")
    p.add_argument("--out", default="site", help="folder of the site (open its index.html, or publish it as is)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder that is not an earlier site")

    sub.add_parser("presets", help="list the presets and their settings")

    p = sub.add_parser("student", help="write the student copies of the notebooks (exercises stubbed, outputs cleared)")
    p.add_argument("--out", default=None, help="folder for the copies (default: notebooks/student of the checkout)")
    p.add_argument("--overwrite", action="store_true", help="replace copies that differ (e.g. edited by hand)")


# --------------------------------------------------------------------------- one handler per subcommand

def _train_data(p, args):
    """The preset's data, or its train split resized when ``--image-size`` is given."""
    return load_dataset(p.data, "train", image_size=args.image_size) if args.image_size is not None else p.data


def cli_import_encoder(args) -> int:
    """``advcl-lite import-encoder FILE --out DIR``: one encoder file and manifest, and what was kept and dropped."""
    m = import_encoder(args.file, args.out, format=args.format, route=args.route, name=args.name,
                       overwrite=args.overwrite)
    src = m["source"]
    dropped = "; ".join(f"{why}: {d['count']}" for why, d in m["dropped"].items()) or "nothing"
    print(f"wrote {Path(args.out) / m['file']}: {src['format']} layout, width {m['architecture']['base_width']}, "
          f"route {m['route'] or '(single BN)'} of {src['routes'] or ['(single BN)']}, input normalisation "
          f"{'yes' if m['architecture']['input_normalize'] else 'no'}; dropped {dropped}")
    print(f"next: advcl-lite finetune --encoder {Path(args.out) / m['file']} --scheme slf --preset quick")
    return 0


def cli_spectra(args) -> int:
    """``advcl-lite spectra --model SPEC --out DIR``: the analyses of any classifier, each resumable."""
    check_count("--n", args.n)
    try:
        eps = [float(v) / 255 for v in str(args.eps).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--eps takes radii in /255 such as 2,4,8, got {args.eps!r}") from None
    if args.image_size is not None:
        check_count("--image-size", args.image_size)
    s = run_spectra(args.model, args.data, args.out, weights=args.weights, n=args.n, image_size=args.image_size,
                    eps=eps, analyses=[a.strip() for a in args.analyses.split(",") if a.strip()], steps=args.steps,
                    heat_norm=args.heat_norm, heat_stride=args.heat_stride, heat_max_freq=args.heat_max_freq,
                    num_classes=args.num_classes, seed=args.seed, device=args.device, progress=_progress(args))
    print(f"wrote {args.out}: {', '.join(s['analyses'])} for {args.model} on {s['n']} images of {s['dataset']} "
          f"({s['labels']} labels); settings in {Path(args.out) / 'settings.json'}")
    return 0


def cli_site(args) -> int:
    """``advcl-lite site --tour DIR --out SITE``: the executed notebooks as static pages."""
    index = build_site(args.tour, args.out, overwrite=args.overwrite)
    print(f"wrote {index}: the executed tour of {args.tour} as a static site (publish the folder {args.out} as is)")
    return 0


def cli_presets(args) -> int:
    for name, p in PRESETS.items():
        print(f"{name}: {p.description}")
        print("   " + json.dumps(p.to_dict()))
    return 0


def cli_student(args) -> int:
    """``advcl-lite student``: the student copies, from the notebooks the tour runs."""
    for path in write_student_copies(list_notebooks(), args.out, overwrite=args.overwrite):
        print(path)
    return 0


def cli_tour(args) -> int:
    """``advcl-lite tour``: run the notebooks; a failing notebook is one ``error:`` line (exit 2)."""
    run_tour(args.preset, args.out, data=args.data, only=args.only, timeout=args.timeout, encoders=args.encoders)
    return 0


def cli_pretrain(args) -> int:
    p = preset_from_args(args)
    data = _train_data(p, args)
    if args.no_pseudo_labels and args.pseudo_labels:
        raise ValueError("--pseudo-labels FILE and --no-pseudo-labels contradict each other; give one of them")
    takes_labels = method_class(args.method).takes_pseudo_labels
    if not takes_labels and (args.no_pseudo_labels or args.pseudo_labels):
        raise ValueError(f"--pseudo-labels / --no-pseudo-labels are AdvCL options; --method {args.method} has none")
    pseudo = False if args.no_pseudo_labels else (args.pseudo_labels or "auto")
    work = Path("runs") / p.name
    out = args.out or str(work / "pretrain" / run_name(args.method, args.view, pseudo is not False, args.radius, p.air))
    # AdvCL's own pseudo-labels: from the SimCLR run of runs/<preset> (default layout) or inside --out
    labels_dir = None if args.out else work
    if takes_labels and pseudo == "auto":
        where = labels_dir or Path(out) / "pseudo-labels"
        print(f"AdvCL pseudo-labels: k-means on a SimCLR run in {where} (made if absent; "
              f"--pseudo-labels FILE to use others, --no-pseudo-labels for the ablation)", flush=True)
    res = pretrain(args.method, p, out_dir=out, data=data, view=args.view, radius=args.radius,
                   pseudo_labels=pseudo, resume=args.resume, device=args.device,
                   progress=_progress(args), recompute_anchors=args.recompute_anchors, labels_dir=labels_dir,
                   sync_bn=args.sync_bn)
    if not distributed.is_main():
        return 0
    print(f"wrote {res.checkpoint} (epoch {res.meta['epoch']}/{p.epochs}, final loss {res.final_loss:.4f}, "
          f"{res.seconds:.0f}s; history in {Path(out) / 'history.json'})")
    return 0


def cli_pretrained(args) -> int:
    """``advcl-lite pretrained list`` (the manifest table) or ``verify`` (every file's hash and strict load)."""
    names = available()
    if not names:
        raise EncoderError(f"no shipped encoders in {encoder_dir()}; reinstall advcl_lite or re-make them with {REMAKE}")
    if args.action == "list":
        print(f"shipped encoders in {encoder_dir()}:")
        print(table())
        return 0
    bad = 0
    for name in names:
        try:
            enc = load_pretrained_encoder(name)
            print(f"ok      {name}: sha256 {enc.manifest['sha256'][:16]}..., width {enc.base_width}, strict load")
        except CheckpointError as e:
            bad += 1
            print(f"FAILED  {name}: {e}")
    if bad:
        raise EncoderError(f"{bad} of {len(names)} shipped encoders failed verification (see above)")
    print(f"all {len(names)} shipped encoders verified")
    return 0


def cli_pseudo_labels(args) -> int:
    """``advcl-lite pseudo-labels --encoder CKPT [--k ...] [--preset ...] [--data ...] [--out ...]``."""
    p = preset_from_args(args)
    data = _train_data(p, args)
    ds = pretrain_dataset(p, data)
    try:
        ks = [int(v) for v in str(args.k).replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"--k takes comma-separated whole numbers such as 2,10,50, got {args.k!r}") from None
    out = Path(args.out) if args.out else Path(args.encoder).parent / "pseudo_labels.pt"
    enc = Path(args.encoder)
    if out.exists() and enc.exists() and os.path.samefile(out, enc):
        raise ValueError(f"--out {out} is the encoder checkpoint itself; write the labels to another file")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it, or --out another file")
    check_writable(out.parent, "folder of --out")
    encoder = args.encoder
    if enc.is_file() and load_checkpoint(enc).get("kind") == ENCODER_KIND:   # a shipped or imported encoder file
        encoder = load_encoder_file(enc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pl = make_pseudo_labels(encoder, ds, ks, seed=p.seed, device=args.device,
                                progress=_progress(args), encoder_name=enc.stem if encoder is not args.encoder else None)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    pl.meta["preset"] = p.name
    pl.meta["data"] = str(p.data)
    pl.save(out, overwrite=args.overwrite)
    print(f"wrote {out}: pseudo-labels for {ds.id} ({len(ds)} images) from encoder {args.encoder} "
          f"(features {pl.meta['feature_seconds']:.1f}s)")
    for line in pl.summary():
        print(f"  {line}")
    return 0


def cli_finetune(args) -> int:
    p = preset_from_args(args)
    enc = Path(args.encoder)
    if not enc.exists():
        raise CheckpointError(f"encoder checkpoint {str(enc)!r} does not exist; pass a pretraining checkpoint "
                              f"such as runs/{p.name}/pretrain/advcl/final.pt")
    name = enc.parent.name if enc.name in ("final.pt", "last.pt") else enc.stem
    out = Path(args.out) if args.out else Path("runs") / p.name / "finetune" / f"{name}-{args.scheme}"
    if (out / CHECKPOINT_NAME).exists() and not args.overwrite:
        raise ValueError(f"{out / CHECKPOINT_NAME} already exists; pass --overwrite to replace it, or --out another folder")
    res = finetune(enc, args.scheme, p, data=p.data, out_dir=out, device=args.device,
                   progress=_progress(args), image_size=args.image_size, resume=args.resume)
    metrics = {"checkpoint": str(res.checkpoint), "scheme": res.meta["scheme"], "preset": p.name,
               "encoder": res.meta["encoder"]["path"], "encoder_method": res.meta["encoder"]["method"],
               "route": res.meta["encoder"]["route"], "dataset": res.meta["dataset"], "train": res.meta["train"],
               "val": res.meta["val"], "best_epoch": res.best_epoch, "epochs": p.ft_epochs,
               "val_metrics": res.val, "selection": SELECTION_RULE, "seconds": res.seconds, "history": res.history}
    mpath = out / "metrics.json"
    if distributed.is_main():           # under torchrun: rank 0 writes
        write_json(mpath, metrics)
    v = res.val
    ra = f", RA {v['val_ra']:.1%}" if "val_ra" in v else ""
    print(f"wrote {res.checkpoint} and {mpath}: {res.meta['scheme'].upper()} best epoch {res.best_epoch}/{p.ft_epochs}, "
          f"validation SA {v['val_sa']:.1%}{ra} (n={v['val_n']}), {res.seconds:.0f}s")
    print(f"next: advcl-lite evaluate --model {res.checkpoint} --preset {p.name} --attack pgd20")
    return 0


def cli_evaluate(args) -> int:
    p = preset_from_args(args)
    check_count("--n (test images)", args.n)
    model, meta = load_finetuned(args.model, device=args.device)
    attack = None if args.attack == "none" else args.attack
    n = args.n if args.n is not None else ((p.aa_n or p.eval_n) if attack == "autoattack" else p.eval_n)
    source = args.data or meta.get("data_source")
    if not source:
        raise ValueError(f"{args.model!r} was finetuned on an in-memory dataset ({meta.get('dataset')}); "
                         f"pass --data with the dataset to evaluate on")
    size = args.image_size or meta.get("resize")
    test = load_split(source, "test", size)
    check_image_size(test, meta.get("image_size"), what=f"the model {args.model!r}")
    check_classes(test, meta, f"the model {args.model!r}")
    r = evaluate(model, test, attack=attack, n=n, eps=args.eps, seed=p.seed, progress=_progress(args))
    if args.json:
        print(json.dumps({"model": str(args.model), "scheme": meta.get("scheme"),
                          "encoder_method": meta.get("encoder", {}).get("method"), **r}, indent=1))
        return 0
    enc = meta.get("encoder", {})
    print(f"{args.model}: {str(meta.get('scheme')).upper()} of {enc.get('run_name') or enc.get('class')} "
          f"(finetuned on {meta.get('dataset')}), test set {test.id}")
    print(format_result(r) + f"  [{r['attack']}, {r['seconds']:.0f}s]")
    return 0


def _run(args: argparse.Namespace) -> int:
    handlers = {"presets": cli_presets, "tour": cli_tour, "pretrain": cli_pretrain, "pretrained": cli_pretrained,
                "pseudo-labels": cli_pseudo_labels, "finetune": cli_finetune, "evaluate": cli_evaluate,
                "student": cli_student, "import-encoder": cli_import_encoder, "spectra": cli_spectra, "site": cli_site}
    return handlers[args.command](args)


def _rank_tag() -> str:
    return f" (rank {os.environ['RANK']})" if distributed.launched() else ""


def _interrupt(signum, frame):
    """Ctrl-C: silence logging first, so what the interrupt sets off (a notebook kernel that dies of the same
    signal, nbclient's task failing with it and asyncio reporting that task at exit) prints nothing after it;
    then interrupt as Python's own handler does."""
    logging.disable(logging.CRITICAL)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Errors print one line (``ADVCL_DEBUG=1``: the full traceback instead)."""
    args = build_parser().parse_args(argv)
    debug = debug_enabled()
    previous = signal.getsignal(signal.SIGINT)
    ours = previous is signal.default_int_handler and threading.current_thread() is threading.main_thread()
    if ours:                                       # not where SIGINT is ignored or handled by the caller
        signal.signal(signal.SIGINT, _interrupt)
    if distributed.launched() and os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")     # under torchrun rank 0 reports; every rank's errors still show
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted; completed checkpoints are kept (run again to resume)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one line unless ADVCL_DEBUG=1
        if debug:
            raise
        if isinstance(e, (CheckpointError, DataError, ValueError, FileNotFoundError, RuntimeError)):
            print(f"error{_rank_tag()}: {e}", file=sys.stderr)
        elif isinstance(e, OSError):
            print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}; check the path and its "
                  f"permissions", file=sys.stderr)
        else:
            print(f"error: unexpected {type(e).__name__}: {e} (ADVCL_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()     # under torchrun: leave the process group (a failing rank's exit stops the others)
        if ours:
            signal.signal(signal.SIGINT, previous)

if __name__ == "__main__":
    sys.exit(main())
