"""Checkpoint files and JSON records: atomic writes, `weights_only=True` loads, locked read-modify-write, and the
checks of the baseline accuracy file and record.txt that every stage makes before using them."""
import errno
import json
import logging
import os
import pickle
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import fcntl
import torch

from utils.distributed import barrier, is_main_process
from utils.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.pth\.tar$")
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)                  # disk full, or the user's disk quota used up


def checkpoint_path(folder, epoch):
    return Path(folder) / f"checkpoint-{int(epoch)}.pth.tar"


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Write `path` through a temporary file in the same folder and rename it into place, so a reader never sees a
    half-written file. The file gets the permissions the user's umask gives (mkstemp alone would make it 0600)."""
    path = Path(path)
    if is_main_process():                     # under torchrun only rank 0 writes; the barrier keeps ranks in step
        _write_atomically(path, write)
    barrier()


def _write_atomically(path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if out_of_space(e):
            raise UserError(f"no space left on {path.parent} while writing {path.name}: free space and rerun; "
                            f"{path} was not changed.") from None
        raise


def out_of_space(error):
    """True when `error` or an error it was raised from is a full disk or quota. torch.save turns the OSError of a
    failed write into a RuntimeError; the OSError stays in its context."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def save_checkpoint(state, path):
    """Write to a temporary file in the same folder and rename it, so an interrupted save leaves no torn file."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: run the stage that writes it first.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # a weights-only load refuses any class or function a pickle names (it would run its code); other
        # unpickling errors mean the file is no torch checkpoint at all
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found or "Unsupported global" in str(e):
            raise UserError(f"checkpoint {path} holds pickled code or objects"
                            f"{' (' + found.group(1) + ')' if found else ''} that a weights-only load refuses, so "
                            f"it was not executed: use a checkpoint written by this repository.") from None
        raise UserError(not_a_checkpoint(path)) from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError):
        raise UserError(not_a_checkpoint(path)) from None
    if not isinstance(ckpt, dict):
        raise UserError(not_a_checkpoint(path))
    return ckpt


def load_or_build(path, build, what):
    """The state saved at `path` (a cache); when it is missing or unreadable, `build()` it and save it there first.
    `what` names it in the log. Under torchrun every rank looks for the file before rank 0 can write it, so all
    take the same branch (and meet at the write's barrier)."""
    path = Path(path)
    exists = path.is_file()
    barrier()
    if exists:
        try:
            return load_checkpoint(path)
        except UserError:
            log.warning(f"the cache of {what} ({path}) is unreadable: computing it again")
    state = build()
    save_checkpoint(state, path)
    log.info(f"cached {what} in {path}")
    return state


def not_a_checkpoint(path):
    return f"{path} is not a readable checkpoint (truncated or not a torch file): rerun the stage that writes it."


def remove_stale_checkpoints(path):
    """After `path` is written: remove the folder's other checkpoint-<epoch>.pth.tar files (earlier runs with other
    epochs), so that nothing can load a stale one in its place."""
    if not is_main_process():
        return
    path = Path(path)
    for old in path.parent.iterdir():
        if CHECKPOINT_RE.match(old.name) and old.name != path.name:
            old.unlink()


# ---- JSON records shared by concurrent runs -----------------------------------------------------------------------
@contextmanager
def locked(path):
    """An exclusive lock beside `path` for read-modify-write of files several runs update. Under torchrun only
    rank 0 takes it (the others write nothing, and would wait for the lock at the barrier of rank 0's write)."""
    if not is_main_process():
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_json(path, default=None):
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text() or "{}")
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON: fix or delete the file.") from None


def number(value, what):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} is {value!r}, not a number: fix or regenerate the file.") from None


def baseline_accuracy(path, task, exit_code=3):
    """A task's accuracy in the baseline accuracy JSON; a UserError with `exit_code` (3, as the original's
    "provide the baseline file") when the file or the task's entry is missing."""
    path = Path(path) if path else None
    if path is None or not path.is_file():
        raise UserError(f"baseline accuracy file {path} does not exist: provide the baseline file (run "
                        f"run_pickaback/baseline.sh first).", exit_code=exit_code)
    accs = read_json(path)
    if not isinstance(accs, dict):
        raise UserError(f"{path} is not a JSON object of task accuracies: rerun run_pickaback/baseline.sh.")
    if task not in accs:
        raise UserError(f"{path} has no accuracy for {task}: run the baseline of that task first.",
                        exit_code=exit_code)
    return number(accs[task], f"the accuracy of {task} in {path}")


def read_record(path):
    """record.txt ({sparsity: accuracy}, with the unpruned "0.0"), checked: a UserError naming the file when it is
    missing, empty, not JSON, or holds anything but numbers."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise UserError(f"record file {path} is {'empty' if path.is_file() else 'missing'}: run "
                        f"run_pickaback/wo_backbone.sh for this task first.")
    record = read_json(path)
    if not isinstance(record, dict) or "0.0" not in record:
        raise UserError(f"record file {path} has no unpruned accuracy \"0.0\": rerun run_pickaback/wo_backbone.sh "
                        f"for this task.")
    return {str(k): number(v, f"the accuracy of sparsity {k} in {path}") for k, v in record.items()}


def update_json(path, updates):
    """Read-modify-write a JSON object under a lock and write it atomically; returns the new content."""
    with locked(path):
        data = read_json(path, {})
        data.update(updates)
        atomic_write(path, lambda f: f.write(json.dumps(data).encode()))
    return data
