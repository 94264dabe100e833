"""Checkpoint files, JSON records and shared CSVs: atomic writes, `weights_only=True` loads, locked read-modify-write,
and the checks every reader gets: a JSON file must hold an object, a CSV must parse with its expected header, and
the baseline accuracy file and record.txt hold accuracies in [0, 1]."""
import errno
import json
import logging
import math
import os
import pickle
import re
import tempfile
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path

import fcntl
import pandas as pd
import torch

from utils.distributed import barrier, is_main_process
from utils.errors import UserError, advice, os_error_in, reason_of

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
    """Any OSError while writing `path` (creating its folder, the temporary file, writing, renaming) is a UserError
    naming `path` and the reason; `path` is left as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(cannot_write(path, e)) from None
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        error = os_error_in(e) if isinstance(e, Exception) else None
        if error is not None:
            raise UserError(cannot_write(path, error)) from None
        raise


def cannot_write(path, error):
    """The sentence of an OSError while writing `path` (a full disk keeps its own wording)."""
    if error.errno in NO_SPACE:
        return (f"no space left on {path.parent} while writing {path.name}: free space and rerun; {path} was not "
                f"changed.")
    reason = reason_of(error)
    if isinstance(error.filename, str) and Path(error.filename) in path.parents:
        reason = f"{error.filename}: {reason}"                    # a folder of it could not be created
    return f"cannot write {path} ({reason}): {advice(error)}; {path} was not changed."


def save_checkpoint(state, path):
    """Write to a temporary file in the same folder and rename it, so an interrupted save leaves no torn file."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu", mmap=False):
    """The checkpoint at `path`, loaded weights-only (a UserError naming the file when it is missing, not a
    checkpoint or carries pickled code); `mmap` maps its tensors instead of reading them (a reader that needs only
    the small entries)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: run the stage that writes it first.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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
    epochs), so that nothing can load a stale one in its place, naming them in the log."""
    if not is_main_process():
        return
    path = Path(path)
    stale = sorted(old for old in path.parent.iterdir() if CHECKPOINT_RE.match(old.name) and old.name != path.name)
    for old in stale:
        old.unlink()
    if stale:
        log.info(f"removed the checkpoint(s) of an earlier run beside {path.name} in {path.parent}: "
                 f"{', '.join(p.name for p in stale)}")


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


def read_json(path, default=None, kind=dict):
    """The JSON value in `path` (an empty file: {}), `default` when there is no file. Every JSON file this project
    keeps is an object, so another `kind` of value (a list, a number, null...) is a UserError naming the file, as is
    a file that is not JSON: a caller never meets a value it does not expect."""
    path = Path(path)
    if not path.is_file():
        return default
    try:
        value = json.loads(path.read_text() or "{}")
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON: fix or delete the file.") from None
    if not isinstance(value, kind):
        raise UserError(f"{path} holds {json_kind(value)} instead of {json_kind(kind())}: fix or delete the file.")
    return value


def json_kind(value):
    """What a JSON value is, in JSON's words ("a JSON array", "JSON null")."""
    if value is None or isinstance(value, bool):
        return f"JSON {json.dumps(value)}"
    return f"a JSON {({dict: 'object', list: 'array', str: 'string'}.get(type(value), 'number'))}"


def number(value, what, low=-math.inf, high=math.inf):
    """`value` (read from a file the user may edit) as a finite number in [low, high]; else a UserError naming
    `what` (the key and the file) and the value."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        result = None
    if result is None or not math.isfinite(result) or not low <= result <= high:
        bounds = f" in [{low:g}, {high:g}]" if math.isfinite(low) and math.isfinite(high) else \
            f" >= {low:g}" if math.isfinite(low) else ""
        raise UserError(f"{what} is {value!r}, not a finite number{bounds}: fix or regenerate the file.")
    return result


def accuracy(value, what):
    """An accuracy read from a file: a finite number in [0, 1]."""
    return number(value, what, 0.0, 1.0)


def checked_columns(frame, path, ranges):
    """`frame` (a CSV read from `path`) with every value of the columns in `ranges` ({column: (low, high)}) a
    finite number in its range; else a UserError naming the file, the row, the column and the value."""
    for column, (low, high) in ranges.items():
        if column in frame.columns:
            for row, value in enumerate(frame[column].tolist(), start=2):      # line 1 is the header
                number(value, f"{column} on line {row} of {path}", low, high)
    return frame


def baseline_accuracy(path, task, exit_code=3):
    """A task's accuracy in the baseline accuracy JSON; a UserError with `exit_code` (3, as the original's
    "provide the baseline file") when the file or the task's entry is missing."""
    path = Path(path) if path else None
    if path is None or not path.is_file():
        raise UserError(f"baseline accuracy file {path} does not exist: provide the baseline file (run "
                        f"run_pickaback/baseline.sh first).", exit_code=exit_code)
    accs = read_json(path)
    if task not in accs:
        raise UserError(f"{path} has no accuracy for {task}: run the baseline of that task first.",
                        exit_code=exit_code)
    return accuracy(accs[task], f"the accuracy of {task} in {path}")


def read_record(path):
    """record.txt ({sparsity: accuracy}, with the unpruned "0.0"), checked: a UserError naming the file when it is
    missing, empty, not JSON, or holds anything but sparsities in [0, 1) and accuracies in [0, 1]."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise UserError(f"record file {path} is {'empty' if path.is_file() else 'missing'}: run "
                        f"run_pickaback/wo_backbone.sh for this task first.")
    record = read_json(path)
    if "0.0" not in record:
        raise UserError(f"record file {path} has no unpruned accuracy \"0.0\": rerun run_pickaback/wo_backbone.sh "
                        f"for this task.")
    for k in record:
        number(k, f"the sparsity key {k!r} in {path}", 0.0, 1.0 - 1e-12)
    return {str(k): accuracy(v, f"the accuracy of sparsity {k} in {path}") for k, v in record.items()}


def read_table(path, columns):
    """The CSV table at `path` (an empty one with `columns` when there is none), checked before anything merges
    into it: a UserError naming the file when it does not parse (a row with an extra field, a torn quote, not
    UTF-8) or its header is not `columns`."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    fix = f"correct the file or move it away, then rerun; {path} was not changed."
    try:
        with warnings.catch_warnings():
            # a first row with one field more than the header would otherwise become the index, silently
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, index_col=False)
    except pd.errors.ParserWarning:
        raise UserError(f"{path} has a row with more fields than its header: {fix}") from None
    except pd.errors.ParserError as e:
        raise UserError(f"{path} is not a readable CSV ({str(e).strip().split('C error: ')[-1]}): {fix}") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty, not a CSV with the header {','.join(columns)}: {fix}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): {fix}") from None
    if list(table.columns) != list(columns):
        raise UserError(f"{path} has the columns {','.join(map(str, table.columns))} instead of "
                        f"{','.join(columns)}: {fix}")
    return table


def update_csv(path, rows, replaces, columns):
    """Read-modify-write a CSV several runs update, under a lock and atomically: the rows of the table for which
    `replaces(table)` (a boolean Series) holds are dropped and `rows` ([{column: value}]) appended. Returns the new
    table. A table that does not parse or has other columns is a UserError naming it, and is left as it is."""
    path = Path(path)
    with locked(path):
        old = read_table(path, columns)
        kept = old[~replaces(old)] if len(old) else old
        new = pd.DataFrame(rows, columns=columns)
        table = new if kept.empty else pd.concat([kept, new], ignore_index=True)
        text = table.to_csv(index=False, lineterminator="\n")
        atomic_write(path, lambda f: f.write(text.encode()))
    return table


def update_json(path, updates):
    """Read-modify-write a JSON object under a lock and write it atomically; returns the new content."""
    with locked(path):
        data = read_json(path, {})
        data.update(updates)
        atomic_write(path, lambda f: f.write(json.dumps(data).encode()))
    return data
