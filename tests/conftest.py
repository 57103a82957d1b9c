"""Shared test set-up.

* Headless, quiet, small: ``MPLBACKEND=agg``, ``ADVCL_PROGRESS=0``, one torch thread, and
  ``ADVCL_CACHE`` in a temporary folder for the whole session (nothing is written to ``~/.cache``).
* ``tour_dirs``: one ``(out_dir, work_dir)`` pair for the session, so that every notebook test
  shares the artifacts folder, as the tour does: a notebook that needs a SimCLR encoder loads the
  one an earlier notebook test trained instead of training it again. Set ``ADVCL_TEST_TOUR_DIR``
  to keep that folder between sessions (cached runs are reused only if their configuration matches).
* ``run_nb("01", **params)``: run a notebook at the ``smoke`` preset through
  :func:`advcl_lite.tour.run_notebook` in those folders and return its records; a second call with
  the same arguments in the same session returns the first result without running it again.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ["MPLBACKEND"] = "agg"
os.environ["ADVCL_PROGRESS"] = "0"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("ADVCL_CACHE", str(tmp_path_factory.mktemp("advcl-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tour_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """``(out_dir, work_dir)`` shared by all notebook tests of the session (``work_dir = out_dir/artifacts``)."""
    keep = os.environ.get("ADVCL_TEST_TOUR_DIR")
    out = Path(keep).resolve() if keep else tmp_path_factory.mktemp("tour")
    work = out / "artifacts"
    work.mkdir(parents=True, exist_ok=True)
    return out, work


@pytest.fixture(scope="session")
def run_nb(tour_dirs):
    """``run_nb(name, **params) -> records``: execute notebook ``name`` (``"01"`` or a path) at ``smoke``.

    ``params`` are extra notebook parameters (``preset=`` overrides ``smoke``). Figures are not
    rendered (``agg``) to save time; each cell may take at most 15 minutes.
    """
    from advcl_lite.tour import run_notebook

    out, work = tour_dirs
    done: dict[tuple, dict] = {}

    def run(name: str, **params) -> dict:
        key = (str(name), tuple(sorted((k, repr(v)) for k, v in params.items())))
        if key not in done:
            done[key] = run_notebook(name, out, preset="smoke", data="sample", work_dir=work,
                                     parameters=params, timeout=900, figures=False)
        return dict(done[key])

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

