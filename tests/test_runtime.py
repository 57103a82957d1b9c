"""advcl_lite.runtime: the device line of the notebooks, progress bars in a real Jupyter kernel."""
from __future__ import annotations

import json

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from advcl_lite.presets import GPU_PRESETS, PRESETS
from advcl_lite.runtime import describe_device, progress_bar


def test_describe_device_advises_a_gpu_only_for_a_gpu_preset_on_a_cpu():
    cpu = torch.device("cpu")
    import platform

    from advcl_lite import __version__
    assert describe_device(cpu) == (f"device: cpu | advcl_lite {__version__}, torch {torch.__version__}, "
                                    f"{torch.get_num_threads()} CPU threads, Python {platform.python_version()}")
    advice = describe_device(cpu, wants_gpu=True)
    assert advice.startswith("device: cpu") and "Change runtime type > GPU" in advice and "\n" not in advice
    assert set(GPU_PRESETS) <= set(PRESETS) and "paper" in GPU_PRESETS and "quick" not in GPU_PRESETS


def test_progress_bar_outside_a_notebook_is_plain_tqdm(capsys):
    assert list(progress_bar(range(4), desc="count", progress=True)) == [0, 1, 2, 3]
    assert type(progress_bar(range(1), progress=True)).__module__.startswith("tqdm")


def _run_in_kernel(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    return nb


@pytest.fixture(scope="module")
def bar_outputs():
    # ADVCL_PROGRESS is off in the test environment (conftest); the bars are asked for explicitly
    nb = _run_in_kernel("from advcl_lite.runtime import progress_bar\n"
                        "for _ in progress_bar(range(3), desc='epoch', progress=True): pass\n"
                        "it = progress_bar(range(5), desc='cut short', progress=True)\n"
                        "for i in it:\n"
                        "    if i == 1: break\n"
                        "it.close()\n")
    return nb.cells[0].outputs


def test_finished_notebook_bars_are_saved_as_text_not_as_widgets(bar_outputs):
    """A saved notebook keeps no widget of a closed bar (reopened, it would say "model not found")."""
    widget_outputs = [o for o in bar_outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_outputs == [], json.dumps(widget_outputs)[:300]
    texts = [o["data"]["text/plain"] for o in bar_outputs if o.get("output_type") == "display_data"]
    assert len(texts) == 2, bar_outputs
    assert texts[0].startswith("epoch: 3/3 in ")
    assert texts[1].startswith("cut short: stopped at 1/5 in ") or texts[1].startswith("cut short: stopped at 2/5 in ")


def test_a_long_stage_announces_its_time_and_a_short_one_stays_quiet(capsys, monkeypatch):
    from advcl_lite.runtime import announce_eta
    monkeypatch.delenv("ADVCL_PROGRESS", raising=False)
    assert announce_eta("SLF: 5 epoch(s)", 2.0, 100, progress=True) == 200.0
    out = capsys.readouterr().out
    assert "SLF: 5 epoch(s): about 3 min on this machine (100 steps, the first took 2.0 s)" in out
    announce_eta("quick", 0.1, 100, progress=True)          # 10 s: under the threshold
    announce_eta("quiet", 2.0, 100, progress=False)         # progress off
    assert capsys.readouterr().out == ""
    announce_eta("AFF at width 64", 30.0, 400, progress=True)
    assert "about 3.3 h" in capsys.readouterr().out
