"""Write (or --check) constraints.txt: the exact version of every package advcl_lite's install pulls in.

    python scripts/constraints.py            # after `pip install -e ".[test]"`: rewrite constraints.txt
    python scripts/constraints.py --check    # exit 1, naming each difference, when it lags the environment

The closure is walked from the installed ``advcl-lite`` distribution's requirements with the ``test``
extra (environment markers evaluated here), so the file is what CI installed and tested. An instructor pins a
class to it with ``pip install -e ".[test]" -c constraints.txt`` (README, "Two commands").
"""
from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT / "constraints.txt"
HEADER = ("# The exact versions advcl_lite's CI installed and tested (Python 3.11, Linux x86_64).\n"
          "# Made by `python scripts/constraints.py`; use: pip install -e \".[test]\" -c constraints.txt\n")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = "advcl-lite", extras=("test",)) -> dict[str, str]:
    """{normalised name: installed version} of every distribution ``root`` (with ``extras``) requires."""
    seen: dict[str, str] = {}
    todo = [(root, tuple(extras))]
    while todo:
        name, ex = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        key = _norm(dist.metadata["Name"])
        if key in seen and not ex:
            continue
        seen[key] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *ex)):
                if _norm(req.name) not in seen:
                    todo.append((req.name, tuple(req.extras)))
    seen.pop(_norm(root), None)
    return dict(sorted(seen.items()))


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{n}=={v}\n" for n, v in pins.items())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render(closure())
    if "--check" in argv:
        old = FILE.read_text() if FILE.exists() else ""
        if old == text:
            return 0
        have = dict(line.split("==") for line in old.splitlines() if "==" in line)
        want = dict(line.split("==") for line in text.splitlines() if "==" in line)
        diff = [f"{n}: file {have.get(n, '-')} vs installed {want.get(n, '-')}" for n in sorted(set(have) | set(want))
                if have.get(n) != want.get(n)]
        print("constraints.txt lags the environment (run python scripts/constraints.py): " + "; ".join(diff[:10]),
              file=sys.stderr)
        return 1
    FILE.write_text(text)
    print(f"wrote {FILE} ({text.count('==')} packages)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
