"""The lifecycle of one task of a stage, written once for every stage (in the spirit of Avalanche's
`before_training_exp` / `after_training_exp`):

    task = Task(run, settings, "baseline task 3 (group3)", folder.manifest, inputs={...})
    if task.skip():                 # before: finished with these settings and inputs, files intact -> one line
        continue
    with task.working(log_path):    # the task's log file; a UserError names the stage and the task
        ...                         # its inputs loaded and checked
        task.replacing(folder)      # the task marked unfinished (manifest removed), an interrupted attempt's
        resume = task.resume(path)  # temporary files removed; resume states are keyed on the task's identity
        task.finish(outputs, results)   # after: the manifest written last, the resume states removed

A task's identity is its stage, the identity fields of its settings and its inputs (fingerprints of the files and
data it reads); its manifest records the settings whole (utils/manifest.py, `Manifest`).
"""
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from utils import tracking
from utils.checkpoint import atomic_write
from utils.distributed import is_main_process
from utils.errors import UserError
from utils.manifest import Manifest
from utils.runtime import LOG_FORMAT, LogFile
from utils.resume import Resume

log = logging.getLogger("root")


@contextmanager
def task_log(path):
    """Also append the log to `path` (the task's train.log, as the original) while a task is worked on."""
    if not is_main_process() or path is None:                     # under torchrun only rank 0 writes logs
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = LogFile(path, mode="a")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


@contextmanager
def failing_task(stage, what):
    """A user error inside a task names the stage and the task."""
    try:
        yield
    except UserError as e:
        raise UserError(f"stage {stage}, {what}: {e}", exit_code=e.exit_code) from None


def task_data(run, stage, what, group):
    """The fingerprint of `group`'s data (Run.data_settings), which a task's inputs hold; a UserError in it (a data
    link that loops) names the stage and the task, as one inside the task's work does."""
    with failing_task(stage, what):
        return run.data_settings(group)


def chosen_lr(data):
    """{"fast_lr": rate} of a task trained with the fast recipe (the range test's choice, utils.trainer), for its
    stage.json; {} otherwise."""
    return {} if data.fast_lr is None else {"fast_lr": float(f"{data.fast_lr:.6g}")}


def write_json(path, data):
    atomic_write(path, lambda f: f.write(json.dumps(data).encode()))


def task_curves(run, settings, folder, group=None):
    """Where the training curves of the task whose files are in `folder` go: the run's TRACKER, the run name
    <stage>/<cfg>/<the task's folder> (utils/layout.py), the settings as hyperparameters."""
    layout = run.layout(getattr(settings, "arch", "perceiver_io"))
    return tracking.TaskRuns(run.tracker, layout.logs, layout.curves_name(folder, settings.STAGE), settings.STAGE,
                             run.cfg.name, group or Path(folder).name, layout.arch, settings.record(), run.expname)


@contextmanager
def marked_running(manifest, what, device=None):
    """While a process works on a task: a marker beside its manifest (Manifest.running) naming the process, its
    host (the node of a Ray cluster), its device and GPU (the CUDA_VISIBLE_DEVICES a Ray worker was given) and when
    it began, which tools/status.py reads to tell a running task from an interrupted one; removed when the work
    ends, however it ends (a killed process leaves it, and status sees that the process is gone)."""
    write_json(manifest.running, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                  "what": what, "device": device, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")})
    try:
        yield
    finally:
        if is_main_process():
            manifest.running.unlink(missing_ok=True)


class Task:
    """One unit of a stage's work and its named steps: skip, working, resume, finish."""

    def __init__(self, run, settings, what, manifest, inputs=None, group=None, position=(1, 1)):
        """`what` names the task in errors ("stage <stage>, <what>: ...") and, after the stage's name unless it
        starts with it, in the log; `group` is the task (dataset group) it trains, if it trains one; `position`
        is (i, m): the task is the i-th of the m of its stage in this run."""
        self.run, self.settings, self.what, self.group, self.position = run, settings, what, group, position
        self.began = None
        self.label = what if what.startswith(settings.STAGE) else f"{settings.STAGE} {what}"
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
        inputs = json.loads(json.dumps(inputs or {}))
        self.identity = {"stage": settings.STAGE, "settings": settings.identity(), "inputs": inputs}
        self.record = {"stage": settings.STAGE, "settings": settings.record(), "inputs": inputs}
        self.resumes = []

    def skip(self, also=True):
        """Before the work: True (and one log line) when the task is finished with this identity and `also` holds
        (a stage's extra check of its outputs); else False, with the reason when an earlier record exists. First,
        where the run stands (stage k of n, task i of m, the time so far and left)."""
        log.info(self.run.clock.line(*self.position))
        reason = "FORCE=1" if self.run.force else self.manifest.stale_reason(self.identity)
        if reason is None and also:
            log.info(f"{self.label}: finished with these settings, skipped (FORCE=1 redoes it)")
            return True
        if reason is None:
            reason = "what it wrote was changed after it finished"
        if reason != "not finished":
            log.info(f"{self.label}: redone: {reason}")
        return False

    @contextmanager
    def working(self, log_path=None):
        """The work of the task: logged to `log_path` too, user errors naming the stage and the task. Its inputs are
        loaded and checked first; `replacing` then marks it unfinished, before any output is replaced."""
        self.began = time.monotonic()
        with failing_task(self.settings.STAGE, self.what), task_log(log_path), \
                marked_running(self.manifest, self.label, getattr(self.settings, "device", None)):
            yield self

    def curves(self):
        """Where the task's training curves go (the run's TRACKER), named after the task's folder: what its
        training steps take as `curves` (utils/tracking.py)."""
        return task_curves(self.run, self.settings, self.manifest.path.parent, self.group)

    def replacing(self, folder=None):
        """Every input has passed its checks and the outputs are about to be replaced: the task is marked unfinished
        (its manifest removed), and temporary files an interrupted attempt left in `folder` (atomic writes rename a
        temporary file into place) are removed; resume states stay."""
        self.manifest.clear()
        if folder is not None and is_main_process() and Path(folder).is_dir():
            for tmp in Path(folder).rglob(".*.tmp"):
                tmp.unlink()

    def resume(self, path):
        """A resume state at `path`, continued only by a rerun with the same task identity."""
        return self.track(Resume(path, self.identity))

    def track(self, state):
        """Remove `state` (a resume state: a training step's, utils/pipeline/cpg_steps.py, or a stage's progress)
        when the task is finished."""
        self.resumes.append(state)
        return state

    def finish(self, outputs, results=None, shared=()):
        """After the work: the manifest (naming exactly the files the next stage reads, with their digests except
        for the `shared` ones other tasks rewrite too) is written last, then the resume states are removed."""
        self.manifest.write(self.record, outputs, results, shared)
        for resume in self.resumes:
            resume.clear()
        if self.began is not None:
            self.run.clock.finished(time.monotonic() - self.began)
