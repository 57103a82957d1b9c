"""``advcl-lite`` command line (also ``python -m advcl_lite``).

Subcommands: ``tour``, ``pretrain``, ``pretrained``, ``pseudo-labels``, ``finetune``,
``evaluate``, ``presets``. Expected problems (bad path, wrong image size, eps
out of range, unknown preset, corrupt or mismatched checkpoint) print one
``error: ...`` line that says what to do, and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .presets import PRESETS, get_preset


def _preset_args(p: argparse.ArgumentParser, default: str = "quick") -> None:
    p.add_argument("--preset", default=default, help=f"one of {', '.join(PRESETS)} (default {default})")
    p.add_argument("--data", default=None, help="sample (embedded), cifar10, cifar100, stl10, or an ImageFolder dir/zip")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this size (e.g. 32 for STL-10)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a preset field, e.g. --set epochs=3 --set base_width=32 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def preset_from_args(args: argparse.Namespace):
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set needs FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    if args.data:
        overrides["data"] = args.data
    return get_preset(args.preset, **overrides)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="advcl-lite", description="Understand and reproduce AdvCL (NeurIPS 2021).")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tour", help="execute the notebooks in order with papermill and write a summary")
    p.add_argument("--preset", default="smoke", help=f"one of {', '.join(PRESETS)} (default smoke)")
    p.add_argument("--data", default="sample")
    p.add_argument("--out", default="tour-out", help="folder for executed notebooks, artifacts and SUMMARY.md")
    p.add_argument("--only", default=None, help="comma-separated notebook numbers or names to run, e.g. 01,02")
    p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    p.add_argument("--encoders", default="auto", choices=["auto", "pretrained", "train"],
                   help="encoders of notebooks 03-05: the shipped set (pretrained) or trained at the preset (train); "
                        "auto (default) is pretrained at quick, train at every other preset")

    p = sub.add_parser("pretrain", help="pretrain an encoder with SimCLR, ACL or AdvCL")
    _preset_args(p)
    p.add_argument("--method", required=True, choices=["simclr", "acl", "advcl"])
    p.add_argument("--out", default=None, help="run folder (default runs/<preset>/pretrain/<name>)")
    p.add_argument("--resume", dest="resume", action="store_true", default=True, help="continue from out/last.pt (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over, ignoring out/last.pt")
    p.add_argument("--view", default="hfc", choices=["hfc", "lfc", "none"], help="AdvCL's fourth view (ablations: lfc, none)")
    p.add_argument("--radius", type=float, default=None, help="HFC/LFC radius (default: 8 at 32x32, scaled)")
    p.add_argument("--pseudo-labels", default=None,
                   help="AdvCL: a pseudo-label file from `advcl-lite pseudo-labels` (default: made from a SimCLR run)")
    p.add_argument("--no-pseudo-labels", action="store_true",
                   help="AdvCL without the pseudo-label term (an ablation; the paper's AdvCL has it)")
    p.add_argument("--recompute-anchors", action="store_true",
                   help="re-embed the clean views at every PGD step, as the original code (slower, same result)")

    p = sub.add_parser("pseudo-labels", help="cluster features of a standard encoder into pseudo-labels")
    _preset_args(p)
    p.add_argument("--encoder", required=True, help="pretraining checkpoint (e.g. a SimCLR run's final.pt)")
    p.add_argument("--k", default="2,10,50,100,500", help="granularities K, comma-separated")
    p.add_argument("--out", default=None, help="output .pt file (default beside the encoder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    p = sub.add_parser("finetune", help="SLF / ALF / AFF finetuning of a pretrained encoder")
    _preset_args(p)
    p.add_argument("--encoder", required=True, help="pretraining checkpoint")
    p.add_argument("--scheme", required=True, choices=["slf", "alf", "aff"])
    p.add_argument("--out", default=None, help="folder for the finetuned model and its metrics")
    p.add_argument("--overwrite", action="store_true", help="replace a finetuned model already in --out")

    p = sub.add_parser("evaluate", help="clean and robust accuracy of a finetuned model")
    _preset_args(p)
    p.add_argument("--model", required=True, help="finetuned checkpoint from `advcl-lite finetune`")
    p.add_argument("--attack", default="pgd20", choices=["pgd20", "autoattack", "none"])
    p.add_argument("--n", type=int, default=None, help="test images (default: the preset's eval_n / aa_n)")
    p.add_argument("--eps", type=float, default=8 / 255, help="L-inf radius in [0, 1] (default 8/255)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("pretrained", help="the encoders shipped with the package: list them, or verify their files")
    p.add_argument("action", choices=["list", "verify"])

    sub.add_parser("presets", help="list the presets and their settings")
    return ap


def _run(args: argparse.Namespace) -> int:
    if args.command == "presets":
        for name, p in PRESETS.items():
            print(f"{name}: {p.description}")
            print("   " + json.dumps(p.to_dict()))
        return 0
    if args.command == "tour":
        from .tour import cli_tour
        return cli_tour(args)
    if args.command == "pretrain":
        from .pretrain import cli_pretrain
        return cli_pretrain(args)
    if args.command == "pretrained":
        from .pretrained import cli_pretrained
        return cli_pretrained(args)
    if args.command == "pseudo-labels":
        from .pseudo_labels import cli_pseudo_labels
        return cli_pseudo_labels(args)
    if args.command == "finetune":
        from .finetune import cli_finetune
        return cli_finetune(args)
    if args.command == "evaluate":
        from .evaluate import cli_evaluate
        return cli_evaluate(args)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Errors print one line (``ADVCL_DEBUG=1``: the full traceback instead)."""
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import DataError
    debug = os.environ.get("ADVCL_DEBUG", "0") not in ("0", "", "false", "no")
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted; completed checkpoints are kept (run again to resume)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one line unless ADVCL_DEBUG=1
        if debug:
            raise
        if isinstance(e, (CheckpointError, DataError, ValueError, FileNotFoundError, RuntimeError)):
            print(f"error: {e}", file=sys.stderr)
        elif isinstance(e, OSError):
            print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}; check the path and its "
                  f"permissions", file=sys.stderr)
        else:
            print(f"error: unexpected {type(e).__name__}: {e} (ADVCL_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
