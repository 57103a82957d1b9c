"""ACL and AdvCL at the `paper` preset's width and batch on all 50,000 CIFAR-10 images, for a fixed time each.

The prepared GPU call of issue 27, for a machine that starts bare and gives about 9 minutes:

    python benchmarks/gpu_step.py --data ../shared/data/cifar10-jpeg.zip --budget-s 120 && \
    python benchmarks/gpu_pretrain.py --data ../shared/data/cifar10-jpeg.zip --budget-s 180 --out $OUT/gpu

For each method (ACL, then AdvCL with pseudo-labels from a SimCLR trained in the same way, or
``--no-pseudo``): a probe epoch on ``--probe`` images measures images/s; the run then trains
``floor(budget * images/s / 50,000)`` epochs (at least one) with the paper preset's settings scaled to that
length (warm-up 1 % of the run, cosine over it), bf16 by default (``--amp none`` for fp32); then SLF
(``--ft-epochs``, 5 by default instead of the preset's 25, named in the JSON) and SA / PGD-20 RA on
``--eval-n`` test images with 95 % intervals. It writes into ``--out``: each encoder as an advcl_lite
encoder file (fp16; a width-64 ResNet-18 is about 22 MB in fp16) with its manifest, and ``gpu_pretrain.json``
with every number it measured and the settings. It prints what it will do before each stage. On a machine
without CUDA it runs on the CPU at tiny sizes (``--width 4 --probe 64 --train-subset 128``), which is how
``tests/test_benchmarks.py`` checks it. It was not run on a GPU yet (BENCHMARKS.md, "On a GPU").
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from advcl_lite import get_preset
from advcl_lite.data import load_dataset
from advcl_lite.evaluate import evaluate
from advcl_lite.finetune import get_or_finetune
from advcl_lite.models import export_encoder, load_pretrained
from advcl_lite.pretrain import auto_pseudo_labels, get_or_train, pretrain_dataset
from advcl_lite.pretrained import save_encoder
from advcl_lite.results import format_result
from advcl_lite.runtime import resolve_device


def plan_epochs(budget_s: float, images_per_s: float, n_images: int) -> int:
    """The whole epochs of ``n_images`` that ``budget_s`` seconds hold at ``images_per_s`` (at least one)."""
    return max(1, math.floor(budget_s * images_per_s / max(n_images, 1)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    ap.add_argument("--out", default="benchmarks/out/gpu-pretrain")
    ap.add_argument("--budget-s", type=float, default=180.0, help="pretraining seconds per method")
    ap.add_argument("--methods", nargs="+", default=["acl", "advcl"], choices=["acl", "advcl"])
    ap.add_argument("--no-pseudo", action="store_true", help="AdvCL without pseudo-labels (no SimCLR run first)")
    ap.add_argument("--amp", default="bf16", choices=["none", "bf16", "fp16"])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--train-subset", type=int, default=None, help="pretraining images (default: all 50,000)")
    ap.add_argument("--probe", type=int, default=5120, help="images of the probe epoch that measures images/s")
    ap.add_argument("--ft-epochs", type=int, default=5)
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = dict(base_width=args.width, batch_size=args.batch, amp=args.amp, train_subset=args.train_subset,
                data=args.data, ft_epochs=args.ft_epochs, eval_n=args.eval_n, ckpt_every=1)
    P0 = get_preset("paper", **base)
    train, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    n_images = len(pretrain_dataset(P0, train))
    report = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": str(torch.__version__), "machine": platform.machine(), "settings": vars(args),
              "images": n_images, "runs": {}}
    t_all = time.perf_counter()
    for method in args.methods:
        pseudo = method == "advcl" and not args.no_pseudo
        probe_n = min(args.probe, n_images)
        print(f"[{method}] probe: 1 epoch on {probe_n} images, width {args.width}, batch {args.batch}, amp {args.amp}",
              flush=True)
        Pp = P0.replace(train_subset=probe_n, epochs=1, warmup_epochs=0.0)
        probe = get_or_train(method, Pp, out / "probe", data=train, pseudo_labels=False, device=device)
        ips = probe.images_per_s
        epochs = plan_epochs(args.budget_s, ips, n_images)
        P = P0.replace(epochs=epochs, warmup_epochs=0.01 * epochs)
        print(f"[{method}] {ips:.0f} images/s: {epochs} epoch(s) of {n_images} images fit {args.budget_s:.0f} s",
              flush=True)
        labels = None
        t0 = time.perf_counter()
        if pseudo:     # AdvCL's own labels: k-means on a SimCLR trained for the same number of epochs
            labels = auto_pseudo_labels(P, pretrain_dataset(P, train), out / "simclr", device=device)
        res = get_or_train(method, P, out, data=train, pseudo_labels=labels if pseudo else False, device=device)
        pre_s = time.perf_counter() - t0
        net, _ = load_pretrained(res.checkpoint, "cpu")
        enc = export_encoder(net, "pgd")
        name = "advcl" if pseudo else ("advcl-nopl" if method == "advcl" else method)
        m = save_encoder(enc, f"gpu-{name}", out / "encoders",
                         {"method": method, "epochs": epochs, "images_seen": epochs * n_images, "amp": args.amp,
                          "pretrain_seconds": pre_s, "images_per_s": res.images_per_s, "route": "pgd"})
        print(f"[{method}] SLF ({args.ft_epochs} epochs) and PGD-20 on {args.eval_n} test images", flush=True)
        ft = get_or_finetune(res.checkpoint, "slf", P, out / "finetune" / f"{name}-slf", data=train, device=device)
        r = evaluate(ft.model, test, attack="pgd20", n=args.eval_n, device=device, seed=0)
        print(f"[{method}] {format_result(r)}", flush=True)
        report["runs"][name] = {"epochs": epochs, "probe_images_per_s": ips, "train_images_per_s": res.images_per_s,
                                "pretrain_seconds": pre_s, "finetune_seconds": ft.seconds,
                                "encoder_file": m["file"], "encoder_mb": m["bytes"] / 2**20,
                                "sa": r["sa"], "sa_ci": r["sa_ci"], "ra": r["ra"], "ra_ci": r["ra_ci"], "n": r["n"],
                                "attack": r["attack"]}
        (out / "gpu_pretrain.json").write_text(json.dumps(report, indent=1) + "\n")
    report["seconds"] = time.perf_counter() - t_all
    (out / "gpu_pretrain.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out / 'gpu_pretrain.json'} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
