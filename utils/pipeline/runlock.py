"""One run at a time on a work folder and dataset config: two runs would train the same tasks side by side. A run
holds logs_perceiver_io/run_<cfg>.lock (an fcntl lock, which ends with the process however it ends, so a killed
run leaves no hold) with its process id, host and start; a second run names them in one sentence and stops before
any work. The processes of one run (GPUS workers, torchrun ranks) inherit the hold through the environment
(HELD). Readers (tools/status.py, tools/report.py) never take it: `holder` says who holds it."""
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import fcntl

from utils.checkpoint import cannot_write
from utils.distributed import is_main_process
from utils.errors import UserError

HELD = "MMPAB_RUN_LOCK"          # the lock file a process of this run holds, for its child processes


@contextmanager
def holding(path, what):
    """Hold the run lock at `path` while the block runs (`what`: the stage, for the holder's record); a UserError
    naming the process that holds it when another live run does. A process whose parent run holds it (HELD), and
    a torchrun rank other than 0, go on without taking it."""
    path = Path(path).resolve()
    if os.environ.get(HELD) == str(path) or not is_main_process():
        yield
        return
    lock, previous = take(path, what), os.environ.get(HELD)
    os.environ[HELD] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(HELD, None)
        else:
            os.environ[HELD] = previous
        path.unlink(missing_ok=True)           # while still held: a run that opened it meanwhile opens it again
        lock.close()


def take(path, what):
    """The open lock file at `path`, locked, holding this process's record."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(path, "a+")
        except OSError as e:
            raise UserError(cannot_write(path, e)) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise UserError(held_by(path, holder(path))) from None
        if path.is_file() and os.fstat(lock.fileno()).st_ino == path.stat().st_ino:    # not one its holder removed
            lock.seek(0)
            lock.truncate()
            lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                   "what": what}))
            lock.flush()
            return lock
        lock.close()


def holder(path):
    """The record ({pid, host, started, what}) of the run that holds or held the lock at `path`; None when there
    is none or it cannot be read (being written)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "pid" in record else None


def held_by(path, record):
    """The sentence of a run that finds the lock at `path` held by the run of `record`."""
    who = "another process" if record is None else \
        f"pid {record['pid']} on {record.get('host')}, running {record.get('what')} since {since(record)},"
    return (f"another run of this config works on {Path(path).parent.parent}: {who} holds {path}; wait for it to "
            f"end or stop it, then rerun (two runs on one folder would train the same tasks).")


def since(record):
    """When the run of `record` began, as a date and time."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started"))))
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unknown time"
