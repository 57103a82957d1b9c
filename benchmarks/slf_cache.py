"""SLF with and without ``slf_cached_features`` on one encoder: time and accuracy, in one run (issue 29).

The original's SLF trains the linear head on crop+flip views, so each epoch runs the frozen encoder on every
training image; ``--set slf_cached_features=true`` runs it once, on the un-augmented images, and trains the head
on those features (a named deviation for speed). This prints, for each, the finetuning seconds and SA / PGD-20 RA
with 95 % intervals on the same test images, and the time ratio.

    python benchmarks/slf_cache.py --encoder acl --preset quick --data sample
    python benchmarks/slf_cache.py --encoder DIR/NAME.pt --preset quick     # e.g. an imported width-64 encoder
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from advcl_lite import get_preset, pretrained
from advcl_lite.evaluate import evaluate
from advcl_lite.finetune import finetune
from advcl_lite.results import format_result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="acl", help="a shipped encoder's name or an encoder file")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--data", default="sample")
    ap.add_argument("--n", type=int, default=None, help="test images (default: the preset's eval_n)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sets = dict(s.split("=", 1) for s in a.set)
    enc = Path(a.encoder) if Path(a.encoder).exists() else pretrained.encoder_dir() / f"{a.encoder}.pt"
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cached in (False, True):
            P = get_preset(a.preset, data=a.data, slf_cached_features=cached, **sets)
            t0 = time.perf_counter()
            ft = finetune(str(enc), "slf", P, data=a.data, out_dir=Path(tmp) / str(cached), progress=False)
            secs = time.perf_counter() - t0
            r = evaluate(ft.model, a.data, attack="pgd20", n=a.n or P.eval_n, seed=P.seed, progress=False)
            rows[cached] = (secs, r)
            print(f"slf_cached_features={str(cached).lower():5s}: SLF {secs:.1f} s; {format_result(r)}", flush=True)
    (s0, r0), (s1, r1) = rows[False], rows[True]
    print(f"speed-up {s0 / s1:.2f}x; SA {100 * (r1['sa'] - r0['sa']):+.1f} points, RA {100 * (r1['ra'] - r0['ra']):+.1f} "
          f"points (cached - original), encoder {enc.name}, preset {a.preset}, data {a.data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
