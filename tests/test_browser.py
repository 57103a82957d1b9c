"""The notebooks in a real browser: JupyterLab in headless Chromium, Run All, every widget moved.

papermill (the tour, the other notebook tests) runs headless and skips the widgets, so a break in the
widget path — a missing frontend extension, an output that renders as ``interactive(children=...)``
text, an exception inside a callback — would pass everything else. Here scratch copies of the
notebooks with widgets (01; 03 and 05 on the shipped encoders) run at ``smoke`` in JupyterLab; the test asserts no error or
stderr output, every output image loaded, each widget rendered as a control, and that moving each
control (keys on a focused slider or dropdown, a mouse click on a button) changes its figure. The
negative control runs notebook 01 with the ipywidgets frontend extension disabled and asserts the
same check fails. Needs Debian's ``chromium``; skipped where it is absent, except where
``ADVCL_REQUIRE_BROWSER=1`` (``.ci/run`` sets it).
"""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from jupyterlab_browser import STATE, Browser, Lab, chromium_path, move_and_wait, run_all_and_check, widget_state

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CHROMIUM = chromium_path()
if CHROMIUM is None and os.environ.get("ADVCL_REQUIRE_BROWSER") == "1":
    raise RuntimeError("ADVCL_REQUIRE_BROWSER=1 but no Chromium was found; install Debian's chromium (apt-get install chromium)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium); "
                                                          ".ci/run installs it and sets ADVCL_REQUIRE_BROWSER=1")


def scratch_copy(name: str, folder: Path, work_dir: Path, **extra: str) -> str:
    """notebooks/<name>*.ipynb, with its parameters cell set to smoke, a scratch work_dir and ``extra``
    parameters, into ``folder``."""
    src = next(NOTEBOOKS.glob(f"{name}_*.ipynb"))
    nb = nbformat.read(src, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {"preset": "smoke", "work_dir": str(work_dir), **extra}
    params.source += "\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
    nbformat.write(nb, folder / src.name)
    return src.name


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    (root / "nb").mkdir()
    # 03 and 05 on the shipped encoders: the widgets are what is tested here, the training paths are
    # tested through papermill; this keeps each Run All to seconds
    names = {"01": scratch_copy("01", root / "nb", root / "runs")}
    names.update({n: scratch_copy(n, root / "nb", root / "runs", encoders="pretrained") for n in ("03", "05")})
    return root, names


@pytest.fixture(scope="module")
def lab_browser(scratch):
    root, _ = scratch
    lab = Lab(root / "nb", root / "private")
    browser = Browser(CHROMIUM, root / "profile")
    yield lab, browser
    browser.close()
    lab.close()


def _assert_clean(state: dict, name: str, widgets: int):
    assert state["problems"] == [], f"{name}: {state['problems']}"
    assert state["executed"] == state["cells"], f"{name}: {state['executed']} of {state['cells']} code cells ran"
    assert state["images"] > 0, f"{name}: no figure rendered"
    assert state["controls"] == widgets, f"{name}: {state['controls']} widgets rendered as controls, expected {widgets}"


def test_notebook_01_sliders_redraw_the_frequency_views(lab_browser, scratch):
    lab, browser = lab_browser
    name = scratch[1]["01"]
    state = run_all_and_check(browser, lab, name)
    _assert_clean(state, name, widgets=1)
    w = widget_state(browser, 0)
    assert {c["label"] for c in w["controls"]} >= {"radius r", "image"}, w
    before, after = move_and_wait(browser, 0, "slider", "radius r")
    radius = {c["label"]: c["value"] for c in after["controls"]}["radius r"]
    assert radius != {c["label"]: c["value"] for c in before["controls"]}["radius r"]
    move_and_wait(browser, 0, "slider", "image", presses=3)
    assert browser.js(STATE)["problems"] == []          # the callbacks raised nothing, printed nothing to stderr


def test_notebook_03_dropdown_redraws_the_clusters(lab_browser, scratch):
    lab, browser = lab_browser
    name = scratch[1]["03"]
    state = run_all_and_check(browser, lab, name)
    _assert_clean(state, name, widgets=1)
    before, after = move_and_wait(browser, 0, "dropdown", "K", text="5")     # K = 10 -> 50
    assert [c["value"] for c in before["controls"]] != [c["value"] for c in after["controls"]]
    assert browser.js(STATE)["problems"] == []


def test_notebook_05_explorer_runs_on_its_button_and_redraws(lab_browser, scratch):
    lab, browser = lab_browser
    name = scratch[1]["05"]
    state = run_all_and_check(browser, lab, name)
    _assert_clean(state, name, widgets=1)
    assert widget_state(browser, 0)["image"] is None     # interact_manual draws only when asked
    move_and_wait(browser, 0, "button")                   # "Run Interact": the first figure
    move_and_wait(browser, 0, "slider", "radius", presses=2, click_after=True)
    assert browser.js(STATE)["problems"] == []


def test_the_check_fails_without_the_widget_frontend(tmp_path):
    """Negative control: with the ipywidgets extension disabled, the same check reports the widget."""
    (tmp_path / "nb").mkdir()
    name = scratch_copy("01", tmp_path / "nb", tmp_path / "runs")
    lab = Lab(tmp_path / "nb", tmp_path / "private", widgets=False)
    browser = Browser(CHROMIUM, tmp_path / "profile")
    try:
        state = run_all_and_check(browser, lab, name)
    finally:
        browser.close()
        lab.close()
    assert state["controls"] == 0
    assert any("text repr" in p or "Error displaying widget" in p for p in state["problems"]), state["problems"]
