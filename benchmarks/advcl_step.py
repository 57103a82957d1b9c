"""Throughput of one AdvCL training step on the CPU: the original's schedule, advcl_lite's, and one batched forward.

One step is what ``advcl_lite.pretrain`` does per batch with AdvCL (no pseudo-labels unless ``--pseudo 2,10``:
then also x_ce and L_PS, on random targets, and the ``batched`` schedule runs both attacks in one loop):
views t1, t2, o, h = HFC(o); x_cl = PGD-5 on the 4-view contrastive loss from o
against the clean anchors [t1, t2, h], the network in train mode as the original;
the 4-view loss through the ``normal``/``pgd`` routes; backward; SGD step. fp32,
channels_last, ``--threads`` torch threads (2 by default).

Three schedules, timed in the same run on the same inputs, all with the same mathematics:

* ``original``: ``recompute_anchors=True``, the original code's schedule, re-embedding the clean
  anchors at every attack step, and one forward per view in the update;
* ``once``: advcl_lite's default, the clean anchors embedded once per batch, one forward per view;
* ``batched``: anchors once, and the update's four views in one batched forward (``AdvCL(batched=True)``:
  the convolutions run once on the concatenation, every BN normalises each view's chunk on its own route).

Per width, one subprocess times both schedules with their steps alternating (so a
changing CPU load hits both alike), and each (width, schedule) then runs alone in its
own subprocess for its peak resident memory (``ru_maxrss``). The width-64 (paper) encoder is
about 16x the compute of width 16, so it runs at a smaller batch (``--full-batch``).
The input is a batch of the real CIFAR-10 images embedded in the package.

    python benchmarks/advcl_step.py                          # width 16 @ 128, width 64 @ 16, 1 warm-up + 3 steps
    python benchmarks/advcl_step.py --batch 256 --steps 5    # more, slower

Candidate speed-ups of advcl_lite's step, each against today's code in one process (``--ab``), and where the
time goes (``--profile``):

    python benchmarks/advcl_step.py --ab layout --steps 5    # channels_last (default) vs NCHW
    python benchmarks/advcl_step.py --ab relu --steps 5      # ReLU out of place (today) vs in place
    python benchmarks/advcl_step.py --profile once           # torch.profiler's op table, width 16
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


SCHEDULES = ("original", "once", "batched")


def _setup(width: int, batch: int, threads: int, pgd: int, schedules, pseudo: str = "", amp: str = "none",
           channels_last: bool = True):
    import torch

    torch.set_num_threads(threads)
    from advcl_lite.data import load_sample
    from advcl_lite.models import to_channels_last
    from advcl_lite.presets import get_preset
    from advcl_lite.methods import AdvCL, build_net
    from advcl_lite.runtime import autocast

    P = get_preset("benchmark", base_width=width, batch_size=batch, pgd_steps=pgd, attack_mode="train",
                   amp=amp, channels_last=channels_last)
    x = load_sample("train").tensors(batch)[0]
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
    runners = {}
    for schedule in schedules:
        torch.manual_seed(0)
        ks = tuple(int(k) for k in pseudo.split(",") if k)
        net = to_channels_last(build_net("advcl", width, ks), channels_last).train()
        opt = torch.optim.SGD(net.parameters(), lr=P.lr, momentum=P.momentum, weight_decay=P.weight_decay)
        step = AdvCL(net, P, "hfc", 8.0, use_pseudo=bool(ks), recompute_anchors=schedule == "original",
                     batched=schedule == "batched")
        g = torch.Generator().manual_seed(0)
        targets = [torch.randint(0, k, (batch,), generator=torch.Generator().manual_seed(k)) for k in ks] or None

        def one(step=step, opt=opt, g=g, targets=targets) -> float:
            t0 = time.perf_counter()
            with autocast(torch.device("cpu"), P.amp):
                loss = step(x, g, targets)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - t0
        runners[schedule] = one
    return runners, str(torch.__version__)


def _rss_mib() -> float:
    kb = 1 if sys.platform != "darwin" else 1024          # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kb / 1024


def child_time(width: int, batch: int, warmup: int, steps: int, threads: int, pgd: int, pseudo: str = "",
               amp: str = "none", channels_last: bool = True) -> dict:
    """The schedules in one process, their steps alternating (order rotated), so a changing CPU load hits all alike."""
    runners, version = _setup(width, batch, threads, pgd, SCHEDULES, pseudo, amp, channels_last)
    times = {k: [] for k in SCHEDULES}
    for i in range(warmup + steps):
        order = SCHEDULES[i % 3:] + SCHEDULES[:i % 3]
        for schedule in order:
            dt = runners[schedule]()
            if i >= warmup:
                times[schedule].append(dt)
    return {"times": times, "torch": version}


def child_mem(width: int, batch: int, schedule: str, threads: int, pgd: int, pseudo: str = "",
              amp: str = "none", channels_last: bool = True) -> dict:
    """Peak resident memory of one configuration alone: set-up, then one step."""
    runners, _ = _setup(width, batch, threads, pgd, (schedule,), pseudo, amp, channels_last)
    before = _rss_mib()
    runners[schedule]()
    return {"rss_setup_mib": before, "peak_rss_mib": _rss_mib()}


def profile(width: int, batch: int, schedule: str, threads: int, pgd: int, pseudo: str = "", amp: str = "none",
            channels_last: bool = True, top: int = 25) -> str:
    """torch.profiler's table of one step of ``schedule`` (after one untimed step), ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    runners, _ = _setup(width, batch, threads, pgd, (schedule,), pseudo, amp, channels_last)
    runners[schedule]()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        runners[schedule]()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


@contextlib.contextmanager
def _relu_inplace(on: bool):
    """Every ``F.relu`` of ``advcl_lite.models`` with ``inplace=on`` (a candidate change, the same values): the
    module's ``F`` is swapped for a view of ``torch.nn.functional`` whose ``relu`` has that default, so the
    network's own code runs; restored on exit."""
    import functools
    import types

    import torch.nn.functional as F

    from advcl_lite import models

    view = types.SimpleNamespace(**vars(F))
    view.relu = functools.partial(F.relu, inplace=on)
    models.F = view
    try:
        yield
    finally:
        models.F = F


AB = {"layout": ("channels_last", "NCHW"), "relu": ("ReLU out of place", "ReLU in place")}


def ab(what: str, width: int, batch: int, steps: int, threads: int, pgd: int, pseudo: str = "",
       amp: str = "none") -> dict:
    """Two variants of advcl_lite's ``once`` step in one process, their steps alternating after one warm-up
    step each: ``layout`` channels_last (A, the default) vs NCHW (B); ``relu`` out of place (A, today's
    code) vs in place (B). Returns the median and fastest seconds per step of each and the ratio B/A of
    the medians (above 1: B is slower)."""
    if what == "layout":
        run = {"A": _setup(width, batch, threads, pgd, ("once",), pseudo, amp)[0]["once"],
               "B": _setup(width, batch, threads, pgd, ("once",), pseudo, amp, channels_last=False)[0]["once"]}
        ctx = {"A": contextlib.nullcontext, "B": contextlib.nullcontext}
    else:
        step = _setup(width, batch, threads, pgd, ("once",), pseudo, amp)[0]["once"]
        run = {"A": step, "B": step}
        ctx = {"A": lambda: _relu_inplace(False), "B": lambda: _relu_inplace(True)}
    times = {"A": [], "B": []}
    for i in range(2 * (steps + 1)):
        k = "AB"[i % 2]
        with ctx[k]():
            dt = run[k]()
        if i >= 2:
            times[k].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_s": med, "min_s": {k: min(v) for k, v in times.items()}, "ratio_b_over_a": med["B"] / med["A"]}


def _child(args, kind: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps({"kind": kind, **kw})]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128, help="batch size of the width-16 encoder (default 128)")
    ap.add_argument("--full-batch", type=int, default=16, help="batch size of the width-64 encoder (default 16)")
    ap.add_argument("--widths", default="16,64", help="encoder base widths (default 16,64)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per schedule (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--pgd", type=int, default=5, help="PGD steps of the attack (default 5, the paper's)")
    ap.add_argument("--amp", default="none", choices=["none", "bf16"], help="autocast of the step (default fp32)")
    ap.add_argument("--pseudo", default="", help="pseudo-label heads, e.g. 2,10,50 (x_ce and L_PS; default none)")
    ap.add_argument("--contiguous", action="store_true",
                    help="NCHW tensors and weights instead of channels_last (the preset field channels_last=False)")
    ap.add_argument("--profile", default=None, choices=SCHEDULES,
                    help="print torch.profiler's op table for one step of this schedule at the first width, then stop")
    ap.add_argument("--ab", default=None, choices=sorted(AB),
                    help="time two variants of advcl_lite's step alternating in one process at each width, then "
                         "stop: layout (channels_last vs NCHW) or relu (out of place vs in place)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kw = json.loads(args.child)
        kind = kw.pop("kind")
        print(json.dumps(child_time(**kw) if kind == "time" else child_mem(**kw)))
        return 0

    if args.profile:
        width = int(args.widths.split(",")[0])
        print(profile(width, args.batch if width < 64 else args.full_batch, args.profile, args.threads, args.pgd,
                      args.pseudo, args.amp, not args.contiguous))
        return 0
    if args.ab:
        a, b = AB[args.ab]
        load0 = os.getloadavg()
        print(f"| encoder | batch | {a}: s / step, median (fastest) | {b}: s / step, median (fastest) | {b} / {a} |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for width in [int(w) for w in args.widths.split(",")]:
            batch = args.batch if width < 64 else args.full_batch
            r = ab(args.ab, width, batch, args.steps, args.threads, args.pgd, args.pseudo, args.amp)
            m, f = r["median_s"], r["min_s"]
            print(f"| width {width} | {batch} | {m['A']:.2f} ({f['A']:.2f}) | {m['B']:.2f} ({f['B']:.2f}) "
                  f"| {r['ratio_b_over_a']:.2f}x |", flush=True)
        print(f"\n{'fp32' if args.amp == 'none' else args.amp + ' autocast'}, PGD-{args.pgd} in train mode, "
              f"pseudo-label heads {args.pseudo or 'none'}, {args.threads} torch threads, {args.steps} timed steps each; "
              f"load average (1 min) {load0[0]:.1f} before, {os.getloadavg()[0]:.1f} after.")
        return 0
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    rows, ratios, version = [], {}, ""
    for width in [int(w) for w in args.widths.split(",")]:
        batch = args.batch if width < 64 else args.full_batch
        common = {"width": width, "batch": batch, "threads": args.threads, "pgd": args.pgd, "pseudo": args.pseudo,
                  "amp": args.amp, "channels_last": not args.contiguous}
        timed = _child(args, "time", warmup=args.warmup, steps=args.steps, **common)
        version = timed["torch"]
        med = {}
        for schedule in SCHEDULES:
            t = timed["times"][schedule]
            mem = _child(args, "mem", schedule=schedule, **common)
            med[schedule] = min(t)          # other processes only ever add time: the fastest step is the estimate
            rows.append({**common, "schedule": schedule, "median_s": statistics.median(t), "min_s": min(t),
                         "max_s": max(t), "images_per_s": batch / min(t), **mem})
            print(f"width {width} batch {batch} {schedule}: fastest {med[schedule]:.2f}s/step, "
                  f"peak {mem['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
        ratios[width] = {k: med["original"] / med[k] for k in SCHEDULES}
    load1 = os.getloadavg()

    print(f"\nOne AdvCL training step (PGD-{args.pgd} in train mode, 4 views, "
          f"{'fp32' if args.amp == 'none' else args.amp + ' autocast'}, "
          f"{'NCHW' if args.contiguous else 'channels_last'}, "
          f"pseudo-label heads {args.pseudo or 'none'}, "
          f"{args.threads} torch threads) on {platform.processor() or platform.machine()} "
          f"({os.cpu_count()} logical CPUs), torch {version}. Fastest of {args.steps} timed steps after "
          f"{args.warmup} warm-up (other processes only add time), median beside it; "
          f"the three schedules alternate step by step in one process. Peak RSS: each "
          f"configuration alone in its own process (set-up + 1 step); 'of which the step' is the peak "
          f"minus the RSS after set-up (torch, the data and the model).")
    names = {"original": "original (anchors every attack step, a forward per view)",
             "once": "advcl_lite (anchors once, a forward per view)",
             "batched": "batched (anchors once, one forward of the update's views)"}
    print("\n| encoder | batch | schedule | s / step, fastest (median, slowest) | images / s (fastest) "
          "| speed vs original | peak RSS (MiB) | of which the step (MiB) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| width {r['width']} | {r['batch']} | {names[r['schedule']]} | {r['min_s']:.2f} ({r['median_s']:.2f}, "
              f"{r['max_s']:.2f}) | {r['images_per_s']:.1f} | {ratios[r['width']][r['schedule']]:.2f}x "
              f"| {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] - r['rss_setup_mib']:.0f} |")
    print(f"\nload average (1 min) {load0[0]:.1f} before, {load1[0]:.1f} after, on {os.cpu_count()} logical CPUs; "
          f"a load above the core count means other processes competed for the CPU and the absolute "
          f"times are inflated. {time.perf_counter() - t_all:.0f}s in all.")
    print(f"command: python benchmarks/advcl_step.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    return 0

if __name__ == "__main__":
    sys.exit(main())
