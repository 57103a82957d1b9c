"""Checkpoints: plain state dicts + a metadata dict, written atomically, loaded safely.

File layout (a dict, loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "advcl_lite", "format_version": 1, "kind": "pretrain" | "finetune" | ...,
     "meta": {config, routes, dataset, seed, epoch, ...},   # JSON-able values only
     "state_dict": {...}, ...extra state (optimizer, scheduler, rng)...}

Saving writes a temporary file in the same folder and renames it over the
target, so a crash never leaves a half-written checkpoint. Loading uses
``weights_only=True``; model weights load with strict key matching, a
``module.`` wrapper prefix (DataParallel, DistributedDataParallel) is stripped, and any mismatch is an
error naming the file and the keys.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .runtime import unwrap

FORMAT = "advcl_lite"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, of the wrong kind, or does not match the model."""


def _plain(obj: Any) -> Any:
    """Make metadata safe for weights_only loading (tuples -> lists, paths -> str).

    Subclasses of the plain types (e.g. ``torch.__version__``, a ``str`` subclass, or an
    ``IntEnum``) become the plain type: the weights-only unpickler refuses them.
    """
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None:
        return None
    for t in (bool, int, float, str):
        if isinstance(obj, t):
            return t(obj) if type(obj) is not t else obj
    if isinstance(obj, torch.Tensor):
        return obj
    return str(obj)


def _file_mode() -> int:
    """The mode a new file gets under the process's umask (what ``open`` would give), for the temporary
    files that ``mkstemp`` creates with mode 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_for(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` (``.<name>.<random>.tmp``, the name cut so the whole stays within
    the 255 bytes a file name may have), with the umask's mode."""
    stem = path.name.encode()[:230].decode(errors="ignore")
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _file_mode())
    return fd, tmp


_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporary files this module's atomic writes leave when a process is killed mid-write
    (``.<name>.<random>.tmp``; only those of ``name`` when given). Call it only where no other live process
    writes: under :class:`run_lock`, or for a file this process is about to replace."""
    folder = Path(folder)
    gone = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return gone
    stem = None if name is None else "." + name.encode()[:230].decode(errors="ignore") + "."
    for f in entries:
        if _TEMP.match(f.name) and (stem is None or f.name.startswith(stem)) and f.is_file():
            try:
                f.unlink()
                gone.append(f)
            except OSError:
                pass
    return gone


def _write_failed(path: Path, e: BaseException) -> CheckpointError:
    """One message for a write that failed (a full disk, a quota, a vanished folder), naming the file."""
    import errno
    import shutil

    full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "enforce fail" in str(e) \
        or "No space left" in str(e)
    try:
        free = f" ({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there)"
    except OSError:
        free = ""
    why = f"the disk is full{free}" if full else (getattr(e, "strerror", None) or str(e).splitlines()[0])
    return CheckpointError(f"cannot write {path}: {why}; the file it would replace is unchanged. Free space or "
                           f"choose another --out")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically: a temporary file in the same folder, then a rename, so a reader never
    sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_for(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_failed(path, e) from None
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any, default=None) -> Path:
    """Write ``obj`` as JSON (indent 1, a final newline) atomically (:func:`write_text`). ``default`` as
    in :func:`json.dumps`."""
    return write_text(path, json.dumps(obj, indent=1, default=default) + "\n")


def save_checkpoint(path: str | os.PathLike, *, kind: str, state_dict: dict[str, torch.Tensor],
                    meta: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Atomically write a checkpoint to ``path`` (parent folders are created). A failed write (a full
    disk) is a :class:`CheckpointError` naming the file; the file it would replace is unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
               "meta": _plain(meta or {}), "state_dict": strip_prefix(state_dict)}
    payload.update(extra)
    fd, tmp = _temp_for(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, (OSError, RuntimeError)):
            raise _write_failed(path, e) from None
        raise
    return path


def load_checkpoint(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    ``kind`` (one or several) is checked against the stored kind.
    Raises :class:`CheckpointError` naming the file for anything wrong.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory; pass the .pt file inside it")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for broken files
        msg = str(e)
        if "weights only load failed" in msg.lower():
            # torch's message suggests weights_only=False; advcl_lite never does that, so keep only the reason
            lines = [ln.strip() for ln in msg.splitlines() if "unsupported" in ln.lower() or "unpickler error" in ln.lower()]
            if any("unsupported global" in ln.lower() for ln in lines):
                raise CheckpointError(f"checkpoint {str(path)!r} holds Python objects other than tensors and plain "
                                      f"containers ({lines[0][:160]}), so it was not written by advcl_lite and is not "
                                      f"loaded (advcl_lite loads only with weights_only=True); re-create it") from None
            msg = lines[0] if lines else "not a readable checkpoint"
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read "
                              f"({type(e).__name__}: {msg.splitlines()[0][:200] if msg else ''}); "
                              f"re-create it, or resume from an earlier one") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an advcl_lite checkpoint (no format tag); "
                              f"for a plain state dict of your own, build the model and call load_weights(model, state_dict)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} has format version {payload['format_version']}, newer than this "
                              f"advcl_lite understands ({FORMAT_VERSION}); upgrade advcl_lite")
    for key, typ, what in (("state_dict", dict, "a dict of tensors"), ("meta", dict, "a dict")):
        if not isinstance(payload.get(key), typ):
            found = "is missing" if key not in payload else f"is a {type(payload[key]).__name__}, not {what}"
            raise CheckpointError(f"{str(path)!r} has the advcl_lite format tag, but its {key!r} {found}: it was "
                                  f"damaged or written by other code; re-create it")
    if kind is not None:
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        if payload.get("kind") not in kinds:
            hint = (" (a shipped or imported encoder file: `advcl-lite finetune --encoder` takes it as it is)"
                    if payload.get("kind") == "encoder" else "")
            raise CheckpointError(f"{str(path)!r} is a {payload.get('kind')!r} checkpoint{hint}, but a "
                                  f"{' or '.join(repr(k) for k in kinds)} checkpoint is needed here")
    payload["path"] = str(path)
    return payload


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (identifies the checkpoint a result came from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def strip_prefix(state_dict: dict[str, torch.Tensor], prefixes=("module.", "_orig_mod.")) -> dict[str, torch.Tensor]:
    """Remove (Distributed)DataParallel / torch.compile wrapper prefixes from every key."""
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load with strict key and shape matching (wrapper prefixes tolerated). Never loads partially in silence."""
    target = getattr(model, "module", model)
    sd = strip_prefix(state_dict)
    own = target.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} shape mismatches (e.g. {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})")
        raise CheckpointError(f"{source} does not match the model: {'; '.join(parts)}. Was it saved for another "
                              f"width, method or number of classes? Build the model from the checkpoint's meta.")
    target.load_state_dict(sd, strict=True)


# --------------------------------------------------------------------------- run folders: writable, one writer

class RunLockedError(RuntimeError):
    """Another live process is writing the same run folder."""


LOCK_NAME = ".advcl-lock"


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(f"cannot write to the {what} {str(folder)!r} ({e.strerror or e}); "
                              f"choose a writable folder (CLI: --out DIR)") from None
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # it exists, owned by someone else
        return True
    return True


class run_lock:
    """``with run_lock(folder):`` - the folder is this process's to write until the block ends.

    The lock is a file holding the owner's pid. A second writer gets :class:`RunLockedError` naming
    the owner; a lock left by a process that no longer runs (killed, crashed) is taken over. The
    same process may take the lock again (nested calls, e.g. AdvCL training its SimCLR source)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.owned = False

    def __enter__(self) -> "run_lock":
        check_writable(self.folder, "run folder")
        me = os.getpid()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pid = -1
                if pid == me:
                    return self                          # re-entered by the owner
                if pid > 0 and _pid_alive(pid):
                    raise RunLockedError(
                        f"{self.folder} is being written by another run (process {pid}); wait for it to finish "
                        f"or use another --out. If no such process runs, delete {self.path}") from None
                self.path.unlink(missing_ok=True)        # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{me}\n")
            self.owned = True
            remove_stale_temps(self.folder)     # left by a writer killed mid-write; the folder is ours now
            return self
        raise RunLockedError(f"could not take the lock {self.path}; delete it if no run is writing {self.folder}")

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False


# the files that make a folder a run of one kind (a pretraining run's checkpoints, a finetuned model)
RUN_FILES = {"pretrain": ("last.pt", "final.pt"), "finetune": ("model.pt", "resume.pt")}


def check_run_kind(folder: str | os.PathLike, kind: str) -> None:
    """Refuse to write a ``kind`` run into ``folder`` when it holds a run of another kind: both write
    ``history.json`` (and more), so one would replace the other's files."""
    folder = Path(folder)
    for other, names in RUN_FILES.items():
        found = [n for n in names if other != kind and (folder / n).exists()]
        if found:
            raise CheckpointError(f"{folder} holds a {other} run ({found[0]}); a {kind} run there would replace "
                                  f"its history.json. A run folder belongs to one kind of run: choose another --out "
                                  f"(e.g. {folder / kind})")


def set_aside(folder: str | os.PathLike, files) -> Path | None:
    """Move ``files`` (those that exist) to ``folder/superseded/<UTC time>/`` instead of deleting them.

    For caches that must make room for a run of another configuration: nothing a user trained is
    deleted without being asked. Returns the new folder (None when there was nothing to move)."""
    folder = Path(folder)
    files = [Path(f) for f in files if Path(f).exists()]
    if not files:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest, n = folder / "superseded" / stamp, 1
    while dest.exists():
        n += 1
        dest = folder / "superseded" / f"{stamp}.{n}"
    dest.mkdir(parents=True)
    for f in files:
        os.replace(f, dest / f.name)
    print(f"{folder}: the stored run has another configuration; it is kept in {dest} and a new run starts "
          f"(delete that folder to free the space)", flush=True)
    return dest


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's values (CPU, contiguous, flattened)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and values, in key order): the one hash of
    weights in the library (finetuned models and pseudo-label files record it)."""
    h = hashlib.sha256()
    for k, v in sorted(unwrap(module).state_dict().items()):
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(tensor_bytes(v))
    return h.hexdigest()
