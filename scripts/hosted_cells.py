"""Write (or, with --check, verify) each notebook's hosted-runtime cells from pyproject.toml.

Every notebook opens with an "Open in Colab" badge (first line of its first cell, the notebook's path in
the repository named by ``[project.urls] Repository``) followed by a set-up cell tagged ``hosted-setup``
that installs advcl_lite only inside a hosted runtime (``"google.colab" in sys.modules``); locally and
under papermill it does nothing. A fork changes the URL in pyproject.toml and runs this script.

    python scripts/hosted_cells.py            # rewrite the cells in notebooks/
    python scripts/hosted_cells.py --check    # exit 1, naming the notebook, if one is out of date
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
TAG = "hosted-setup"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"

SETUP = '''# Hosted runtime (Colab) only: install advcl_lite into it. Locally and under papermill this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    # --no-deps keeps the runtime's own torch, torchvision and numpy: reinstalling them forces a restart.
    # Of the package's requirements only the AutoAttack code is missing from a hosted runtime.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "advcl-lite @ git+{url}"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyautoattack"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()   # the sliders of ipywidgets 8 in the hosted frontend'''


def repository() -> tuple[str, str]:
    """(URL, owner/name) of the repository in pyproject.toml."""
    found = re.search(r'^Repository\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    url = found.group(1).rstrip("/") if found else ""
    m = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", url)
    if not m:
        raise SystemExit(f"pyproject.toml: [project.urls] Repository = {url!r} is not https://github.com/OWNER/NAME")
    return url, m.group(1)


def badge_line(slug: str, notebook: Path) -> str:
    link = f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{notebook.name}"
    return f"[![Open in Colab]({BADGE})]({link})"


def expected_cells(nb, notebook: Path) -> tuple[str, str]:
    url, slug = repository()
    first = nb.cells[0].source.split("\n")
    body = first[2:] if first and first[0].startswith("[![Open in Colab]") else first
    return "\n".join([badge_line(slug, notebook), ""] + body), SETUP.format(url=url)


def setup_index(nb) -> int | None:
    return next((i for i, c in enumerate(nb.cells) if TAG in c.metadata.get("tags", [])), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    stale = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        first, setup = expected_cells(nb, path)
        i = setup_index(nb)
        ok = nb.cells[0].source == first and i == 1 and nb.cells[1].source == setup
        if ok:
            continue
        if args.check:
            stale.append(path.name)
            continue
        nb.cells[0].source = first
        if i is not None:
            del nb.cells[i]
        cell = nbformat.v4.new_code_cell(setup, metadata={"tags": [TAG]})
        nb.cells.insert(1, cell)
        nbformat.validator.normalize(nb)
        nbformat.write(nb, path)
        print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"notebooks/{', '.join(stale)}: the hosted-runtime badge or set-up cell is out of date; "
              f"run python scripts/hosted_cells.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
