"""Shared test set-up.

* Headless, quiet, small: ``MPLBACKEND=agg``, ``ADVCL_PROGRESS=0``, one torch thread (restored after each
  test), and
  ``ADVCL_CACHE`` in a temporary folder for the whole session (nothing is written to ``~/.cache``).
* ``tour_dirs``: one ``(out_dir, work_dir)`` pair for the session, so that every notebook test
  shares the artifacts folder, as the tour does: a notebook that needs a SimCLR encoder loads the
  one an earlier notebook test trained instead of training it again. Set ``ADVCL_TEST_TOUR_DIR``
  to keep that folder between sessions (cached runs are reused only if their configuration matches).
* ``run_nb("01", **params)``: run a notebook at the ``smoke`` preset through
  :func:`advcl_lite.tour.run_notebook` in those folders and return its records; a second call with
  the same arguments in the same session returns the first result without running it again.
  ``run_nb.output("01", **params)`` is the executed copy.
* ``ADVCL_TOUR_OUT=DIR``: a folder of ``advcl-lite tour --preset smoke`` (``.ci/run`` sets it after its tour):
  ``run_nb`` with no extra parameters then reads that tour's records and executed notebook instead of
  executing the notebook again, and the notebook tests share its ``artifacts/``. Without it every notebook
  runs here, so a plain ``pytest`` still checks everything.
* Under ``pytest -n auto`` (pytest-xdist, ``--dist loadgroup``): the tests that execute notebooks share one
  worker (``xdist_group("notebooks")``, given to every test that takes ``run_nb``), so their artifacts are
  made once, as in the tour; every other test runs on the worker of its module's group.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["MPLBACKEND"] = "agg"
os.environ["ADVCL_PROGRESS"] = "0"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Back to one torch thread after every test (a benchmark test sets two): under ``pytest -n``, two workers
    with two spinning OpenMP threads each on two cores ran the tests after it up to 25 times slower."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("ADVCL_CACHE", str(tmp_path_factory.mktemp("advcl-cache")))
    yield
    mp.undo()


TOUR_ENV = "ADVCL_TOUR_OUT"


@pytest.hookimpl(tryfirst=True)      # before xdist reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """xdist groups (``pytest -n``): every test that executes notebooks (takes ``run_nb``) joins the group
    ``notebooks`` (one worker, one artifacts folder, as in the tour); every other test its module's group,
    so a module's fixtures are built once, on one worker, and its tests run in file order."""
    for item in items:
        if "run_nb" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("notebooks"))
        elif item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def _given_tour() -> tuple[Path, dict] | None:
    """The smoke tour named by ``ADVCL_TOUR_OUT`` and its summary, or None when the variable is unset."""
    value = os.environ.get(TOUR_ENV)
    if not value:
        return None
    tour = Path(value).resolve()
    try:
        summary = json.loads((tour / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise pytest.UsageError(f"{TOUR_ENV}={value}: no readable summary.json there ({e}); run "
                                f"`advcl-lite tour --preset smoke --out {value}` first, or unset {TOUR_ENV}")
    if summary.get("preset") != "smoke" or summary.get("data") != "sample":
        raise pytest.UsageError(f"{TOUR_ENV}={value} holds a tour at preset {summary.get('preset')!r}, data "
                                f"{summary.get('data')!r}; the notebook tests need --preset smoke --data sample")
    return tour, summary


@pytest.fixture(scope="session")
def tour_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """``(out_dir, work_dir)`` shared by all notebook tests of the session (``work_dir = out_dir/artifacts``);
    with ``ADVCL_TOUR_OUT``, that tour's folders."""
    given = _given_tour()
    keep = os.environ.get("ADVCL_TEST_TOUR_DIR")
    out = given[0] if given else (Path(keep).resolve() if keep else tmp_path_factory.mktemp("tour"))
    work = out / "artifacts"
    work.mkdir(parents=True, exist_ok=True)
    return out, work


@pytest.fixture(scope="session")
def run_nb(tour_dirs, tmp_path_factory):
    """``run_nb(name, **params) -> records``: execute notebook ``name`` (``"01"`` or a path) at ``smoke``.

    ``params`` are extra notebook parameters (``preset=`` overrides ``smoke``). Figures are not
    rendered (``agg``) to save time; each cell may take at most 15 minutes. With ``ADVCL_TOUR_OUT`` a call
    without parameters returns the tour's records (the notebook already ran there, at smoke); a call with
    parameters executes it, writing its copy outside the tour folder.
    """
    from advcl_lite.tour import find_notebook, run_notebook

    out, work = tour_dirs
    given = _given_tour()
    fresh_out = tmp_path_factory.mktemp("notebooks") if given else out
    done: dict[tuple, dict] = {}
    outputs: dict[tuple, Path] = {}

    def key_of(name, params):
        return str(name), tuple(sorted((k, repr(v)) for k, v in params.items()))

    def from_tour(name) -> dict | None:
        stem = find_notebook(name).stem
        row = next((r for r in given[1]["notebooks"] if r["notebook"] == stem), None)
        if row is None or row["status"] != "ok":
            raise pytest.UsageError(f"{TOUR_ENV}={given[0]}: notebook {stem} did not run ok in that tour "
                                    f"({row and row['status']}); rerun the tour or unset {TOUR_ENV}")
        return {**row["records"], "_seconds": row["seconds"]}

    def run(name: str, **params) -> dict:
        key = key_of(name, params)
        if key not in done:
            if given and not params:
                done[key] = from_tour(name)
                outputs[key] = out / f"{find_notebook(name).stem}.ipynb"
            else:
                done[key] = run_notebook(name, fresh_out, preset="smoke", data="sample", work_dir=work,
                                         parameters=params, timeout=900, figures=False)
                outputs[key] = fresh_out / f"{find_notebook(name).stem}.ipynb"
        return dict(done[key])

    def output(name: str, **params) -> Path:
        run(name, **params)
        return outputs[key_of(name, params)]

    run.output = output
    return run


@pytest.fixture(scope="module")
def real():
    """16 real test images of the embedded sample, float in [0, 1] (the frequency and viz tests)."""
    from advcl_lite.data import load_dataset
    x, _ = load_dataset("sample", "test").tensors(16)
    return x


@pytest.fixture(scope="module")
def tiny():
    """A width-4 ResNet-18 classifier at initialisation (the evaluate, results and viz tests)."""
    from advcl_lite.models import Classifier, ResNet18
    torch.manual_seed(0)
    return Classifier(ResNet18(4), 10).eval()


@pytest.fixture(scope="module")
def test_set():
    from advcl_lite.data import load_dataset
    return load_dataset("sample", "test")


@pytest.fixture(scope="module")
def ds64():
    """The 64 images a tiny smoke preset pretrains on (pretrain.pretrain_dataset with train_subset=64)."""
    from advcl_lite.presets import get_preset
    from advcl_lite.pretrain import pretrain_dataset
    return pretrain_dataset(get_preset("smoke", train_subset=64), "sample")


@pytest.fixture(scope="module")
def net4():
    from advcl_lite.models import ContrastiveNet
    torch.manual_seed(0)
    return ContrastiveNet(4).eval()


@pytest.fixture(scope="module")
def labels64(ds64, net4):
    from advcl_lite.pseudo_labels import make_pseudo_labels
    return make_pseudo_labels(net4, ds64, ks=(2, 5), seed=0, progress=False)

