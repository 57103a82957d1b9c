"""Is the PGD-20 robust accuracy of the results report an artefact of a weak attack?

For finetuned models written by ``benchmarks/results.py``, evaluates the same test
images (the seeded class-balanced ``--n`` of the test split) under PGD-20 with the
cross-entropy loss (the report's attack), PGD-20 with the CW margin loss, and PGD-50,
all at eps 8/255, alpha 2/255, random start. Also prints the mean logit standard
deviation and the mean top softmax probability on clean images (saturated softmax
outputs are the usual cause of vanishing gradients, i.e. gradient masking).

    python benchmarks/attack_check.py benchmarks/out/quick/seed0/finetune/simclr-slf benchmarks/out/quick/seed0/finetune/advcl-slf
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from advcl_lite.attacks import PGD
from advcl_lite.data import class_interleaved, load_dataset
from advcl_lite.evaluate import evaluate
from advcl_lite.finetune import load_finetuned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="finetuning folders (holding model.pt) or model.pt files")
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.zip")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    test = load_dataset(args.data, "test")
    x, _ = class_interleaved(test, 200)
    print("| model | mean logit std | mean top softmax | SA | RA PGD-20 (CE) | RA PGD-20 (CW) | RA PGD-50 (CE) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        path = Path(run)
        path = path / "model.pt" if path.is_dir() else path
        model, _ = load_finetuned(path, device="cpu")
        with torch.no_grad():
            z = model(x)
        row = [f"{path.parent.parent.parent.name}/{path.parent.name}", f"{float(z.std(1).mean()):.2f}",
               f"{float(z.softmax(1).amax(1).mean()):.2f}"]
        attacks = ["pgd20", PGD(model, 8 / 255, 2 / 255, 20, loss="cw"), "pgd50"]
        for i, atk in enumerate(attacks):
            r = evaluate(model, test, attack=atk, n=args.n, seed=0, progress=False)
            if i == 0:
                row.append(f"{r['sa'] * 100:.1f}")
            row.append(f"{r['ra'] * 100:.1f}")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
