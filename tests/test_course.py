"""advcl_lite.course: student copies that match the instructor notebooks and stop at their first exercise."""
from __future__ import annotations

from pathlib import Path

import nbformat
import papermill as pm
import pytest

from advcl_lite import course
from advcl_lite.cli import main
from advcl_lite.tour import list_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
STUDENT = NOTEBOOKS / course.STUDENT_DIR


def test_strip_solutions_keeps_indentation_and_everything_outside():
    src = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\nprint(f)"
    assert course.strip_solutions(src) == ("def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
                                           "\nprint(f)")


@pytest.mark.parametrize("bad,problem", [("### BEGIN SOLUTION\nx = 1", "never closed"),
                                         ("x = 1\n### END SOLUTION", "without a"),
                                         ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another")])
def test_unbalanced_markers_are_one_line_errors(bad, problem):
    with pytest.raises(ValueError, match=problem):
        course.strip_solutions(bad, "nb cell 3")


def test_committed_student_copies_match_the_instructor_notebooks(tmp_path):
    """Drift: regenerating the copies gives the committed files byte for byte (else run `advcl-lite student`)."""
    fresh = course.write_student_copies(list_notebooks(NOTEBOOKS), tmp_path)
    assert [p.name for p in fresh] == sorted(p.name for p in STUDENT.glob("*.ipynb")), \
        "notebooks/student/ lacks a copy or has an extra one; run `advcl-lite student --overwrite`"
    for p in fresh:
        assert p.read_text() == (STUDENT / p.name).read_text(), \
            f"notebooks/student/{p.name} drifted from notebooks/{p.name}; run `advcl-lite student --overwrite`"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("0*.ipynb")), ids=lambda n: n[:2])
def test_student_copy_differs_only_in_solutions_outputs_and_badge(name):
    teacher = nbformat.read(NOTEBOOKS / name, as_version=4).cells
    student = nbformat.read(STUDENT / name, as_version=4).cells
    assert len(teacher) == len(student)
    for i, (t, s) in enumerate(zip(teacher, student)):
        if t.metadata.get("nbgrader", {}).get("solution"):
            assert "raise NotImplementedError()" in s.source and "### BEGIN SOLUTION" not in s.source
            assert s.source.split("\n")[0] == t.source.split("\n")[0]        # the def line is kept
        elif i == 0:
            assert s.source.replace("/notebooks/student/", "/notebooks/") == t.source
            assert f"/notebooks/student/{name})" in s.source
        else:
            assert s.source == t.source and s.metadata == t.metadata, f"{name} cell {i}"
        if s.cell_type == "code":
            assert s.outputs == [] and s.execution_count is None


def _first_exercise_check(cells) -> str:
    return next(c.metadata["nbgrader"]["grade_id"] for c in cells if c.metadata.get("nbgrader", {}).get("grade"))


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("0*.ipynb")), ids=lambda n: n[:2])
def test_student_copy_stops_at_its_first_exercise_and_not_earlier(name, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVCL_HEADLESS", "1")
    monkeypatch.setenv("ADVCL_RECORD_FILE", str(tmp_path / "records.json"))
    out = tmp_path / name
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(STUDENT / name), str(out), parameters={"preset": "smoke", "work_dir": str(tmp_path)},
                            kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    assert err.value.ename == "NotImplementedError"
    cells = nbformat.read(out, as_version=4).cells
    failed = [c for c in cells if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.outputs)]
    assert len(failed) == 1
    assert failed[0].metadata.get("nbgrader", {}).get("grade_id") == _first_exercise_check(cells), \
        f"{name} stopped in another cell than its first exercise's check: {failed[0].source[:80]!r}"
    ran = [c for c in cells if c.cell_type == "code" and c.execution_count is not None]
    assert ran[-1] is failed[0] and len(ran) >= 3       # every cell before it ran


def test_cli_student_refuses_to_replace_an_edited_copy(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ADVCL_NOTEBOOKS", str(NOTEBOOKS))
    assert main(["student", "--out", str(tmp_path)]) == 0
    first = sorted(tmp_path.glob("*.ipynb"))[0]
    first.write_text(first.read_text().replace("YOUR CODE HERE", "my answer"))
    capsys.readouterr()
    assert main(["student", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and first.name in err and "--overwrite" in err and err.count("\n") == 1
    assert "my answer" in first.read_text()                       # nothing the user wrote was replaced
    assert main(["student", "--out", str(tmp_path), "--overwrite"]) == 0
    assert "my answer" not in first.read_text()


def _nbgrader():
    import os
    import shutil
    exe = os.environ.get("ADVCL_NBGRADER") or shutil.which("nbgrader")
    if not exe:
        pytest.skip("nbgrader is not installed (the optional `course` extra, in an environment of its own: README "
                    "'Teaching with advcl_lite'); set ADVCL_NBGRADER=/path/to/nbgrader to use one elsewhere")
    return exe


def test_nbgrader_gives_the_instructor_copies_full_points_and_the_stubs_none(tmp_path):
    """A course of notebooks 01 and 06 at smoke (the two cheapest to execute, one exercise each): nbgrader's
    generate_assignment and autograde give the instructor copies every point and the released stubs none, and
    log no warning about a grade cell's output (the checks return None)."""
    import json
    import subprocess
    exe = _nbgrader()
    course_dir = tmp_path / "course"
    source = course_dir / "source" / "ps1"
    source.mkdir(parents=True)
    names = [p for p in sorted(NOTEBOOKS.glob("0*.ipynb")) if p.name[:2] in ("01", "06")]
    for p in names:
        nb = nbformat.read(p, as_version=4)
        for cell in nb.cells:
            if "parameters" in cell.metadata.get("tags", []):
                cell.source = cell.source.replace('preset = "quick"', 'preset = "smoke"').replace(
                    'work_dir = "advcl-runs"', f'work_dir = "{tmp_path / "runs"}"')
        nbformat.write(nb, source / p.name)
    (course_dir / "nbgrader_config.py").write_text(
        f'c = get_config()\nc.CourseDirectory.course_id = "advcl"\nc.CourseDirectory.root = r"{course_dir}"\n'
        f'c.ExecutePreprocessor.timeout = 600\n')
    import os
    # nbgrader runs its environment's own tools (alembic, the python3 kernel): its bin folder first on PATH
    env = {**os.environ, "MPLBACKEND": "agg", "ADVCL_PROGRESS": "0",
           "PATH": os.pathsep.join([str(Path(exe).parent), os.environ.get("PATH", "")])}

    def run(*args):
        r = subprocess.run([exe, *args], cwd=course_dir, capture_output=True, text=True, env=env, timeout=1200)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        return r.stdout + r.stderr
    log = run("generate_assignment", "ps1", "--force")
    for student, folder in (("teacher", source), ("stub", course_dir / "release" / "ps1")):
        sub = course_dir / "submitted" / student / "ps1"
        sub.mkdir(parents=True)
        for p in names:
            (sub / p.name).write_bytes((folder / p.name).read_bytes())
    log += run("autograde", "ps1", "--force")
    assert "partial credit" not in log, log[-3000:]
    run("export", "--to", str(tmp_path / "grades.csv"))
    import csv
    rows = {r["student_id"]: r for r in csv.DictReader(open(tmp_path / "grades.csv"))}
    assert float(rows["teacher"]["max_score"]) == len(names)
    assert float(rows["teacher"]["score"]) == len(names) and float(rows["stub"]["score"]) == 0, json.dumps(rows)
