"""User-caused errors (bad paths, configs, files, a full disk, a read-only folder) and interruptions (Ctrl-C), that
entry points report as one line without a traceback."""
import errno
import functools
import json
import os
import signal
import sys
import time
from contextlib import suppress

# Ctrl-C: this line on stderr and the shell's exit code of a SIGINT (128 + 2)
INTERRUPTED = "interrupted: rerun the same command to continue"
INTERRUPTED_EXIT = 130

# Set in the environment of a process whose parent reports for it: "interrupts" (a GPUS worker: its parent prints
# the interruption line once, its errors still come back through its output) or "all" (a rank started by
# utils.distributed.launch: its errors go to torchelastic's error file, which the launcher prints once).
PARENT_REPORTS = "MMPAB_PARENT_REPORTS"

# what to do about an operating system error, by errno
ADVICE = {
    errno.ENOSPC: "free space on that disk and rerun",
    errno.EDQUOT: "free space within your disk quota and rerun",
    errno.EACCES: "give yourself access to it (or its folder), or use another folder (MMPAB_WORK_DIR, "
                  "MMPAB_DATA_ROOT or the option naming it), and rerun",
    errno.EROFS: "that file system is mounted read-only: use a writable folder (MMPAB_WORK_DIR or the option "
                 "naming it) and rerun",
    errno.EIO: "the disk reported an input/output error: check the disk (dmesg) and rerun",
    errno.ENOENT: "check that the path exists and rerun",
    errno.EMFILE: "raise the limit of open files (ulimit -n) and rerun",
    errno.EPIPE: "what read the output stopped (e.g. a `| head`): rerun without it",
}
ADVICE[errno.EPERM] = ADVICE[errno.EACCES]
ADVICE[errno.ENOTDIR] = ADVICE[errno.ENOENT]
ADVICE[errno.ENFILE] = ADVICE[errno.EMFILE]


class UserError(Exception):
    """An error the user can fix; its message is one sentence naming the file and the fix. `exit_code` is what the
    entry point exits with (1 unless a stage protocol says otherwise, e.g. 3 = baseline file missing)."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


def os_error_in(error):
    """The OSError that `error` is, or was raised from (torch.save turns the OSError of a failed write into a
    RuntimeError; the OSError stays in its context); None when there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        if isinstance(error, UserError):                         # already says what happened
            return None
        seen.add(id(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def os_error_message(error, doing="use", path=None):
    """One sentence for an OSError: `doing` (e.g. "write") what `path` names (default: the error's file names),
    the operating system's reason and what to do."""
    reason = reason_of(error)
    paths = [str(p) for p in ((path,) if path is not None else (error.filename, error.filename2)) if p is not None]
    if not paths:
        return f"{reason} (the error names no file): {advice(error)}."
    return f"cannot {doing} {' and '.join(paths)} ({reason}): {advice(error)}."


def reason_of(error):
    """The operating system's reason for an OSError (e.g. "Read-only file system"), on one line."""
    return " ".join(str(error.strerror or error).split()) or type(error).__name__


def advice(error):
    """What to do about an OSError."""
    return ADVICE.get(error.errno, "fix the cause and rerun")


def record_for_launcher(message, exit_code):
    """In a rank started by torchelastic: write `message` to the rank's error file, where the launcher reads it.
    Returns whether it was written."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    try:
        with open(path, "w") as f:
            json.dump({"message": message, "timestamp": int(time.time()), "exit_code": exit_code}, f)
    except OSError:
        return False
    return True


def launched_rank():
    """This process's rank (a string) when torchelastic (torchrun, utils.distributed.launch) started it, else None."""
    return os.environ.get("RANK", "0") if "TORCHELASTIC_RUN_ID" in os.environ else None


def fail(message, exit_code):
    """Print `error: <message>` on stderr and exit with `exit_code`. A rank under torchrun records the message in its
    error file instead: utils.distributed.launch prints the one message itself; under a plain torchrun rank 0
    prints it (and torchrun's summary shows it)."""
    rank = launched_rank()
    recorded = rank is not None and record_for_launcher(message, exit_code)
    if rank is None or (rank == "0" and not (recorded and os.environ.get(PARENT_REPORTS) == "all")):
        print(f"error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def report_user_errors(main):
    """Decorator for entry points: a UserError or an OSError (no space, read-only file system, permission denied)
    is printed as `error: <sentence>` and exits with its code (an OSError: 1); Ctrl-C prints
    `interrupted: rerun the same command to continue` and exits 130 (a process whose parent reports for it exits
    quietly). No traceback."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            fail(str(e), e.exit_code)
        except OSError as e:
            fail(os_error_message(e), 1)
        except KeyboardInterrupt:
            with suppress(ValueError):                           # a second Ctrl-C (or torchrun's) while exiting
                signal.signal(signal.SIGINT, signal.SIG_IGN)     # (only the main thread sets handlers)
            if not os.environ.get(PARENT_REPORTS) and launched_rank() in (None, "0"):
                print(INTERRUPTED, file=sys.stderr)
            sys.exit(INTERRUPTED_EXIT)
    return wrapper
