"""The tour runner: record(), finding notebooks, running them with papermill, the summary, failures."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from advcl_lite import tour
from advcl_lite.cli import main
from advcl_lite.tour import NotebookError, find_notebook, list_notebooks, record, run_notebook, run_tour

PARAMS = 'preset = "quick"\ndata = "sample"\nwork_dir = "advcl-runs"\ndevice = "auto"'


def write_nb(path: Path, *sources: str) -> Path:
    """A notebook: title, parameters cell, then one code cell per source."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"),
                nbformat.v4.new_code_cell(PARAMS, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


# --------------------------------------------------------------------------- record()

def test_record_without_a_runner_stays_in_process(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(tour.RECORD_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert record("answer", 42) is None
    assert tour.recorded()["answer"] == 42
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr() == ("", "")


def test_record_writes_json_values_to_the_runner_file(monkeypatch, tmp_path):
    f = tmp_path / "deep" / "nb.records.json"
    monkeypatch.setenv(tour.RECORD_ENV, str(f))
    record("x", torch.tensor(0.25))
    record("v", torch.arange(3))
    record("n", np.float32(1.5))
    record("d", {"a": (1, 2), 3: Path("p")})
    record("x", 0.5)                          # a second record replaces the value
    assert json.loads(f.read_text()) == {"x": 0.5, "v": [0, 1, 2], "n": 1.5, "d": {"a": [1, 2], "3": "p"}}
    assert not [p for p in f.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(TypeError, match=r"record\('bad', \.\.\.\): cannot store a object"):
        record("bad", object())
    with pytest.raises(ValueError, match="non-empty string name"):
        record("", 1)


# --------------------------------------------------------------------------- finding notebooks

def test_list_and_find_notebooks(monkeypatch, tmp_path):
    nbs = list_notebooks()
    assert nbs[0].name == "01_frequency_views.ipynb" and nbs == sorted(nbs)
    assert find_notebook("01") == find_notebook("1") == find_notebook("01_frequency_views") == nbs[0]
    assert find_notebook(str(nbs[0])) == nbs[0]
    with pytest.raises(ValueError, match=r"no notebook called '42'; available: 01_frequency_views"):
        find_notebook("42")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_notebook(str(tmp_path / "missing.ipynb"))
    # ADVCL_NOTEBOOKS points elsewhere; only NN_name notebooks are tour stages, in order
    for name in ("02_b", "01_a", "scratch"):
        write_nb(tmp_path / f"{name}.ipynb")
    monkeypatch.setenv(tour.NOTEBOOKS_ENV, str(tmp_path))
    assert [p.name for p in list_notebooks()] == ["01_a.ipynb", "02_b.ipynb"]
    assert [p.stem for p in tour.select_notebooks("2")] == ["02_b"]
    monkeypatch.setenv(tour.NOTEBOOKS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="ADVCL_NOTEBOOKS=.*is not a directory"):
        list_notebooks()


# --------------------------------------------------------------------------- running

def test_notebook_01_records_sane_values(run_nb):
    r = run_nb("01")
    assert r["image_size"] == 32 and r["radius"] == 8 and r["bins_removed"] == 193
    assert r["reconstruction_max_abs_error"] < 1e-5 and r["hfc_max_abs_channel_mean"] < 1e-5
    by_r = [r["lfc_energy_fraction_by_radius"][k] for k in ("2", "4", "8", "12", "16")]
    assert by_r == sorted(by_r) and 0 < by_r[0] and by_r[-1] < 1
    # natural images: far more energy inside the disk than its 192 / 1023 share of non-DC bins
    assert r["lfc_energy_fraction"] == by_r[2] and 0.6 < r["lfc_energy_fraction"] < 0.995
    assert abs(r["noise_hfc_energy_fraction"] - (1 - 192 / 1023)) < 0.02
    assert -4 < r["spectrum_loglog_slope"] < -1
    assert 0 < r["seconds"] < r["_seconds"]


def test_failing_notebooks_summary_and_runner_error(monkeypatch, tmp_path):
    """A fake tour: 01 records a value, 02 fails in its cell 3, 03 is not run; the summary says so."""
    write_nb(tmp_path / "nbs" / "01_ok.ipynb",
             "from advcl_lite.tour import record\nrecord('preset_seen', preset)\nrecord('pi', 3.14159)",
             "import pathlib\nrecord('work_dir_exists', pathlib.Path(work_dir).is_dir())")
    write_nb(tmp_path / "nbs" / "02_broken.ipynb", "x = 1", "raise KeyError('missing_thing')")
    write_nb(tmp_path / "nbs" / "03_after.ipynb", "y = 2")
    monkeypatch.setenv(tour.NOTEBOOKS_ENV, str(tmp_path / "nbs"))
    out = tmp_path / "out"
    with pytest.raises(NotebookError, match=r"notebook 02_broken failed in cell 3 .*raise KeyError.*: KeyError: 'missing_thing'") as e:
        run_tour("smoke", out, timeout=300, figures=False)
    assert e.value.notebook == "02_broken" and e.value.cell == 3
    assert (out / "02_broken.ipynb").exists() and (out / "01_ok.ipynb").exists()
    assert json.loads((out / "01_ok.records.json").read_text()) == \
        {"preset_seen": "smoke", "pi": 3.14159, "work_dir_exists": True}
    summary = json.loads((out / "summary.json").read_text())
    assert [(n["notebook"], n["status"]) for n in summary["notebooks"]] == \
        [("01_ok", "ok"), ("02_broken", "failed"), ("03_after", "not run")]
    assert summary["preset"] == "smoke" and "02_broken" in summary["failure"]
    md = (out / "SUMMARY.md").read_text()
    assert "preset `smoke`" in md and "| 01_ok | ok |" in md and "`pi` = 3.142" in md
    assert "| 02_broken | failed |" in md and "| 03_after | not run |" in md and "## Failure" in md


def write_nb_with(path: Path, params: str, *sources: str) -> Path:
    """Like write_nb, with another parameters cell."""
    write_nb(path, *sources)
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = params
    nbformat.write(nb, path)
    return path


def test_encoders_reach_only_the_notebooks_that_declare_them_and_the_headline_leads_the_summary(monkeypatch, tmp_path):
    write_nb(tmp_path / "nbs" / "01_plain.ipynb", "from advcl_lite.tour import record\nrecord('x', 1)")
    write_nb_with(tmp_path / "nbs" / "02_enc.ipynb", PARAMS + '\nencoders = "auto"',
                  "from advcl_lite.tour import record\nrecord('encoders_seen', encoders)\n"
                  "record('headline', ['ACL keeps more RA than SimCLR'])")
    monkeypatch.setenv(tour.NOTEBOOKS_ENV, str(tmp_path / "nbs"))
    assert tour.declared_parameters("01") == ["preset", "data", "work_dir", "device"]
    assert tour.declared_parameters("02")[-1] == "encoders"
    out = tmp_path / "out"
    run_tour("smoke", out, timeout=300, figures=False, encoders="pretrained")
    assert json.loads((out / "02_enc.records.json").read_text())["encoders_seen"] == "pretrained"
    injected = [c for c in nbformat.read(out / "01_plain.ipynb", as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "encoders =" not in injected[0].source       # 01 has no such parameter: not passed
    md = (out / "SUMMARY.md").read_text()
    assert md.index("## Headline") < md.index("| notebook |") and "- ACL keeps more RA than SimCLR" in md
    assert "Encoders of notebooks 03-05: the shipped set" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["encoders"] == "pretrained" and summary["headline"] == ["ACL keeps more RA than SimCLR"]
    with pytest.raises(ValueError, match="encoders='best' is not one of"):
        run_tour("smoke", out, encoders="best")


@pytest.mark.slow
def test_cell_timeout_names_the_cell(tmp_path):
    nb = write_nb(tmp_path / "01_sleepy.ipynb", "import time", "time.sleep(60)")
    with pytest.raises(NotebookError, match=r"01_sleepy failed in cell 3 .*'time.sleep\(60\)'.*CellTimeoutError"):
        run_notebook(nb, tmp_path / "out", timeout=5, figures=False)


@pytest.mark.slow
def test_cli_tour_only_01_writes_the_summary(tmp_path, capsys):
    out = tmp_path / "tour-out"
    assert main(["tour", "--preset", "smoke", "--only", "01", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[1/1] 01_frequency_views" in printed and " ok " in printed
    md = (out / "SUMMARY.md").read_text()
    assert "| 01_frequency_views | ok |" in md and "`bins_removed` = 193" in md
    executed = nbformat.read(out / "01_frequency_views.ipynb", as_version=4)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in executed.cells if c.cell_type == "code" for o in c.outputs), "figures are embedded"


@pytest.mark.slow
def test_quick_tour_shows_robustness_transfer_with_the_shipped_encoders(tmp_path):
    """The quick tour (about 9 minutes on 2 CPU cores, BENCHMARKS.md): SLF RA of ACL and AdvCL above SimCLR's
    and the random encoder's, with 95 % intervals that do not overlap, stated first in SUMMARY.md."""
    out = tmp_path / "tour-quick"
    results = run_tour("quick", out, figures=False)
    assert [r["status"] for r in results] == ["ok"] * len(results)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["encoders"] == "pretrained"
    rows = {r["method"]: r for r in results[3]["records"]["results"]}
    for robust in ("ACL", "AdvCL"):
        for weak in ("SimCLR", "Random init"):
            assert rows[robust]["ra_ci"][0] > rows[weak]["ra_ci"][1], (robust, weak)
            assert f"SLF: {robust} RA" in " ".join(summary["headline"])
    md = (out / "SUMMARY.md").read_text()
    assert md.index("## Headline") < md.index("## Notebooks") and "ACL is more robust" in md
