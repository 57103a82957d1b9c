"""The hostile pass: bad inputs and faults a user can hit, each with the behaviour it must keep.

Nothing a user wrote is deleted or replaced without a flag, nothing stale is reused, and every failure
is one line naming the input, the problem and the fix. Fast cases run by default; the ones that start
real processes (kill and resume, SIGINT, a crashing configuration) are short too.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from advcl_lite import pretrain as pt
from advcl_lite.checkpoint import CheckpointError, RunLockedError, check_writable, run_lock
from advcl_lite.cli import main
from advcl_lite.data import DataError, class_balanced_subset, load_dataset, load_image_folder, load_sample
from advcl_lite.evaluate import evaluate
from advcl_lite.finetune import finetune, load_finetuned
from advcl_lite.models import Classifier, ResNet18, channels_last_safe, is_channels_last, to_channels_last
from advcl_lite.presets import get_preset
from advcl_lite.pseudo_labels import PseudoLabels

TINY = dict(train_subset=64, batch_size=32, base_width=4)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _one_error_line(capsys, argv, *fragments):
    rc = main(list(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def sample():
    return load_sample("train")


# --------------------------------------------------------------------------- 1. the decoded-data cache

def _write_folder(root: Path, classes=("a", "b"), per_class=3, value=0) -> None:
    from PIL import Image
    for c in classes:
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), value + 10 * i, np.uint8)).save(root / "train" / c / f"{i}.png")


def test_image_folder_cache_notices_added_removed_replaced_and_renamed_images(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVCL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "folder"
    _write_folder(root)
    first = load_image_folder(root)
    assert len(first) == 6 and first.classes == ["a", "b"]
    _write_folder(root, classes=("c",))                               # add a class folder
    added = load_image_folder(root)
    assert len(added) == 9 and added.classes == ["a", "b", "c"]
    (root / "train" / "c" / "0.png").unlink()                          # remove an image
    assert len(load_image_folder(root)) == 8
    from PIL import Image
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(root / "train" / "a" / "0.png")   # replace one
    replaced = load_image_folder(root)
    assert int(replaced.images[0].max()) == 255 and replaced.fingerprint != added.fingerprint
    (root / "train" / "b").rename(root / "train" / "z")                 # rename a class
    assert load_image_folder(root).classes == ["a", "c", "z"]


def test_zip_cache_follows_the_members_and_a_corrupt_zip_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADVCL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "folder"
    _write_folder(root)
    z = tmp_path / "d.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(root.rglob("*.png")):
            zf.write(p, p.relative_to(root).as_posix())
    assert len(load_image_folder(z)) == 6
    with zipfile.ZipFile(z, "a") as zf:
        zf.write(root / "train" / "a" / "0.png", "train/new/0.png")
    assert load_image_folder(z).classes == ["a", "b", "new"]
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"bad\.zip' is not a readable zip"):
        load_image_folder(bad)
    _one_error_line(capsys, ["pretrain", "--method", "simclr", "--preset", "smoke", "--data", str(bad),
                             "--out", str(tmp_path / "r")], "is not a readable zip")


def test_replaced_images_retrain_instead_of_reusing_a_cached_run(sample, tmp_path):
    P = get_preset("smoke", epochs=1, **TINY)
    first = pt.get_or_train("simclr", P, tmp_path, data=sample, device="cpu", progress=False)
    changed = load_sample("train")
    changed.images = 255 - changed.images                               # same names and count, other pixels
    again = pt.get_or_train("simclr", P, tmp_path, data=changed, device="cpu", progress=False)
    assert not again.cached and again.meta["config"]["data_fingerprint"] != first.meta["config"]["data_fingerprint"]


# --------------------------------------------------------------------------- 2. --no-resume keeps the finished run

def test_no_resume_keeps_final_pt_until_the_new_run_finishes(sample, tmp_path, capsys):
    args = ["pretrain", "--preset", "smoke", "--method", "simclr", "--out", str(tmp_path), "--device", "cpu",
            "--no-progress", "--set", "train_subset=64", "--set", "batch_size=32", "--set", "base_width=4"]
    assert main(args) == 0
    capsys.readouterr()
    final = tmp_path / "final.pt"
    digest = _sha(final)
    line = _one_error_line(capsys, args + ["--no-resume", "--set", "acl_lr=1e30"], "non-finite")
    assert "the last good checkpoint" not in line and "earlier run's files, untouched" in line
    assert _sha(final) == digest                                         # the finished run is still there
    assert main(args + ["--no-resume", "--set", "acl_lr=0.1"]) == 0      # a good new run replaces it
    assert _sha(final) != digest


def test_a_corrupt_last_pt_names_no_resume(sample, tmp_path):
    (tmp_path / "last.pt").write_bytes(os.urandom(512))
    with pytest.raises(CheckpointError, match=r"last\.pt.*resume=False \(CLI: --no-resume\)"):
        pt.pretrain("simclr", "smoke", out_dir=tmp_path, data=sample, device="cpu", progress=False, **TINY)


# --------------------------------------------------------------------------- 3. pseudo-labels never overwrite an encoder

def test_pseudo_labels_out_never_replaces_the_encoder_or_an_existing_file(sample, tmp_path, capsys):
    run = pt.pretrain("simclr", "smoke", out_dir=tmp_path / "s", data=sample, device="cpu", progress=False,
                      epochs=1, **TINY)
    enc = run.checkpoint
    digest = _sha(enc)
    base = ["pseudo-labels", "--encoder", str(enc), "--preset", "smoke", "--k", "2", "--device", "cpu",
            "--no-progress", "--set", "train_subset=64"]
    _one_error_line(capsys, base + ["--out", str(enc)], "is the encoder checkpoint itself")
    _one_error_line(capsys, base + ["--out", str(enc), "--overwrite"], "is the encoder checkpoint itself")
    assert _sha(enc) == digest
    other = tmp_path / "mine.pt"
    other.write_text("my notes")
    _one_error_line(capsys, base + ["--out", str(other)], "already exists", "--overwrite")
    assert other.read_text() == "my notes"
    out = tmp_path / "labels.pt"
    assert main(base + ["--out", str(out)]) == 0
    _one_error_line(capsys, base + ["--out", str(out)], "already exists")
    assert main(base + ["--out", str(out), "--overwrite"]) == 0
    # the library refuses to write labels over a file that is not a label file
    pl = PseudoLabels.load(out)
    with pytest.raises(CheckpointError, match="is not a pseudo-label file; it is not replaced"):
        pl.save(enc)
    assert _sha(enc) == digest


# --------------------------------------------------------------------------- 4. one writer per run folder

def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    with run_lock(tmp_path):
        with run_lock(tmp_path):                    # the same process may re-enter
            pass
        assert (tmp_path / ".advcl-lock").exists()
    assert not (tmp_path / ".advcl-lock").exists()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".advcl-lock").write_text(f"{other.pid}\n")
        with pytest.raises(RunLockedError, match=rf"being written by another run \(process {other.pid}\).*another --out"):
            with run_lock(tmp_path):
                pass
    finally:
        other.kill()
        other.wait()
    with run_lock(tmp_path) as lock:                # its owner is gone: stale, taken over
        assert lock.owned and (tmp_path / ".advcl-lock").read_text().split()[0] == str(os.getpid())


def test_pretrain_and_finetune_refuse_a_folder_another_live_run_holds(sample, tmp_path, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".advcl-lock").write_text(f"{other.pid}\n")
        _one_error_line(capsys, ["pretrain", "--preset", "smoke", "--method", "simclr", "--out", str(tmp_path),
                                 "--set", "train_subset=64", "--set", "base_width=4"], "being written by another run")
        with pytest.raises(RunLockedError):
            finetune(ResNet18(4), "slf", get_preset("smoke", ft_subset=64), data=sample, out_dir=tmp_path,
                     device="cpu", progress=False)
        assert not (tmp_path / "final.pt").exists() and not (tmp_path / "model.pt").exists()
    finally:
        other.kill()
        other.wait()


def test_finetune_cli_does_not_replace_a_model_without_overwrite(sample, tmp_path, capsys):
    enc = pt.pretrain("simclr", "smoke", out_dir=tmp_path / "s", data=sample, device="cpu", progress=False,
                      epochs=1, **TINY).checkpoint
    args = ["finetune", "--encoder", str(enc), "--scheme", "slf", "--preset", "smoke", "--data", "sample",
            "--out", str(tmp_path / "ft"), "--device", "cpu", "--no-progress", "--set", "ft_subset=64"]
    assert main(args) == 0
    digest = _sha(tmp_path / "ft" / "model.pt")
    _one_error_line(capsys, args, "already exists", "--overwrite")
    assert _sha(tmp_path / "ft" / "model.pt") == digest
    assert main(args + ["--overwrite"]) == 0


def test_an_unwritable_out_fails_before_any_training(sample, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    t0 = time.perf_counter()
    _one_error_line(capsys, ["pretrain", "--preset", "smoke", "--method", "advcl", "--out", str(blocker / "run")],
                    "cannot write to the run folder", "--out")
    assert time.perf_counter() - t0 < 10                                # refused up front, not after training
    with pytest.raises(CheckpointError, match="cannot write"):
        check_writable(blocker / "x")


# --------------------------------------------------------------------------- 5. the channels_last crash is never reached

def test_narrow_networks_stay_nchw():
    assert not channels_last_safe(ResNet18(8)) and not channels_last_safe(ResNet18(4))
    assert channels_last_safe(ResNet18(12)) and channels_last_safe(ResNet18(16))
    assert not is_channels_last(to_channels_last(ResNet18(8)))
    assert is_channels_last(to_channels_last(ResNet18(16)))
    assert not is_channels_last(to_channels_last(ResNet18(16), enabled=False))


def test_width_8_at_64_pixels_trains_in_a_real_process(tmp_path):
    """Width 8 + channels_last + 48 px and more crashed the process (segfault) in backward on torch 2.14.1."""
    cmd = [sys.executable, "-m", "advcl_lite", "pretrain", "--preset", "smoke", "--method", "simclr", "--image-size",
           "64", "--out", str(tmp_path / "r"), "--device", "cpu", "--no-progress", "--set", "train_subset=32",
           "--set", "batch_size=16"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])


# --------------------------------------------------------------------------- 6. counts are validated where they enter

@pytest.mark.parametrize("setting, fragment", [
    ("train_subset=-5", "'train_subset' must be >= 1"), ("train_subset=0", "'train_subset' must be >= 1"),
    ("ft_subset=-1", "'ft_subset' must be >= 1"), ("eval_n=0", "'eval_n' must be >= 1"),
    ("ckpt_every=0", "'ckpt_every' must be >= 1"), ("temperature=0", "temperature=0.0 must be > 0"),
    ("epochs=0", "'epochs' must be >= 1"), ("batch_size=-2", "'batch_size' must be >= 1"),
    ("warmup_epochs=99", "longer than the run"), ("base_temperature=0", "base_temperature=0.0 must be > 0"),
])
def test_bad_counts_in_presets_are_one_line(capsys, tmp_path, setting, fragment):
    _one_error_line(capsys, ["pretrain", "--preset", "smoke", "--method", "simclr", "--out", str(tmp_path),
                             "--set", setting], fragment)


def test_negative_counts_never_act_as_slices(sample, capsys, tmp_path):
    with pytest.raises(ValueError, match=r"n \(a number of images\) must be a whole number >= 1"):
        class_balanced_subset(sample, -5)
    with pytest.raises(ValueError, match="n must be a whole number >= 1"):
        sample.tensors(-1)
    with pytest.raises(ValueError, match="batch_size must be"):
        sample.num_batches(0)
    model = Classifier(ResNet18(4), 10).eval()
    with pytest.raises(ValueError, match=r"n \(test images\) must be a whole number >= 1"):
        evaluate(model, load_sample("test"), n=-5)
    enc = pt.pretrain("simclr", "smoke", out_dir=tmp_path / "s", data=sample, device="cpu", progress=False,
                      epochs=1, **TINY).checkpoint
    ft = finetune(enc, "slf", get_preset("smoke", ft_subset=64), data=sample, out_dir=tmp_path / "ft",
                  device="cpu", progress=False)
    _one_error_line(capsys, ["evaluate", "--model", str(ft.checkpoint), "--n", "-5"], "--n (test images)")


# --------------------------------------------------------------------------- 7. one line, a fix that exists

def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    def boom(args):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr("advcl_lite.cli.cli_pretrain", boom)
    argv = ["pretrain", "--method", "simclr", "--out", str(tmp_path)]
    _one_error_line(capsys, argv, "unexpected ZeroDivisionError", "ADVCL_DEBUG=1")
    monkeypatch.setenv("ADVCL_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(argv)


def test_offline_torchvision_message_suggests_a_fix_that_exists(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "train", root=str(tmp_path))
    msg = str(info.value)
    assert "--download" not in msg and "download=True" in msg and "ImageFolder" in msg


# --------------------------------------------------------------------------- what already worked, kept

class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


@pytest.mark.parametrize("loader", ["pretrain", "finetune", "pseudo_labels"])
def test_malicious_pickles_never_run_through_any_loader(tmp_path, loader):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "advcl_lite", "format_version": 1, "kind": loader, "meta": {}, "state_dict": {},
                "payload": _Evil(str(target))}, evil)
    load = {"pretrain": pt.load_pretrained, "finetune": load_finetuned, "pseudo_labels": PseudoLabels.load}[loader]
    with pytest.raises(CheckpointError):
        load(evil)
    assert not target.exists()


def test_a_corrupt_cached_run_in_a_work_dir_is_retrained(sample, tmp_path):
    P = get_preset("smoke", epochs=1, **TINY)
    first = pt.get_or_train("simclr", P, tmp_path, data=sample, device="cpu", progress=False)
    first.checkpoint.write_bytes(first.checkpoint.read_bytes()[:1000])          # truncated cache entry
    again = pt.get_or_train("simclr", P, tmp_path, data=sample, device="cpu", progress=False)
    assert not again.cached and pt.load_pretrained(again.checkpoint)[0] is not None


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_weights(tmp_path):
    base = [sys.executable, "-m", "advcl_lite", "pretrain", "--preset", "smoke", "--method", "simclr", "--device",
            "cpu", "--no-progress", "--set", "train_subset=64", "--set", "batch_size=32", "--set", "base_width=4",
            "--set", "epochs=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(base + ["--out", str(tmp_path / "full")], check=True, capture_output=True, env=env, timeout=300)
    run = tmp_path / "killed"
    proc = subprocess.Popen(base + ["--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while not (run / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / ".advcl-lock").exists() or (run / "final.pt").exists()       # killed: its lock is left behind
    subprocess.run(base + ["--out", str(run)], check=True, capture_output=True, env=env, timeout=300)   # stale lock
    a, b = (torch.load(p / "final.pt", weights_only=True)["state_dict"] for p in (tmp_path / "full", run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigint_during_the_tour_exits_130_with_one_line(tmp_path):
    # SIGINT at its default disposition in the child, as in a terminal: a shell that starts pytest in the
    # background hands it SIGINT ignored, and an ignored signal stays ignored across exec
    proc = subprocess.Popen([sys.executable, "-m", "advcl_lite", "tour", "--preset", "smoke", "--only", "02",
                             "--out", str(tmp_path / "t")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err


def test_after_ctrl_c_what_the_interrupt_sets_off_prints_nothing(monkeypatch, capsys, caplog):
    """A notebook kernel that dies of the same Ctrl-C leaves nbclient's task failed and never retrieved; asyncio
    reports such a task through logging when it is collected (a traceback under the one-line message)."""
    import asyncio
    import gc
    import logging

    from advcl_lite import cli

    def run_then_interrupted(args):
        loop = asyncio.new_event_loop()

        async def dies():
            raise RuntimeError("Kernel died")

        task = loop.create_task(dies())
        loop.run_until_complete(asyncio.sleep(0.01))    # the task fails; nobody retrieves its exception
        loop.close()
        run_then_interrupted.task = task
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        raise AssertionError("SIGINT did not interrupt")

    monkeypatch.setattr(cli, "_run", run_then_interrupted)
    caplog.set_level(logging.ERROR, logger="asyncio")
    try:
        assert main(["presets"]) == 130
        del run_then_interrupted.task
        gc.collect()                                      # asyncio reports the task here, or stays silent
        assert capsys.readouterr().err == "interrupted; completed checkpoints are kept (run again to resume)\n"
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler     # the caller's handler is back
    finally:
        logging.disable(logging.NOTSET)
