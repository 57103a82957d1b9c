"""The `paper` preset's AdvCL step on a GPU, for a fixed number of steps: images/s, memory, projected epochs.

One command, prepared before a GPU is at hand, that installs nothing and fits in a few minutes:

    python benchmarks/gpu_step.py --data ../shared/data/cifar10-jpeg.zip          # on the GPU machine

What it runs: AdvCL as ``advcl_lite.methods.AdvCL`` runs it at the ``paper`` preset (width 64, batch 512,
PGD-5 in train mode, four views, pseudo-label heads with K = 2, 10, 50, 100, 500 on random targets: the
labels do not change the cost), bf16 autocast and channels_last, on real CIFAR-10 training images, in
three variants timed one after the other in one process:

* ``eager``: one forward per view in the update (today's default);
* ``batched``: the update's views in one batched forward (``AdvCL(batched=True)``, same math);
* ``compiled``: ``batched`` with the network under ``torch.compile`` (skipped with ``--no-compile``);
* ``cudagraphs``: ``compiled`` with ``mode="reduce-overhead"`` (CUDA graphs over the compiled forward
  and backward; skipped with ``--no-compile`` and off the GPU).

For each: ``--warmup`` untimed steps (compilation happens there), then ``--steps`` timed ones with the
device synchronised; it prints the median step time, images/s, the peak GPU memory, and the projected
time of one epoch of 50,000 images and of the paper's 1,000 epochs. CUDA graphs capture only the
network's compiled graphs, not the attack loop around them (its ``autograd.grad`` calls and the
data-dependent views stay eager), so whether they pay is what the ``cudagraphs`` row measures. A variant
that fails is reported as failed and the others still run; a variant that would start after
``--budget-s`` seconds is reported as skipped, so the command ends within its time. On a machine without
CUDA it runs on the CPU (use tiny sizes, e.g. ``--width 8 --batch 16 --steps 2 --no-compile``), which is
how it is tested (``tests/test_benchmarks.py``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from advcl_lite.data import class_balanced_subset, load_dataset
from advcl_lite.methods import AdvCL, build_net
from advcl_lite.models import to_channels_last
from advcl_lite.presets import get_preset
from advcl_lite.runtime import autocast, resolve_device

EPOCH_IMAGES = 50_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(name: str, args, device, x_all: torch.Tensor) -> dict:
    P = get_preset("paper", base_width=args.width, batch_size=args.batch, amp=args.amp, channels_last=True)
    ks = tuple(int(k) for k in args.ks.split(",")) if args.ks else ()
    torch.manual_seed(0)
    net = to_channels_last(build_net("advcl", P.base_width, ks).to(device), True).train()
    model = (torch.compile(net, mode="reduce-overhead") if name == "cudagraphs"
             else torch.compile(net) if name == "compiled" else net)
    step = AdvCL(model, P, "hfc", 8.0, use_pseudo=bool(ks), batched=name != "eager")
    opt = torch.optim.SGD(net.parameters(), lr=P.lr, momentum=P.momentum, weight_decay=P.weight_decay)
    g = torch.Generator().manual_seed(0)
    targets = [torch.randint(0, k, (args.batch,), device=device) for k in ks] or None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.steps):
        s = (i * args.batch) % max(1, len(x_all) - args.batch + 1)
        x = x_all[s:s + args.batch].to(device, non_blocking=True).float().div_(255)
        x = x.contiguous(memory_format=torch.channels_last)
        _sync(device)
        t0 = time.perf_counter()
        with autocast(device, P.amp):
            loss = step(x, g, targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"variant": name, "median_s": med, "images_per_s": args.batch / med, "peak_gib": mem,
            "epoch_min": EPOCH_IMAGES / (args.batch / med) / 60, "loss": float(loss.detach())}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="sample", help="CIFAR-10 ImageFolder zip/dir, or sample (default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--ks", default="2,10,50,100,500", help="pseudo-label heads ('' for none)")
    ap.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="start no variant after this many seconds (default 420, inside an 8-minute limit)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    t_all = time.perf_counter()
    ds = load_dataset(args.data, "train")
    ds = class_balanced_subset(ds, min(len(ds), args.batch * (args.warmup + args.steps)), seed=0)
    x_all = ds.images
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"AdvCL step, width {args.width}, batch {args.batch}, PGD-5 train mode, {args.amp}, channels_last, "
          f"K={args.ks or 'none'}, {ds.name}; {name}, torch {torch.__version__}; median of {args.steps} steps "
          f"after {args.warmup} warm-up", flush=True)
    print("| variant | s / step | images / s | peak GPU memory (GiB) | 1 epoch (50k images) | 1,000 epochs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    variants = ("eager", "batched") + (() if args.no_compile else ("compiled",)
                                       + (("cudagraphs",) if device.type == "cuda" else ()))
    for variant in variants:
        if time.perf_counter() - t_all > args.budget_s:
            print(f"| {variant} | skipped: past --budget-s {args.budget_s:.0f} s | | | | |", flush=True)
            continue
        try:
            r = run_variant(variant, args, device, x_all)
        except Exception as e:  # noqa: BLE001 - a variant that fails (e.g. compile) is reported, the rest run
            print(f"| {variant} | failed: {type(e).__name__}: {str(e)[:120]} | | | | |", flush=True)
            continue
        print(f"| {variant} | {r['median_s']:.3f} | {r['images_per_s']:.0f} | {r['peak_gib']:.1f} | "
              f"{r['epoch_min']:.1f} min | {r['epoch_min'] * 1000 / 60:.1f} h |", flush=True)
    print(f"{time.perf_counter() - t_all:.0f} s in all; command: python benchmarks/gpu_step.py "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
