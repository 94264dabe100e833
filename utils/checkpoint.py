"""Checkpoint files: atomic writes, `weights_only=True` loads, and finding a folder's checkpoint (spec §1.7)."""
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import fcntl
import torch

from utils.errors import UserError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.pth\.tar$")


def checkpoint_path(folder, epoch):
    return Path(folder) / f"checkpoint-{int(epoch)}.pth.tar"


def atomic_write(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state, path):
    """Write to a temporary file in the same folder and rename it, so an interrupted save leaves no torn file."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: run the stage that writes it first.")
    return torch.load(path, map_location=map_location, weights_only=True)


def find_checkpoint(folder):
    """The checkpoint of a folder: the one with the highest epoch number (no hard-coded epochs, spec §10.4)."""
    folder = Path(folder)
    found = sorted(((int(m.group(1)), p) for p in folder.glob("checkpoint-*.pth.tar")
                    if (m := CHECKPOINT_RE.match(p.name))), reverse=True) if folder.is_dir() else []
    if not found:
        raise UserError(f"no checkpoint-<epoch>.pth.tar in {folder}: run the stage that writes it first.")
    return found[0][1]


# ---- JSON records shared by concurrent runs -----------------------------------------------------------------------
@contextmanager
def locked(path):
    """An exclusive lock beside `path` for read-modify-write of files several runs update."""
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


def update_json(path, updates):
    """Read-modify-write a JSON object under a lock and write it atomically; returns the new content."""
    with locked(path):
        data = read_json(path, {})
        data.update(updates)
        atomic_write(path, lambda f: f.write(json.dumps(data).encode()))
    return data
