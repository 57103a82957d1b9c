"""The hostile pass: bad inputs and faults a user can hit, each with the behaviour it must keep.

Nothing a user wrote is deleted or replaced without a flag, nothing stale is reused, and every failure
is one line naming the input, the problem and the fix. Fast cases run by default; the ones that start
real processes (kill and resume, SIGINT, a crashing configuration) are short too.
"""
from __future__ import annotations

import hashlib
import json
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


# --------------------------------------------------------------------------- second pass (issue 25): data entry

def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path)


def test_16_bit_images_are_scaled_to_8_bits_and_float_images_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVCL_CACHE", str(tmp_path / "cache"))
    from PIL import Image
    for i, v in enumerate((0, 32768, 65535)):
        _png(tmp_path / "d" / "train" / "grey" / f"{i}.png", np.full((8, 8), v, np.uint16))
    assert Image.open(tmp_path / "d" / "train" / "grey" / "1.png").mode.startswith("I")
    ds = load_image_folder(tmp_path / "d", cache=False)
    assert sorted(int(ds.images[i].float().mean()) for i in range(3)) == [0, 128, 255]   # scaled, not clipped
    _png(tmp_path / "d" / "train" / "pal" / "0.png", np.full((8, 8, 3), 40, np.uint8))
    Image.open(tmp_path / "d" / "train" / "pal" / "0.png").convert("P", palette=Image.ADAPTIVE).save(tmp_path / "d" / "train" / "pal" / "1.png")
    Image.fromarray(np.full((8, 8, 2), 90, np.uint8), "LA").save(tmp_path / "d" / "train" / "pal" / "2.png")
    ds = load_image_folder(tmp_path / "d", cache=False)
    assert ds.images.dtype == torch.uint8 and ds.images.shape[1] == 3
    assert {int(v) for v in ds.images[ds.labels == 1].flatten().unique()} <= {40, 90}
    Image.fromarray(np.full((8, 8), 0.5, np.float32), "F").save(tmp_path / "d" / "train" / "grey" / "f.tif")
    with pytest.raises(DataError, match=r"f\.tif.*32-bit floats"):
        load_image_folder(tmp_path / "d", cache=False)


def test_subfolders_of_a_class_folder_are_refused_with_their_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADVCL_CACHE", str(tmp_path / "cache"))
    img = np.zeros((8, 8, 3), np.uint8)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            for sub in ("day", "night"):
                _png(tmp_path / "nested" / split / c / sub / "0.png", img)
    with pytest.raises(DataError, match=r"train/cat/day/0\.png lies deeper than <split>/<class>/<image>"):
        load_image_folder(tmp_path / "nested", cache=False)
    z = tmp_path / "nested.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted((tmp_path / "nested").rglob("*.png")):
            zf.write(p, "top/" + p.relative_to(tmp_path / "nested").as_posix())
    with pytest.raises(DataError, match=r"top/test/cat/day/0\.png lies deeper"):
        load_image_folder(z, "test", cache=False)
    for c in ("cat", "dog"):                                  # no split folders, and nested: refused too
        _png(tmp_path / "flat" / c / "day" / "0.png", img)
    _one_error_line(capsys, ["pretrain", "--method", "simclr", "--preset", "smoke", "--data", str(tmp_path / "flat"),
                             "--out", str(tmp_path / "r")], "does not fit the layout", "cat/day/0.png")


def test_symlinked_class_and_split_folders_are_read_and_a_loop_ends(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVCL_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "real")
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "train" / "a").symlink_to(tmp_path / "real" / "train" / "a", target_is_directory=True)
    (tmp_path / "d" / "train" / "b").symlink_to(tmp_path / "real" / "train" / "b", target_is_directory=True)
    ds = load_image_folder(tmp_path / "d", cache=False)
    assert len(ds) == 6 and ds.classes == ["a", "b"]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "train").symlink_to(tmp_path / "real" / "train", target_is_directory=True)
    assert len(load_image_folder(tmp_path / "e", cache=False)) == 6
    (tmp_path / "real" / "train" / "a" / "loop").symlink_to(tmp_path / "real", target_is_directory=True)
    assert len(load_image_folder(tmp_path / "real", cache=False)) == 6   # a link back into the tree is walked once


def test_a_zip_member_too_large_for_an_image_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from advcl_lite import data as data_mod
    monkeypatch.setenv("ADVCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data_mod, "MAX_MEMBER_BYTES", 1 << 20)
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/a/0.png", b"\0" * (4 << 20))      # 4 MiB of zeros: a few KiB in the zip
    read = []
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, pwd=None: read.append(name))
    with pytest.raises(DataError, match=r"bomb\.zip: member train/a/0\.png declares 4 MiB uncompressed"):
        load_image_folder(z, cache=False)
    assert read == []                                          # refused before a byte was decompressed
    monkeypatch.setattr(data_mod, "MAX_TOTAL_BYTES", 1 << 20)
    monkeypatch.setattr(data_mod, "MAX_MEMBER_BYTES", 64 << 20)
    with pytest.raises(DataError, match=r"declare 0\.0 GiB uncompressed"):
        load_image_folder(z, cache=False)


def test_zips_from_a_mac_upper_case_names_dirs_named_zip_and_bad_crcs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADVCL_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "f")
    z = tmp_path / "D.ZIP"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted((tmp_path / "f").rglob("*.png")):
            zf.write(p, p.relative_to(tmp_path / "f").as_posix())
            zf.writestr("__MACOSX/" + p.relative_to(tmp_path / "f").parent.as_posix() + "/._" + p.name, b"junk")
    ds = load_dataset(str(z), "train")                         # upper-case suffix, Finder's ._ entries skipped
    assert len(ds) == 6 and ds.classes == ["a", "b"]
    (tmp_path / "f").rename(tmp_path / "d.zip")               # a folder whose name ends in .zip is a folder
    assert len(load_image_folder(tmp_path / "d.zip", cache=False)) == 6
    raw = bytearray(z.read_bytes())
    at = raw.index(b"IDAT") + 8                                # a byte inside the first PNG's pixel data
    raw[at] ^= 0xFF
    bad = tmp_path / "crc.zip"
    bad.write_bytes(bytes(raw))
    _one_error_line(capsys, ["pretrain", "--method", "simclr", "--preset", "smoke", "--data", str(bad),
                             "--out", str(tmp_path / "r")], "crc.zip: member train/a/0.png cannot be read", "damaged")


@pytest.mark.parametrize("size", ["-5", "0"])
def test_a_bad_image_size_is_one_line(capsys, tmp_path, size):
    _one_error_line(capsys, ["pretrain", "--method", "simclr", "--preset", "smoke", "--image-size", size,
                             "--out", str(tmp_path / "r")], "--image-size must be a whole number >= 1")


def test_a_missing_split_names_a_fix_the_cli_has(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVCL_CACHE", str(tmp_path / "cache"))
    _write_folder(tmp_path / "f")
    (tmp_path / "f" / "val" / "a").mkdir(parents=True)
    _png(tmp_path / "f" / "val" / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path / "f", "test", cache=False)
    assert "test/<class>/ beside train/" in str(e.value) and "split=" not in str(e.value)


# --------------------------------------------------------------------------- second pass: settings and devices

@pytest.mark.parametrize("setting, fragment", [
    ("hfc_radius=nan", "'hfc_radius' must be a finite number"), ("lr=nan", "'lr' must be a finite number"),
    ("warmup_epochs=nan", "'warmup_epochs' must be a finite number"), ("acl_lr=inf", "'acl_lr' must be a finite"),
    ("eps=nan", "'eps' must be a finite"), ("seed=1180591620717411303424", "'seed' must be a whole number in"),
    ("batch_size=1", "'batch_size' must be >= 2")])
def test_non_finite_and_out_of_range_numbers_are_refused_by_field(capsys, tmp_path, setting, fragment):
    _one_error_line(capsys, ["pretrain", "--method", "advcl", "--preset", "smoke", "--set", setting,
                             "--out", str(tmp_path / "r")], fragment)


def test_the_cli_leaves_progress_bars_to_advcl_progress(monkeypatch, tmp_path):
    from advcl_lite import cli
    from advcl_lite.runtime import progress_enabled
    seen = []
    monkeypatch.setattr(cli, "pretrain", lambda *a, **k: seen.append(progress_enabled(k["progress"])) or
                        (_ for _ in ()).throw(ValueError("stop")))
    argv = ["pretrain", "--method", "simclr", "--preset", "smoke", "--out", str(tmp_path)]
    monkeypatch.setenv("ADVCL_PROGRESS", "0")
    main(argv)
    main(argv + ["--no-progress"])
    monkeypatch.setenv("ADVCL_PROGRESS", "1")
    main(argv)
    assert seen == [False, False, True]


def test_advcl_device_is_named_when_it_asks_for_a_missing_device(monkeypatch, capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.setenv("ADVCL_DEVICE", "cuda")
    line = _one_error_line(capsys, ["pretrain", "--method", "simclr", "--preset", "smoke", "--out", str(tmp_path)],
                           "ADVCL_DEVICE=cuda", "unset it")
    assert "use --device cpu or auto" not in line


def test_a_non_finite_loss_names_its_likely_cause(sample, tmp_path):
    from advcl_lite.losses import NonFiniteLossError
    with pytest.raises(NonFiniteLossError, match=r"temperature=1e-30 makes exp"):
        pt.pretrain("simclr", "smoke", out_dir=tmp_path / "t", data=sample, device="cpu", progress=False,
                    epochs=1, temperature=1e-30, **TINY)
    with pytest.raises(NonFiniteLossError, match=r"acl_lr=1e\+30 is too large") as e:
        pt.pretrain("simclr", "smoke", out_dir=tmp_path / "a", data=sample, device="cpu", progress=False,
                    epochs=1, acl_lr=1e30, **TINY)
    assert " lr (now" not in str(e.value)


def test_an_encoder_with_nan_weights_is_refused_before_finetuning(sample, tmp_path):
    enc = ResNet18(4)
    with torch.no_grad():
        next(enc.parameters()).fill_(float("nan"))
    with pytest.raises(CheckpointError, match="non-finite weights"):
        finetune(enc, "slf", get_preset("smoke", ft_subset=64), data=sample, out_dir=tmp_path, device="cpu",
                 progress=False)


# --------------------------------------------------------------------------- second pass: files and folders

def test_evaluate_refuses_data_whose_classes_differ_and_finds_relative_data_from_anywhere(tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.setenv("ADVCL_CACHE", str(tmp_path / "cache"))
    img = np.zeros((8, 8, 3), np.uint8)
    for split, classes in (("train", ("a", "c")), ("test", ("a", "b"))):
        for c in classes:
            for i in range(10):
                _png(tmp_path / "ec" / split / c / f"{i}.png", img + i)
    monkeypatch.chdir(tmp_path)
    res = finetune(ResNet18(4), "slf", get_preset("smoke", ft_subset=64), data="ec", out_dir=tmp_path / "ft",
                   device="cpu", progress=False, image_size=None)
    assert res.meta["data_source"] == str((tmp_path / "ec").resolve())      # a path, stored absolute
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    line = _one_error_line(capsys, ["evaluate", "--preset", "smoke", "--model", str(tmp_path / "ft" / "model.pt"),
                                    "--attack", "none", "--no-progress"], "['a', 'b']", "['a', 'c']")
    assert "unknown dataset" not in line


def test_a_run_folder_belongs_to_one_kind_of_run(sample, tmp_path, capsys):
    P = get_preset("smoke", epochs=1, **TINY)
    enc = pt.pretrain("simclr", P, out_dir=tmp_path / "enc", data=sample, device="cpu", progress=False).checkpoint
    history = _sha(tmp_path / "enc" / "history.json")
    with pytest.raises(CheckpointError, match=r"holds a pretrain run \(last\.pt\)|holds a pretrain run \(final\.pt\)"):
        finetune(enc, "slf", get_preset("smoke", ft_subset=64), data=sample, out_dir=tmp_path / "enc", device="cpu",
                 progress=False)
    assert _sha(tmp_path / "enc" / "history.json") == history
    finetune(enc, "slf", get_preset("smoke", ft_subset=64), data=sample, out_dir=tmp_path / "ft", device="cpu",
             progress=False)
    _one_error_line(capsys, ["pretrain", "--method", "simclr", "--preset", "smoke", "--out", str(tmp_path / "ft"),
                             "--no-progress"], "holds a finetune run (model.pt)", "another --out")


def test_student_copies_never_replace_notebooks_that_hold_solutions(tmp_path):
    import shutil

    from advcl_lite.course import write_student_copies
    from advcl_lite.tour import list_notebooks
    nbs = [Path(shutil.copy(p, tmp_path / p.name)) for p in list_notebooks()]
    before = {p.name: _sha(p) for p in nbs}
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="hold the exercises' solutions") as e:
            write_student_copies(nbs, tmp_path, overwrite=overwrite)
        assert "--overwrite" not in str(e.value)
    assert {p.name: _sha(p) for p in nbs} == before


def test_a_shipped_encoder_file_finetunes_and_a_manifest_without_architecture_is_named(sample, tmp_path, capsys,
                                                                                     monkeypatch):
    import shutil

    from advcl_lite.pretrained import encoder_dir
    res = finetune(encoder_dir() / "random.pt", "slf", get_preset("smoke", ft_subset=64), data=sample,
                   out_dir=tmp_path / "ft", device="cpu", progress=False)
    assert res.meta["encoder"]["source"] == "encoder file" and res.meta["encoder"]["base_width"] == 16
    folder = Path(shutil.copytree(encoder_dir(), tmp_path / "set"))
    m = json.loads((folder / "simclr.json").read_text())
    del m["architecture"]
    (folder / "simclr.json").write_text(json.dumps(m))
    monkeypatch.setenv("ADVCL_ENCODERS", str(folder))
    assert main(["pretrained", "verify"]) == 2
    out = capsys.readouterr()
    assert "FAILED  simclr" in out.out and "lacks architecture.base_width" in out.out
    assert out.out.count("ok      ") == len(list(folder.glob("*.json"))) - 1      # the others are still checked


def test_a_tagged_checkpoint_without_state_dict_or_with_a_list_meta_is_named(tmp_path):
    from advcl_lite.checkpoint import FORMAT, load_checkpoint
    for name, payload in (("nostate.pt", {"format": FORMAT, "kind": "pretrain", "meta": {}}),
                          ("listmeta.pt", {"format": FORMAT, "kind": "pretrain", "meta": [], "state_dict": {}})):
        torch.save(payload, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"{name}.*format tag, but its '(state_dict|meta)'"):
            load_checkpoint(tmp_path / name, kind="pretrain")


def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from advcl_lite import checkpoint as ck
    path = ck.save_checkpoint(tmp_path / "model.pt", kind="finetune", state_dict={"w": torch.ones(2)})
    digest = _sha(path)

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(CheckpointError, match=r"cannot write .*model\.pt: the disk is full"):
        ck.save_checkpoint(path, kind="finetune", state_dict={"w": torch.zeros(2)})
    assert _sha(path) == digest and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_files_follow_the_umask_and_stale_temporaries_are_cleared(tmp_path, sample):
    from advcl_lite import checkpoint as ck
    old = os.umask(0o022)
    try:
        p = ck.save_checkpoint(tmp_path / "x.pt", kind="finetune", state_dict={})
        j = ck.write_json(tmp_path / "x.json", {})
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o644 and (j.stat().st_mode & 0o777) == 0o644
    run = tmp_path / "ft"
    run.mkdir()
    (run / ".model.pt.k3j_x9ab.tmp").write_bytes(b"half")       # what a SIGKILL mid-write leaves
    (run / "notes.tmp").write_text("mine")                      # not of our naming: kept
    finetune(ResNet18(4), "slf", get_preset("smoke", ft_subset=64), data=sample, out_dir=run, device="cpu",
             progress=False)
    assert not (run / ".model.pt.k3j_x9ab.tmp").exists() and (run / "notes.tmp").exists()
    labels = PseudoLabels({2: torch.zeros(4, dtype=torch.long)}, {"dataset": "x"})
    long = tmp_path / ("L" * 247 + ".pt")                       # a legal 250-character name
    stale = tmp_path / ".labels.pt.abcdefgh.tmp"
    stale.write_bytes(b"half")
    labels.save(tmp_path / "labels.pt")
    labels.save(long)
    assert long.exists() and not stale.exists()


def test_a_second_tour_into_the_same_folder_is_refused(tmp_path, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".advcl-lock").write_text(f"{other.pid}\n")
        _one_error_line(capsys, ["tour", "--out", str(tmp_path)], "being written by another run")
        assert not (tmp_path / "01_frequency_views.ipynb").exists()
    finally:
        other.kill()
        other.wait()


def test_a_cell_timeout_in_the_tour_prints_only_the_error_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "advcl_lite", "tour", "--timeout", "1", "--only", "01", "--out",
                        str(tmp_path / "t")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: notebook 01"), r.stderr
