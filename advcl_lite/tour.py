"""The guided tour: run the notebooks in order with papermill, record their key numbers.

Inside a notebook, :func:`record` stores a value that tests and the tour
summary read::

    from advcl_lite.tour import record
    record("lfc_energy_r8", 0.93)

Run by :func:`run_notebook`, the values go to the JSON file named by the
environment variable ``ADVCL_RECORD_FILE``; run interactively (no such
variable) they only land in an in-process dict (:func:`recorded`).

:func:`run_notebook` executes one notebook with papermill (kernel ``python3``,
working directory the output folder, ``ADVCL_PROGRESS=0``), injects
``preset``, ``data`` and ``work_dir`` into its ``parameters`` cell and returns
its records. :func:`run_tour` runs every notebook of ``notebooks/`` in order
with one shared artifacts folder, so a later notebook loads what an earlier
one trained, and writes ``SUMMARY.md`` and ``summary.json``. It is what
``advcl-lite tour`` calls.
"""
from __future__ import annotations

import ast
import json
import math
import os
import platform
import re
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from .checkpoint import run_lock, write_json
from .data import DataError
from .presets import GPU_PRESETS, PRESETS, get_preset
from .pretrained import resolve_encoders
from .runtime import HEADLESS_ENV, __version__, describe_device, resolve_device, seed_everything

RECORD_ENV = "ADVCL_RECORD_FILE"
NOTEBOOKS_ENV = "ADVCL_NOTEBOOKS"
KNOWN_DATA = ("sample", "cifar10", "cifar100", "stl10")

# a non-GUI backend that still embeds figures in the executed notebook ("agg" embeds none)
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"

_RECORDS: dict[str, Any] = {}


class NotebookError(RuntimeError):
    """A notebook failed to execute; the message names the notebook, the cell and the error."""

    def __init__(self, message: str, notebook: str, cell: int | None = None, output: Path | None = None):
        super().__init__(message)
        self.notebook = notebook
        self.cell = cell
        self.output = output


# --------------------------------------------------------------------------- record()

def _jsonable(value: Any, name: str) -> Any:
    """Plain JSON types from numbers, strings, lists, dicts, tensors, numpy values and paths."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v, name) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, name) for v in value]
    tolist = getattr(value, "tolist", None)        # torch.Tensor, numpy arrays and scalars
    if callable(tolist):
        return _jsonable(tolist(), name)
    raise TypeError(f"record({name!r}, ...): cannot store a {type(value).__name__}; "
                    f"record numbers, strings, lists or dicts (e.g. float(x), tensor.tolist())")


def record(name: str, value: Any) -> None:
    """Store ``value`` under ``name`` for the tests and the tour summary; returns nothing.

    ``value``: a number, string, list or dict of those (tensors and numpy values
    are converted with ``.tolist()``). Recording a name again replaces its value.
    Under :func:`run_notebook` the value is also written to the JSON file named by
    ``$ADVCL_RECORD_FILE``; interactively it stays in this process (:func:`recorded`).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"record() needs a non-empty string name, got {name!r}")
    value = _jsonable(value, name)
    _RECORDS[name] = value
    target = os.environ.get(RECORD_ENV)
    if target:
        path = Path(target)
        data = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
        data[name] = value
        write_json(path, data)


def recorded() -> dict[str, Any]:
    """A copy of the values recorded in this process."""
    return dict(_RECORDS)


# --------------------------------------------------------------------------- finding notebooks

def notebooks_dir() -> Path:
    """The folder holding the tour notebooks: ``$ADVCL_NOTEBOOKS``, else ``notebooks/`` of the checkout
    this package is installed (editable) from."""
    env = os.environ.get(NOTEBOOKS_ENV)
    if env:
        d = Path(env).expanduser()
        if not d.is_dir():
            raise FileNotFoundError(f"{NOTEBOOKS_ENV}={env!r} is not a directory; point it at the notebooks/ "
                                    f"folder of an advcl_lite checkout, or unset it")
        return d.resolve()
    here = Path(__file__).resolve().parent
    d = here.parent / "notebooks"
    if d.is_dir():
        return d
    raise FileNotFoundError(
        f"no notebooks/ folder next to the installed package ({here}); the tour needs a checkout of the "
        f"repository: clone it and `python -m pip install -e .`, or set {NOTEBOOKS_ENV}=/path/to/notebooks")


def list_notebooks(folder: str | os.PathLike | None = None) -> list[Path]:
    """The tour notebooks (``NN_name.ipynb``) in order; ``folder`` defaults to :func:`notebooks_dir`."""
    d = Path(folder) if folder is not None else notebooks_dir()
    return sorted(p for p in d.glob("*.ipynb") if re.match(r"\d+_", p.name))


def _match(token: str, notebooks: Sequence[Path]) -> Path:
    tok = token.strip().removesuffix(".ipynb")
    if tok.isdigit():
        tok = tok.zfill(2)
    hits = [p for p in notebooks if p.stem == tok or p.stem.startswith(tok + "_")]
    if len(hits) != 1:
        names = ", ".join(p.stem for p in notebooks) or "(none)"
        what = "no notebook" if not hits else "several notebooks"
        raise ValueError(f"{what} called {token!r}; available: {names}")
    return hits[0]


def find_notebook(notebook: str | os.PathLike) -> Path:
    """A notebook by path, or by name (``"01"``, ``"1"``, ``"01_frequency_views"``) in :func:`notebooks_dir`."""
    p = Path(notebook)
    if p.suffix == ".ipynb" or p.parent != Path("."):
        if not p.is_file():
            raise FileNotFoundError(f"notebook {str(p)!r} does not exist")
        return p.resolve()
    return _match(str(notebook), list_notebooks())


# --------------------------------------------------------------------------- running one notebook

@contextmanager
def _quiet_executor() -> Iterator[None]:
    """Silence papermill's and nbclient's own log lines (e.g. "Timeout waiting for execute reply") while a
    notebook runs: a failure is reported once, by the tour's ``error:`` line."""
    import logging

    loggers = [logging.getLogger(n) for n in ("papermill", "nbclient", "traitlets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the kernel papermill starts (it inherits them), then restore."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _resolve_data(data: str) -> str:
    """Known dataset names pass through; a path is made absolute (the kernel runs in the output folder)."""
    if str(data) in KNOWN_DATA:
        return str(data)
    p = Path(data).expanduser()
    if not p.exists():
        raise DataError(f"data {str(data)!r} is neither one of {', '.join(KNOWN_DATA)} nor an existing "
                        f"ImageFolder directory or zip")
    return str(p.resolve())


_PAPERMILL_TAGS = ("papermill-error-cell-tag", "injected-parameters")


def _failed_cell(output: Path) -> tuple[int | None, str]:
    """Where execution stopped, from papermill's cell metadata in the executed copy.

    The cell marked failed, else (timeouts, a dead kernel) the last cell that started.
    Returns its index in the *source* notebook (papermill's inserted cells not counted)
    and a description with its execution count and first source line.
    """
    try:
        import nbformat
        nb = nbformat.read(output, as_version=4)
    except Exception:  # noqa: BLE001 - the output may not have been written at all
        return None, ""
    cells = [c for c in nb.cells
             if not any(t in c.get("metadata", {}).get("tags", []) for t in _PAPERMILL_TAGS)]
    state = [c.get("metadata", {}).get("papermill", {}) for c in cells]
    failed = [i for i, m in enumerate(state) if m.get("status") in ("failed", "running")]
    started = [i for i, m in enumerate(state) if m.get("start_time")]
    if failed:
        i = failed[0]
    elif started:
        i = started[-1]
    else:
        return None, ""
    first = (cells[i].source.strip().splitlines() or [""])[0][:80]
    count = cells[i].get("execution_count")
    return i, f"cell {i}" + (f" [In {count}]" if count else "") + f" ({first!r})"


def run_notebook(notebook: str | os.PathLike, out_dir: str | os.PathLike, preset: str = "smoke",
                 data: str = "sample", work_dir: str | os.PathLike | None = None,
                 parameters: dict[str, Any] | None = None, timeout: int | None = None,
                 figures: bool = True) -> dict[str, Any]:
    """Execute one notebook with papermill and return the values it recorded (plus ``"_seconds"``).

    ``notebook``: ``"01"``, ``"01_frequency_views"`` or a path. The executed copy is written to
    ``out_dir/<name>.ipynb`` and its records to ``out_dir/<name>.records.json``. Injected
    parameters: ``preset``, ``data``, ``work_dir`` (default ``out_dir/artifacts``, absolute) and
    ``parameters``. The kernel runs in ``out_dir`` with ``ADVCL_PROGRESS=0``; ``timeout`` is per cell
    (seconds). ``figures=False`` uses matplotlib's ``agg`` backend (faster; the executed copy then
    holds no images), ``True`` the inline backend (no GUI either; figures are embedded).

    Raises :class:`NotebookError` naming the notebook, the failing cell and the error.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    nb_path = find_notebook(notebook)
    name = nb_path.stem
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir).expanduser().resolve() if work_dir is not None else out / "artifacts"
    work.mkdir(parents=True, exist_ok=True)
    output = out / f"{name}.ipynb"
    records_file = out / f"{name}.records.json"
    records_file.unlink(missing_ok=True)
    params = {"preset": str(preset), "data": _resolve_data(data), "work_dir": str(work), **(parameters or {})}
    # ADVCL_HEADLESS: no frontend will ever answer a widget, and ipywidgets' interact can leave
    # papermill/nbclient waiting forever (nbclient issue 312, papermill issue 723): viz.widget skips it
    env = {"MPLBACKEND": INLINE_BACKEND if figures else "agg", "ADVCL_PROGRESS": "0", RECORD_ENV: str(records_file),
           HEADLESS_ENV: "1"}
    t0 = time.perf_counter()
    try:
        with _environ(**env), _quiet_executor():
            pm.execute_notebook(str(nb_path), str(output), parameters=params, kernel_name="python3", language="python",
                                cwd=str(out), progress_bar=False, execution_timeout=timeout, start_timeout=180,
                                extra_arguments=["--IPKernelApp.log_level=CRITICAL"])   # no kernel log lines in our output
    except PapermillExecutionError as e:
        idx, where = _failed_cell(output)
        where = where or f"cell {e.cell_index} of the executed copy"
        raise NotebookError(f"notebook {name} failed in {where}: {e.ename}: {e.evalue} "
                            f"(traceback in {output})", name, idx, output) from None
    except Exception as e:  # noqa: BLE001 - timeouts, dead kernels, missing kernels
        idx, where = _failed_cell(output)
        where = f"in {where}" if where else "before any cell ran"
        raise NotebookError(f"notebook {name} failed {where}: {type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0][:300]} (executed copy: {output})",
                            name, idx, output) from None
    seconds = time.perf_counter() - t0
    records = json.loads(records_file.read_text()) if records_file.exists() else {}
    records["_seconds"] = seconds
    return records


# --------------------------------------------------------------------------- the tour

def declared_parameters(notebook: str | os.PathLike) -> list[str]:
    """The names assigned in a notebook's ``parameters`` cell (papermill warns on any other name)."""
    nb = json.loads(find_notebook(notebook).read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell.get("source", [])))
            return [t.id for node in tree.body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)]
    return []


def select_notebooks(only: str | Sequence[str] | None = None) -> list[Path]:
    """All tour notebooks, or those named in ``only`` (``"01,02"`` or a list), in tour order."""
    nbs = list_notebooks()
    if not nbs:
        raise FileNotFoundError(f"no NN_name.ipynb notebooks in {notebooks_dir()}")
    if only is None or only == "":
        return nbs
    tokens = [t for t in (only.split(",") if isinstance(only, str) else only) if str(t).strip()]
    chosen = {_match(str(t), nbs) for t in tokens}
    return [p for p in nbs if p in chosen]


def _fmt(value: Any, width: int = 60) -> str:
    """A short text form of a recorded value for the summary table."""
    if isinstance(value, bool) or value is None:
        s = str(value)
    elif isinstance(value, int):
        s = str(value)
    elif isinstance(value, float):
        s = f"{value:.4g}" if math.isfinite(value) else str(value)
    elif isinstance(value, str):
        s = value
    elif isinstance(value, list):
        s = "[" + ", ".join(_fmt(v, width) for v in value[:6]) + (", ..." if len(value) > 6 else "") + "]"
    elif isinstance(value, dict):
        s = "{" + ", ".join(f"{k}: {_fmt(v, width)}" for k, v in list(value.items())[:6]) + (", ..." if len(value) > 6 else "") + "}"
    else:
        s = str(value)
    s = s.replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= width else s[: width - 3] + "..."


def write_summary(results: list[dict[str, Any]], out_dir: str | os.PathLike, preset: str, data: str,
                  seconds: float, failure: str | None = None, encoders: str | None = None) -> Path:
    """Write ``SUMMARY.md`` (one page) and ``summary.json`` into ``out_dir``; return the markdown path.

    A notebook that records ``headline`` (a list of sentences) puts them under "Headline", first."""
    import torch


    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    desc = PRESETS[preset].description if preset in PRESETS else ""
    lines = [f"# advcl-lite tour: preset `{preset}`, data `{data}`", "",
             f"{when} · advcl_lite {__version__} · torch {torch.__version__} · Python {platform.python_version()} · "
             f"{os.cpu_count()} CPUs · total {seconds:.1f} s", ""]
    if desc:
        lines += [f"Preset `{preset}`: {desc}", ""]
    if encoders:
        what = {"pretrained": "the shipped set (advcl-lite pretrained list)", "train": "trained at this preset"}
        lines += [f"Encoders of notebooks 03-05: {what.get(encoders, f'the imported encoders of {encoders}')}.", ""]
    headline = [h for r in results for h in ((r.get("records") or {}).get("headline") or [])]
    if headline:
        lines += ["## Headline", ""] + [f"- {h}" for h in headline] + ["", "## Notebooks", ""]
    lines += ["| notebook | status | seconds | key numbers |", "| --- | --- | ---: | --- |"]
    for r in results:
        recs = {k: v for k, v in (r.get("records") or {}).items() if not k.startswith("_")}
        nums = "<br>".join(f"`{k}` = {_fmt(v)}" for k, v in list(recs.items())[:8])
        if len(recs) > 8:
            nums += f"<br>... {len(recs) - 8} more in summary.json"
        secs = f"{r['seconds']:.1f}" if r.get("seconds") is not None else ""
        lines.append(f"| {r['notebook']} | {r['status']} | {secs} | {nums} |")
    lines.append("")
    if failure:
        lines += ["## Failure", "", failure, ""]
    lines += ["Executed notebooks (with their outputs) are beside this file; trained artifacts are in "
              "`artifacts/` and are reused by the next run with the same preset.", ""]
    md = out / "SUMMARY.md"
    md.write_text("\n".join(lines))
    write_json(out / "summary.json", {"preset": preset, "data": data, "encoders": encoders, "headline": headline,
                                       "finished": when, "seconds": seconds,
                                       "advcl_lite": __version__, "torch": torch.__version__,
                                       "python": platform.python_version(), "failure": failure,
                                       "notebooks": results})
    return md


def run_tour(preset: str = "smoke", out_dir: str | os.PathLike = "tour-out", data: str = "sample",
             only: str | Sequence[str] | None = None, timeout: int | None = None,
             figures: bool = True, encoders: str = "auto") -> list[dict[str, Any]]:
    """Run the tour notebooks in order into ``out_dir`` (shared ``out_dir/artifacts``) and summarise.

    ``encoders`` is passed to every notebook's ``encoders`` parameter (see
    :func:`advcl_lite.pretrained.resolve_encoders`): ``"auto"`` uses the shipped encoders at
    ``quick`` and trains them at every other preset.

    Prints one line per notebook with its time. Returns one dict per notebook
    (``notebook``, ``status`` "ok" / "failed" / "not run", ``seconds``, ``records``, ``output``).
    On a failure the remaining notebooks are not run, the summary is still
    written, and the :class:`NotebookError` is raised.
    """
    get_preset(preset)                                   # unknown preset: a clear error before any kernel starts
    how = resolve_encoders(encoders, preset)             # a bad value: a clear error before any kernel starts
    data = _resolve_data(data)
    nbs = select_notebooks(only)
    out = Path(out_dir).expanduser().resolve()
    with run_lock(out):      # a second tour into the same folder is refused before it runs anything
        return _run_tour(preset, out, data, nbs, how, encoders, timeout, figures)


def _run_tour(preset, out: Path, data, nbs, how, encoders, timeout, figures) -> list[dict[str, Any]]:
    work = out / "artifacts"
    print(f"advcl-lite tour: preset {preset}, data {data}, encoders {how}, {len(nbs)} notebook(s) -> {out}",
          flush=True)
    results: list[dict[str, Any]] = []
    error: NotebookError | None = None
    t_all = time.perf_counter()
    for i, nb in enumerate(nbs, 1):
        if error is not None:
            results.append({"notebook": nb.stem, "status": "not run", "seconds": None, "records": {}, "output": None})
            continue
        print(f"[{i}/{len(nbs)}] {nb.stem:<28} ", end="", flush=True)
        t0 = time.perf_counter()
        try:
            recs = run_notebook(nb, out, preset=preset, data=data, work_dir=work, timeout=timeout, figures=figures,
                                parameters={"encoders": encoders} if "encoders" in declared_parameters(nb) else None)
        except NotebookError as e:
            secs = time.perf_counter() - t0
            print(f"FAILED after {secs:.1f} s", flush=True)
            error = e
            results.append({"notebook": nb.stem, "status": "failed", "seconds": secs, "cell": e.cell,
                            "error": str(e), "records": {}, "output": str(e.output) if e.output else None})
            continue
        secs = recs.pop("_seconds")
        print(f"ok {secs:7.1f} s", flush=True)
        results.append({"notebook": nb.stem, "status": "ok", "seconds": secs, "records": recs,
                        "output": str(out / f"{nb.stem}.ipynb")})
    total = time.perf_counter() - t_all
    md = write_summary(results, out, preset, data, total, failure=str(error) if error else None, encoders=how)
    print(f"summary: {md} ({total:.1f} s)", flush=True)
    if error is not None:
        raise error
    return results


def notebook_setup(preset: str, device="auto", work_dir="advcl-runs"):
    """What every notebook's set-up cell starts with: the preset (``print(P)`` or ``advcl-lite presets`` shows every
    setting), the device (cuda > mps > cpu, ``ADVCL_DEVICE`` overrides "auto"), printed with how to get a GPU where
    the preset needs one, the seeds, and the work folder. Returns ``(P, device, work_dir)``."""
    P = get_preset(preset)
    device = resolve_device(device)
    print(describe_device(device, wants_gpu=P.name in GPU_PRESETS))
    seed_everything(P.seed)
    return P, device, Path(work_dir)
