"""Make the encoder set the package ships (``advcl_lite/_data/encoders``) from a results.py run.

For one seed of a ``benchmarks/results.py`` output folder, takes the pretrained SimCLR, ACL,
AdvCL (with its pseudo-labels) and AdvCL-without-pseudo-labels runs and the seeded random-init
encoder, exports each one's finetuning BN route as a plain ResNet-18, stores it as fp16 with a
manifest (``advcl_lite.pretrained.save_encoder``), then loads the *shipped* file back and measures
its SLF clean and PGD-20 robust accuracy on the test split (``--eval-n`` images, 95 % Wilson
intervals), which goes into the manifest.

    python benchmarks/results.py --preset benchmark --data ../shared/data/cifar10-jpeg.zip --seeds 0 1 --no-alf \\
        --out benchmarks/out/benchmark
    python benchmarks/make_encoder_set.py --runs benchmarks/out/benchmark --seed 0
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from advcl_lite import get_preset
from advcl_lite.checkpoint import sha256_file
from advcl_lite.data import load_dataset
from advcl_lite.runtime import resolve_device
from advcl_lite.evaluate import evaluate
from advcl_lite.finetune import get_or_finetune
from advcl_lite.models import ResNet18, export_encoder
from advcl_lite.models import load_pretrained
from advcl_lite.pretrain import pretrain_dataset
from advcl_lite.pretrained import ORDER, load_pretrained_encoder, save_encoder, table, write_manifest
from advcl_lite.results import format_result

LABELS = {"random": "Random init", "simclr": "SimCLR", "acl": "ACL", "advcl": "AdvCL (with pseudo-labels)",
          "advcl-nopl": "AdvCL without pseudo-labels"}


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="benchmarks/out/benchmark", help="a benchmarks/results.py --out folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="benchmark", help="the preset results.py ran (finetuning settings too)")
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    ap.add_argument("--out", default="advcl_lite/_data/encoders")
    ap.add_argument("--eval-n", type=int, default=2000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trained-at", default=None, help="commit the runs were trained at (default: this checkout's)")
    ap.add_argument("--results-command", default=None, help="the results.py command that trained the runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    P = get_preset(args.preset, seed=args.seed, data=args.data)
    work = Path(args.runs) / f"seed{args.seed}"
    train_full, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    pt_ds = pretrain_dataset(P, train_full)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": str(torch.__version__),
               "device": str(resolve_device(args.device))}
    command = {"train": args.results_command or (f"python benchmarks/results.py --preset {args.preset} --data "
                                                 f"{args.data} --seeds {args.seed} --no-alf --out {args.runs}"),
               "export": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    for name in ORDER:
        t0 = time.perf_counter()
        if name == "random":                         # exactly results.py's random-init row
            torch.manual_seed(args.seed)
            enc, meta, hist = ResNet18(P.base_width), None, []
            info = {"method": "random", "training": None, "epochs": 0, "images_seen": 0, "wall_seconds": 0.0,
                    "route": None, "source": f"torch.manual_seed({args.seed}); ResNet18({P.base_width})"}
        else:
            ckpt = work / "pretrain" / name / "final.pt"
            net, meta = load_pretrained(ckpt)
            hist = meta["history"]
            enc = export_encoder(net, meta["eval_route"])
            bs = min(P.batch_size, meta["config"]["num_train"])
            info = {"method": meta["method"], "training": meta["config"], "preset": meta.get("preset"),
                    "epochs": meta["epoch"], "images_seen": meta["epoch"] * (meta["config"]["num_train"] // bs) * bs,
                    "wall_seconds": float(sum(h["seconds"] for h in hist)), "route": meta["eval_route"],
                    "source": str(ckpt), "source_sha256": sha256_file(ckpt), "pseudo_ks": meta.get("pseudo_ks")}
        info.update({"label": LABELS[name], "seed": args.seed, "history": hist, "machine": machine, "command": command,
                     "trained_at_commit": args.trained_at or _commit(),
                     "made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "data": {"dataset": pt_ds.id, "dataset_name": pt_ds.name, "num_train": len(pt_ds),
                              "fingerprint": pt_ds.fingerprint, "source": args.data}})
        m = save_encoder(enc, name, args.out, info)
        shipped = load_pretrained_encoder(name, folder=args.out)          # what users get: the fp16 file
        ft = get_or_finetune(shipped, "slf", P, work / "shipped-finetune" / f"{name}-slf", data=train_full,
                             device=args.device)
        r = evaluate(ft.model, test, attack="pgd20", n=args.eval_n, device=args.device, seed=args.seed)
        m["slf"] = {"sa": r["sa"], "sa_ci": list(r["sa_ci"]), "ra": r["ra"], "ra_ci": list(r["ra_ci"]), "n": r["n"],
                    "attack": r["attack"], "test_data": test.id, "finetune": {"preset": P.name, "epochs": P.ft_epochs,
                    "lr": P.ft_lr, "batch_size": P.ft_batch_size, "ft_subset": P.ft_subset,
                    "best_epoch": ft.best_epoch, "val": ft.val}, "seconds": time.perf_counter() - t0}
        write_manifest(m, args.out)
        print(f"{name:>11}: {m['bytes'] / 1e6:.2f} MB, SLF {format_result(r)}", flush=True)
    total = sum(p.stat().st_size for p in Path(args.out).glob("*.pt"))
    print(f"\n{total / 1e6:.1f} MB in {args.out}\n")
    print(table(args.out))


if __name__ == "__main__":
    main()
