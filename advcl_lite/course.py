"""The course kit: student copies of the notebooks, made from the instructor notebooks.

The exercises live in the notebooks themselves (one source of truth), marked as nbgrader marks them:
a solution cell (metadata ``nbgrader.solution = true``) whose answer sits between ``### BEGIN
SOLUTION`` and ``### END SOLUTION``, followed by a locked grade cell (``nbgrader.grade = true``,
``points``) that calls a check of :mod:`advcl_lite.checks`. An instructor with nbgrader can use the
notebooks as they are; without it, :func:`write_student_copies` (``advcl-lite student``) writes the
student copies: each solution region replaced by ``raise NotImplementedError()`` at the marker's
indentation (nbgrader's own stub), every output cleared, everything else identical, and the
"Open in Colab" badge pointing at the student copy.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Sequence

from .checkpoint import write_text

# nbformat is imported where it is used: with its JSON-schema validator it takes about 2 s to import,
# which every `advcl-lite` command would otherwise pay

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
STUDENT_DIR = "student"          # notebooks/student/: the committed student copies


def strip_solutions(source: str, where: str = "cell") -> str:
    """``source`` with each BEGIN/END SOLUTION region replaced by the stub, indented as the BEGIN marker."""
    out, inside, indent = [], False, ""
    for line in source.split("\n"):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"{where}: '{BEGIN}' inside another solution region")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out += [indent + s for s in STUB.split("\n")]
        elif marker == END:
            if not inside:
                raise ValueError(f"{where}: '{END}' without a '{BEGIN}' before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: '{BEGIN}' is never closed by '{END}'")
    return "\n".join(out)


def student_copy(nb, name: str, student_dir: str = STUDENT_DIR):
    """The student version of notebook ``nb`` (a copy; ``nb`` is not changed)."""
    import nbformat

    nb = nbformat.from_dict(copy.deepcopy(nb))
    solutions = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            if BEGIN not in cell.source:
                raise ValueError(f"{name}: cell {i} is an nbgrader solution cell without '{BEGIN}'")
            cell.source = strip_solutions(cell.source, f"{name} cell {i}")
            solutions += 1
        elif BEGIN in cell.source:
            raise ValueError(f"{name}: cell {i} has '{BEGIN}' but no nbgrader solution metadata")
    if solutions == 0:
        raise ValueError(f"{name}: no exercise (no nbgrader solution cell) to make a student copy of")
    if nb.cells and nb.cells[0].cell_type == "markdown":   # the badge opens the student copy itself
        nb.cells[0].source = re.sub(r"(/blob/[^/]+/notebooks/)(?!" + re.escape(student_dir) + r"/)",
                                    r"\g<1>" + student_dir + "/", nb.cells[0].source, count=1)
    return nb


def holds_solutions(path: str | os.PathLike) -> bool:
    """Whether the notebook at ``path`` has an exercise with its solution written in (a ``### BEGIN SOLUTION``
    region), as the instructor notebooks do and the student copies do not."""
    import json

    try:
        cells = json.loads(Path(path).read_text()).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return False
    return any(BEGIN in "".join(c.get("source", "")) for c in cells if isinstance(c, dict))


def write_student_copies(notebooks: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                         overwrite: bool = False) -> list[Path]:
    """Write the student copy of each notebook in ``notebooks`` (the tour's: ``tour.list_notebooks()``) to
    ``out`` (default: ``student/`` beside the first of them).

    A file already there with other content (a copy someone edited) is refused unless ``overwrite``;
    one with the same content is left alone. Returns the paths written or already up to date.
    """
    import nbformat

    paths = [Path(p) for p in notebooks]
    if not paths:
        raise FileNotFoundError("no notebooks (*.ipynb) to make student copies of")
    dst = Path(out) if out is not None else paths[0].parent / STUDENT_DIR
    copies = {p.name: nbformat.writes(student_copy(nbformat.read(p, as_version=4), p.name)) + "\n" for p in paths}
    sources = {p.resolve() for p in paths}
    solved = [n for n in copies if (dst / n).exists() and ((dst / n).resolve() in sources or holds_solutions(dst / n))]
    if solved:                # an instructor notebook: its solutions are never replaced, --overwrite or not
        raise FileExistsError(f"{dst}: {', '.join(solved)} hold the exercises' solutions (instructor notebooks), "
                              f"which student copies never replace; choose another --out (default: "
                              f"{paths[0].parent / STUDENT_DIR})")
    clash = [n for n, text in copies.items() if (dst / n).exists() and (dst / n).read_text() != text]
    if clash and not overwrite:
        raise FileExistsError(f"{dst}: {', '.join(clash)} already exist with other content (edited by hand?); "
                              f"pass --overwrite to replace them, or choose another --out")
    for n, text in copies.items():
        if not (dst / n).exists() or (dst / n).read_text() != text:
            write_text(dst / n, text)
    return [dst / n for n in copies]
