"""The executed tour as a static site (``advcl-lite site``): what an instructor sends students.

:func:`build_site` renders a tour folder (``advcl-lite tour --out DIR``) with Sphinx and myst-nb, execution
off, so the pages show exactly what the tour executed, with no network (no intersphinx; the theme comes
from the package registry: the ``docs`` extra, ``pip install -e ".[docs]"``):

* an index page: what the package teaches, the notebooks with one line and the cost of each (the tour's
  own seconds), the headline of the tour's ``SUMMARY.md``, links to each executed ``.ipynb`` and to the
  student copies (``notebooks/student/``);
* one page per executed notebook, figures included (widgets appear as the static figures beside them:
  the tour runs headless);
* an API page generated from the library's docstrings.

The output folder holds only the site; an existing folder that is not an earlier site is refused unless
``overwrite=True``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .course import STUDENT_DIR
from .tour import notebooks_dir

MARKER = ".advcl-site"
API_MODULES = ("presets", "data", "views", "frequency", "models", "losses", "attacks", "methods", "pretrain",
               "pseudo_labels", "finetune", "evaluate", "results", "spectra", "pretrained", "analysis", "viz")


class SiteError(ValueError):
    """The tour folder, the output folder or the Sphinx build is not usable; the message says how to fix it."""


def _first_heading(nb: dict) -> str:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


CONF = '''project = "advcl_lite"
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
nb_execution_mode = "off"          # render what the tour executed; never run a notebook here
nb_merge_streams = True
myst_enable_extensions = ["dollarmath"]
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type", "misc.highlighting_failure"]
html_title = "advcl_lite: the executed tour"
try:
    import sphinx_book_theme  # noqa: F401
    html_theme = "sphinx_book_theme"
except ImportError:             # the docs extra brings it; Sphinx's own theme otherwise
    html_theme = "alabaster"
'''


def _index(summary: dict, rows: list[dict], student: list[str]) -> str:
    lines = ["# advcl_lite: the executed tour", "",
             "advcl_lite teaches and reproduces AdvCL (Fan et al., *When Does Contrastive Learning Preserve "
             "Adversarial Robustness from Pretraining to Finetuning?*, NeurIPS 2021): frequency-filtered views, "
             "adversarial contrastive pretraining, clustering pseudo-labels, robustness-transfer evaluation and "
             "the spectra of adversarial perturbations. These pages are the notebooks as the tour executed them, "
             f"at the `{summary.get('preset')}` preset on `{summary.get('data')}` "
             f"(advcl_lite {summary.get('advcl_lite')}, torch {summary.get('torch')}, finished "
             f"{summary.get('finished')}).", "",
             "| notebook | what it shows | cost in this tour | files |", "| --- | --- | --- | --- |"]
    for r in rows:
        links = f"{{download}}`executed .ipynb <_static/executed/{r['stem']}.ipynb>`"
        if r["stem"] + ".ipynb" in student:
            links += f", {{download}}`student copy <_static/student/{r['stem']}.ipynb>`"
        lines.append(f"| [{r['stem'][:2]}](notebooks/{r['stem']}.ipynb) | {r['title']} | {r['seconds']:.0f} s | {links} |")
    head = summary.get("headline") or []
    if head:
        lines += ["", "## Headline of this tour", "", *[f"- {h}" for h in head]]
    lines += ["", "```{toctree}", ":maxdepth: 1", ":hidden:", "", *[f"notebooks/{r['stem']}" for r in rows],
              "api", "```", ""]
    return "\n".join(lines)


def _api() -> str:
    blocks = ["# API", "", "Generated from the library's docstrings.", ""]
    for m in API_MODULES:
        blocks += [f"## advcl_lite.{m}", "", "```{eval-rst}", f".. automodule:: advcl_lite.{m}", "   :members:", "```", ""]
    return "\n".join(blocks)


def build_site(tour: str | Path, out: str | Path, overwrite: bool = False, quiet: bool = True) -> Path:
    """Render the tour folder ``tour`` into the static site ``out``; return the path of its index page."""
    tour, out = Path(tour), Path(out)
    try:
        summary = json.loads((tour / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise SiteError(f"{tour} is not a tour folder (no readable summary.json: {e}); run advcl-lite tour "
                        f"--out {tour} first") from None
    rows = []
    for r in summary.get("notebooks", []):
        path = tour / f"{r['notebook']}.ipynb"
        if r.get("status") == "ok" and path.exists():
            rows.append({"stem": r["notebook"], "seconds": float(r.get("seconds") or 0.0), "path": path,
                         "title": _first_heading(json.loads(path.read_text()))})
    if not rows:
        raise SiteError(f"{tour} holds no notebook the tour executed successfully; run the tour again")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists() and not overwrite:
        raise SiteError(f"{out} exists and is not an earlier site; choose another --out, or pass --overwrite to "
                        f"replace its contents")
    try:
        from sphinx.cmd.build import build_main
        import myst_nb  # noqa: F401
    except ImportError:
        raise SiteError('building the site needs Sphinx and myst-nb: pip install -e ".[docs]"') from None
    with tempfile.TemporaryDirectory(prefix="advcl-site-") as tmp:
        src = Path(tmp)
        (src / "notebooks").mkdir()
        (src / "_static" / "executed").mkdir(parents=True)
        (src / "_static" / "student").mkdir(parents=True)
        for r in rows:
            shutil.copy(r["path"], src / "notebooks" / f"{r['stem']}.ipynb")
            shutil.copy(r["path"], src / "_static" / "executed" / f"{r['stem']}.ipynb")
        student = []
        student_dir = notebooks_dir() / STUDENT_DIR
        for p in sorted(student_dir.glob("*.ipynb")) if student_dir.is_dir() else []:
            shutil.copy(p, src / "_static" / "student" / p.name)
            student.append(p.name)
        (src / "conf.py").write_text(CONF + 'html_static_path = ["_static"]\n')
        (src / "index.md").write_text(_index(summary, rows, student))
        (src / "api.md").write_text(_api())
        if out.exists() and (overwrite or (out / MARKER).exists()):
            shutil.rmtree(out)
        rc = build_main(["-b", "html", *(["-Q"] if quiet else []), "-d", str(src / "_build" / "doctrees"),
                         str(src), str(out)])
    if rc != 0:
        raise SiteError(f"Sphinx failed (exit {rc}) building {out}; run it again with ADVCL_DEBUG=1 for its output")
    (out / MARKER).write_text(f"site of {tour.resolve()}\n")
    return out / "index.html"
