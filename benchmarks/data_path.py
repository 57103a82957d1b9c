"""How much of an AdvCL training step is the data path (making the views)?

The data path of one AdvCL step is: two SimCLR views t1, t2 (``simclr_view``), the
original view o (``crop_flip``) and the HFC view h = ``high_pass(o, 8)``, all made
batched on tensors (no DataLoader workers). This script times

1. the view pipeline alone, on a batch of ``--batch`` real images from the embedded
   CIFAR-10 sample, reported as images/s;
2. one full AdvCL step (no pseudo-labels) exactly as ``advcl_lite.pretrain`` runs it for
   a preset: the same views, ContrastivePGD on the 4-view loss, the loss through the
   ``normal``/``pgd`` routes, backward and an SGD step (fp32, channels_last);

alternating the two (so a changing CPU load hits both alike), and prints the share of
the step spent on the data path, and a markdown table row.

    python benchmarks/data_path.py                      # quick preset: width 16, PGD-3, batch 256
    python benchmarks/data_path.py --preset smoke       # width 8, PGD-2, batch 64
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quick", help="preset whose width, PGD steps, attack mode and batch are used")
    ap.add_argument("--batch", type=int, default=None, help="images per batch (default: the preset's batch_size)")
    ap.add_argument("--steps", type=int, default=3, help="timed AdvCL steps after one warm-up step")
    ap.add_argument("--view-reps", type=int, default=3, help="timed view-pipeline runs per AdvCL step")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from advcl_lite.data import class_balanced_subset, load_dataset
    from advcl_lite.views import crop_flip, simclr_view
    from advcl_lite.runtime import resolve_device, seed_everything
    from advcl_lite.frequency import high_pass, scaled_radius
    from advcl_lite.models import to_channels_last
    from advcl_lite.presets import get_preset
    from advcl_lite.methods import AdvCL, build_net

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    p = get_preset(args.preset)
    batch = args.batch or p.batch_size
    ds = class_balanced_subset(load_dataset("sample", "train"), batch, seed=0)
    x, _ = ds.tensors(device=device)
    if p.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    r = scaled_radius(ds.image_size, p.hfc_radius)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def cl(v):      # as the AdvCL step: every view in the preset's memory format
        return v.contiguous(memory_format=torch.channels_last) if p.channels_last else v

    def views(g):
        t1, t2 = cl(simclr_view(x, g)), cl(simclr_view(x, g))
        o = cl(crop_flip(x, g))
        return t1, t2, o, cl(high_pass(o, r))

    g = seed_everything(0)
    net = to_channels_last(build_net("advcl", p.base_width).to(device), p.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    stepper = AdvCL(net, p, "hfc", r, use_pseudo=False)

    def step():
        net.train()
        loss = stepper(x, g)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    view_t, step_t = [], []
    views(g)
    step()                                             # warm-up
    for _ in range(args.steps):
        for _ in range(args.view_reps):
            sync()
            t0 = time.perf_counter()
            views(g)
            sync()
            view_t.append(time.perf_counter() - t0)
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        step_t.append(time.perf_counter() - t0)

    v, s = statistics.median(view_t), statistics.median(step_t)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"preset {p.name}: width {p.base_width}, PGD-{p.pgd_steps} ({p.attack_mode} mode), batch {len(x)}, "
          f"{args.threads} threads, {device}; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"view pipeline (2 x simclr_view + crop_flip + HFC): median {1000 * v:.1f} ms per batch "
          f"= {len(x) / v:,.0f} images/s  (runs: {', '.join(f'{1000 * t:.0f}' for t in view_t)} ms)")
    print(f"AdvCL step (views + PGD + forward/backward + SGD): median {s:.2f} s per batch "
          f"= {len(x) / s:,.1f} images/s  (runs: {', '.join(f'{t:.2f}' for t in step_t)} s)")
    print(f"data path share of the step: {100 * v / s:.1f}%")
    print()
    print("| preset | width | PGD | batch | views, images/s | AdvCL step, s | data path share | command |")
    print(f"| {p.name} | {p.base_width} | {p.pgd_steps} | {len(x)} | {len(x) / v:,.0f} | {s:.2f} | {100 * v / s:.1f}% | "
          f"`python benchmarks/data_path.py --preset {p.name}"
          f"{f' --batch {args.batch}' if args.batch else ''}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
