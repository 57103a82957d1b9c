"""Packaging: environment.yml and pyproject.toml agree, the notebooks are stored clean, CI runs the README."""
from __future__ import annotations

import ast
import json
import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from advcl_lite.tour import list_notebooks

ROOT = Path(__file__).resolve().parents[1]
PARAMETERS = {"preset": "quick", "data": "sample", "work_dir": "advcl-runs", "device": "auto"}
# notebooks that finetune or analyse encoders also take the encoders switch (shipped set or trained)
EXTRA_PARAMETERS = {"03": {"encoders": "auto"}, "04": {"encoders": "auto"}, "05": {"encoders": "auto"},
                    "06": {"train_here": "auto"}}   # 06 trains DynACL only where asked (not at quick)
INSTALL = 'python -m pip install -e ".[test]" -c constraints.txt && advcl-lite tour --preset smoke --out tour-out'
TEST = "python -m pytest -q -n auto"


def requirement(line: str) -> tuple[str, str]:
    """('torch', '<2.15,>=2.2'): canonical name and sorted specifiers, for comparing requirement lists."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*", line)
    assert m, f"cannot parse requirement {line!r}"
    name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    spec = ",".join(sorted(s.replace(" ", "") for s in m.group(3).split(",") if s.strip()))
    return name, spec


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_pins_the_same_dependencies_as_pyproject(pyproject):
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(re.fullmatch(r"python=3\.1\d", d) for d in conda) and "pip" in conda
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip) == 1
    lines = pip[0]["pip"]
    assert "-e ." in lines, "environment.yml installs the package itself"
    reqs = [requirement(l) for l in lines if not l.startswith("-")]
    wanted = [requirement(l) for l in pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["test"]]
    assert len(reqs) == len(set(reqs)), "a package is listed twice in environment.yml"
    missing = sorted(set(wanted) - set(reqs))
    extra = sorted(set(reqs) - set(wanted))
    assert not missing and not extra, f"environment.yml drifted from pyproject.toml: missing {missing}, extra {extra}"


def test_pyproject_declares_the_cli_and_the_embedded_data(pyproject):
    assert pyproject["project"]["scripts"]["advcl-lite"] == "advcl_lite.cli:main"
    for pattern in pyproject["tool"]["setuptools"]["package-data"]["advcl_lite"]:
        assert list((ROOT / "advcl_lite").glob(pattern)), f"package data {pattern} matches no file"
    assert "slow" in " ".join(pyproject["tool"]["pytest"]["ini_options"]["markers"])


def all_notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_tour_lists_every_notebook_in_order():
    nbs = all_notebooks()
    assert nbs and nbs[0].name == "01_frequency_views.ipynb"
    assert list_notebooks() == nbs, "every notebook is named NN_topic.ipynb, so the tour runs all of them"


@pytest.mark.parametrize("path", all_notebooks(), ids=lambda p: p.stem)
def test_notebook_is_stored_clean_with_one_parameters_cell(path):
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", "use the generic python3 kernel"
    cells = nb["cells"]
    for i, c in enumerate(cells):
        if c["cell_type"] == "code":
            assert c.get("outputs") == [], f"cell {i} of {path.name} has stored outputs; clear them"
            assert c.get("execution_count") is None, f"cell {i} of {path.name} has an execution count"
    first = "".join(cells[0]["source"]).split("\n")
    assert cells[0]["cell_type"] == "markdown" and first[0].startswith("[![Open in Colab]") and first[2].startswith("# "), \
        "a notebook starts with its hosted-runtime badge, then its title (scripts/hosted_cells.py)"
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters', has {len(tagged)}"
    cell = cells[tagged[0]]
    assert cell["cell_type"] == "code"
    tree = ast.parse("".join(cell["source"]))
    assigned = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f"the parameters cell of {path.name} holds only plain assignments"
        assigned[node.targets[0].id] = ast.literal_eval(node.value)
    expected = {**PARAMETERS, **EXTRA_PARAMETERS.get(path.name[:2], {})}
    assert assigned == expected, f"the parameters cell of {path.name} must be exactly {expected}"
    text = path.read_text()
    assert "sys.path" not in text, f"{path.name} edits sys.path; import the installed library instead"
    assert "!pip" not in text and "%pip" not in text


def test_ci_runs_exactly_the_readme_commands():
    run = ROOT / ".ci" / "run"
    assert os.access(run, os.X_OK), ".ci/run must be executable"
    script = run.read_text()
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script
    commands = [l.strip() for l in script.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert INSTALL in commands and any(c.startswith(TEST) for c in commands)
    assert commands.index(INSTALL) < [i for i, c in enumerate(commands) if c.startswith(TEST)][0]
    assert re.search(r'"\$status" -eq 5', script), "no tests collected (exit 5) must fail CI"
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md not written yet")
    text = readme.read_text()
    assert INSTALL in text and TEST in text, "README.md must quote the commands .ci/run executes, verbatim"


def test_the_version_comes_from_the_metadata_and_the_release_files_agree():
    """__version__ is the installed distribution's; CHANGELOG.md's newest release and CITATION.cff name it."""
    import importlib.metadata
    import re

    import advcl_lite
    root = Path(__file__).resolve().parents[1]
    assert advcl_lite.__version__ == importlib.metadata.version("advcl-lite")
    project = re.search(r'^version = "([^"]+)"', (root / "pyproject.toml").read_text(), re.M).group(1)
    newest = re.search(r"^## \[([^\]]+)\]", (root / "CHANGELOG.md").read_text(), re.M).group(1)
    cff = re.search(r"^version: (\S+)", (root / "CITATION.cff").read_text(), re.M).group(1)
    assert project == newest == cff


def test_constraints_txt_pins_the_installed_closure():
    """constraints.txt is the environment CI installed with it (the README's install line uses it): every
    package advcl_lite and its test extra pull in, at its installed version. It lags after a dependency
    change until `python scripts/constraints.py` rewrites it."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts" / "constraints.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    pins = [line for line in (root / "constraints.txt").read_text().splitlines() if "==" in line]
    names = {p.split("==")[0] for p in pins}
    assert {"torch", "torchvision", "papermill", "pytest-xdist", "pyautoattack"} <= names and len(pins) == len(names)
