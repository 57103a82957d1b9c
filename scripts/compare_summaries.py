"""Compare the recorded values of two tour runs: ``python scripts/compare_summaries.py BEFORE/summary.json AFTER/summary.json``.

Walks every notebook's records in both ``summary.json`` files and prints each value that differs
(floats to a relative 1e-5; timings, paths and file names ignored), or one line saying they agree.
Used to show that a restructuring leaves the smoke tour's numbers unchanged (DEVELOPING.md).
"""
import json, math, sys
IGNORE = ("seconds", "images_per_s", "_s", "checkpoint", "file", "path", "wall", "eval_seconds", "finished")
def walk(a, b, path, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if any(s in k for s in IGNORE):
                continue
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'before' if k in a else 'after'}")
                continue
            walk(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} vs {len(b)}"); return
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)):
            out.append(f"{path}: {a} vs {b}")
    elif a != b:
        out.append(f"{path}: {a!r} vs {b!r}")
before, after = (json.load(open(p)) for p in sys.argv[1:3])
out = []
for nb_a, nb_b in zip(before["notebooks"], after["notebooks"]):
    walk(nb_a.get("records", {}), nb_b.get("records", {}), nb_a["notebook"], out)
n = sum(1 for _ in before["notebooks"])
print("\n".join(out) if out else f"all recorded values of the {n} notebooks agree (rel 1e-5), timings and paths ignored")
