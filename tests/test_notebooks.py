"""What every notebook carries for a person who opens it: the hosted-runtime badge and set-up cell, the
device line, the widget ranges that keep the text true."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(path):
    return nbformat.read(path, as_version=4).cells


def _setup_source(path) -> str:
    cells = _cells(path)
    assert "hosted-setup" in cells[1].metadata.get("tags", []), f"{path.name}: cell 1 is not the hosted set-up cell"
    return cells[1].source


def test_badges_and_set_up_cells_match_the_repository_in_pyproject():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "hosted_cells.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for path in NOTEBOOKS:
        first = _cells(path)[0]
        assert first.cell_type == "markdown"
        assert first.source.startswith("[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                                       "(https://colab.research.google.com/github/")
        assert first.source.split("\n")[0].endswith(f"/blob/main/notebooks/{path.name})"), path.name


def test_the_check_notices_a_stale_badge(tmp_path):
    """--check is not vacuous: a copy of the project with one badge edited fails it, naming the notebook."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "hosted_cells.py").write_text((ROOT / "scripts" / "hosted_cells.py").read_text())
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb.cells[0].source = nb.cells[0].source.replace("/blob/main/", "/blob/old/")
    nbformat.write(nb, tmp_path / "notebooks" / NOTEBOOKS[0].name)
    r = subprocess.run([sys.executable, str(tmp_path / "scripts" / "hosted_cells.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and NOTEBOOKS[0].name in r.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_set_up_cell_does_nothing_locally(path, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"{path.name}: the set-up cell ran {a}"))
    exec(compile(_setup_source(path), path.name, "exec"), {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_set_up_cell_in_a_hosted_runtime_installs_without_touching_torch(path, monkeypatch):
    calls, enabled = [], []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: enabled.append(True))
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: calls.append(cmd))
    exec(compile(_setup_source(path), path.name, "exec"), {})
    assert calls and all(c[:4] == [sys.executable, "-m", "pip", "install"] for c in calls)
    package = [c for c in calls if any("advcl-lite @ git+https://github.com/" in a for a in c)]
    assert len(package) == 1 and "--no-deps" in package[0]     # the runtime's torch/torchvision/numpy stay
    named = " ".join(a for c in calls for a in c[4:])
    for pinned in ("torch", "torchvision", "numpy"):
        assert f" {pinned}" not in f" {named}" and f"{pinned}=" not in named, named
    assert enabled == [True]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_every_notebook_prints_its_device_after_the_imports(path):
    """One set-up helper (tour.notebook_setup: the preset, the device line, the seeds) right after the imports."""
    setup = _cells(path)[3].source
    assert "P, device, work_dir = notebook_setup(preset, device, work_dir)" in setup, path.name
    assert setup.index("notebook_setup(preset") > setup.index("from advcl_lite.tour import notebook_setup")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_no_code_cell_but_the_parameters_names_a_preset(path):
    """What a preset changes lives in the preset (advcl-lite presets, --set), not in a cell that branches on its name."""
    import ast
    from advcl_lite.presets import PRESETS
    for i, cell in enumerate(_cells(path)):
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or "parameters" in tags or "hosted-setup" in tags:
            continue
        named = [n.value for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Constant) and n.value in PRESETS]
        assert not named, f"{path.name} cell {i} names the preset(s) {named}; make it a preset field instead"


def test_notebook_01_prints_the_device_line(run_nb):
    out = nbformat.read(run_nb.output("01"), as_version=4)
    text = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "device: cpu" in text


def test_radius_slider_of_notebook_01_never_reaches_zero():
    """r = 0 empties the disk: the "HFC" would be the whole image, not zero-mean as the text says."""
    cell = next(c for c in _cells(NOTEBOOKS[0]) if "radius_slider = IntSlider(" in c.source)
    line = next(line for line in cell.source.split("\n") if line.startswith("radius_slider = IntSlider("))
    assert "min=1" in line and "min=0" not in line
