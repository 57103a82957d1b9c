"""The advcl-lite command: expected mistakes print one `error:` line and exit 2, never a traceback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from advcl_lite.cli import build_parser, main


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(rc: int, err: str, *fragments: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture
def corrupt(tmp_path) -> Path:
    p = tmp_path / "bad.pt"
    p.write_bytes(os.urandom(2048))
    return p


def test_presets_lists_every_preset(capsys):
    rc, out, err = run_main(capsys, "presets")
    assert rc == 0 and err == ""
    for name in ("smoke", "quick", "benchmark", "paper"):
        assert f"\n{name}: " in "\n" + out
    assert '"eps": 0.03137' in out


@pytest.mark.parametrize("argv,fragments", [
    (["pretrain", "--method", "advcl", "--preset", "nope"], ["unknown preset 'nope'", "smoke, quick"]),
    (["pretrain", "--method", "advcl", "--preset", "smoke", "--set", "epochs=abc"], ["'epochs' cannot take 'abc'"]),
    (["pretrain", "--method", "advcl", "--preset", "smoke", "--set", "epochs"], ["--set needs FIELD=VALUE"]),
    (["pretrain", "--method", "advcl", "--preset", "smoke", "--set", "nosuch=1"], ["unknown preset field 'nosuch'"]),
    (["pretrain", "--method", "acl", "--preset", "smoke", "--set", "eps=8"], ["eps=8.0 is outside [0, 1]", "8/255"]),
    (["tour", "--preset", "nope"], ["unknown preset 'nope'"]),
    (["tour", "--only", "99"], ["no notebook called '99'", "01_frequency_views"]),
])
def test_bad_settings_are_one_error_line(capsys, tmp_path, argv, fragments):
    if argv[0] == "tour":
        argv = argv + ["--out", str(tmp_path / "tour")]
    rc, _, err = run_main(capsys, *argv)
    assert_one_error_line(rc, err, *fragments)


def test_missing_data_path(capsys, tmp_path):
    missing = tmp_path / "no_such_images"
    rc, _, err = run_main(capsys, "pretrain", "--method", "simclr", "--preset", "smoke", "--data", str(missing),
                          "--out", str(tmp_path / "run"), "--no-progress")
    assert_one_error_line(rc, err, str(missing), "does not exist", "ImageFolder")
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("argv", [
    ["finetune", "--scheme", "slf", "--encoder"],
    ["pseudo-labels", "--k", "2", "--encoder"],
    ["evaluate", "--model"],
])
def test_corrupt_checkpoint_is_one_error_line_naming_the_file(capsys, tmp_path, corrupt, argv):
    rc, _, err = run_main(capsys, *argv, str(corrupt), "--preset", "smoke", "--no-progress",
                          *(["--out", str(tmp_path / "o")] if argv[0] != "evaluate" else []))
    assert_one_error_line(rc, err, str(corrupt.name))


def test_argparse_rejects_unknown_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--method", "byol"])
    assert e.value.code == 2
    assert "invalid choice: 'byol'" in capsys.readouterr().err
    sub = build_parser()._subparsers._group_actions[0].choices
    assert set(sub) == {"tour", "pretrain", "pretrained", "import-encoder", "pseudo-labels", "finetune", "evaluate",
                        "spectra", "site",
                        "presets", "student"}


def test_python_dash_m_in_a_real_process():
    """`python -m advcl_lite`: exit status 2 and exactly one line on stderr, no traceback."""
    env = {**os.environ, "ADVCL_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "advcl_lite", "pretrain", "--method", "advcl", "--preset", "nope"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == "error: unknown preset 'nope'; choose one of: smoke, quick, benchmark, paper"


def test_console_script_is_installed():
    eps = [e for e in entry_points(group="console_scripts") if e.name == "advcl-lite"]
    assert len(eps) == 1 and eps[0].value == "advcl_lite.cli:main"
    assert eps[0].load() is main
    assert shutil.which("advcl-lite") or (Path(sys.executable).parent / "advcl-lite").exists()


def test_the_command_line_does_not_import_the_notebook_stack():
    """nbformat (with its JSON-schema validator) and papermill cost seconds to import; only the commands that
    use them (tour, student) may pay for them."""
    code = "import sys, advcl_lite.cli; print(sorted(m for m in ('nbformat', 'papermill', 'jsonschema') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
