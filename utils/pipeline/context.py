"""One dataset config's run: its config, where its files live, which tasks, whether finished work is redone."""
import hashlib
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from models.build import check_model_config
from utils.checkpoint import load_checkpoint
from utils.config import REPO_ROOT, load_dataset_config
from utils.data import model_config
from utils.errors import UserError
from utils.images import walk
from utils.layout import Layout
from utils.pipeline.settings import switch
from utils.tracking import DEFAULT_TRACKER, tracker_of
from utils_pickaback.backbone_search import target_ids


def work_dir(env=None):
    """$MMPAB_WORK_DIR, else the repository: where checkpoints_perceiver_io/, logs_perceiver_io/ and the pickaback
    CSVs go, for the stage scripts and the entry points alike."""
    env = os.environ if env is None else env
    return Path(env.get("MMPAB_WORK_DIR") or REPO_ROOT)


def duration(seconds):
    """Seconds in words a person reads at a glance: 45 s, 3 min 20 s, 2 h 05 min, 3 d 4 h."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {m:02d} min"
    days, h = divmod(hours, 24)
    return f"{days} d {h} h"


@dataclass
class Clock:
    """Where a run stands while it runs: the stage (k of n), the task of the stage (i of m), the time since the run
    began, and the time the stage has left, estimated from the tasks this run has worked on in the stage (skipped
    tasks took no time and are not counted)."""
    began: float = field(default_factory=lambda: time.monotonic())
    stage: str = ""
    position: tuple = (1, 1)                        # (k, n) of the stage
    stage_began: float = 0.0
    worked: list = field(default_factory=list)      # seconds of each task worked on in the current stage
    stage_times: dict = field(default_factory=dict)

    def begin_stage(self, name, k=1, n=1):
        self.stage, self.position, self.stage_began, self.worked = name, (k, n), time.monotonic(), []

    def end_stage(self):
        self.stage_times[self.stage] = time.monotonic() - self.stage_began

    def finished(self, seconds):
        """A task of the current stage was worked on for `seconds`."""
        self.worked.append(seconds)

    def line(self, i, m, workers=1):
        """Where the run stands at the start of task i of m of the current stage (`workers` working in
        parallel)."""
        k, n = self.position
        text = (f"[stage {k}/{n} {self.stage}, task {i}/{m}: {duration(time.monotonic() - self.began)} so far; ")
        if not self.worked:
            return text + "no task of this stage finished in this run yet, nothing to estimate the time left from]"
        mean = sum(self.worked) / len(self.worked)
        left = mean * (m - i + 1) / max(min(workers, m - i + 1), 1)
        later = f", then {n - k} later stage(s)" if k < n else ""
        return (text + f"about {duration(left)} left in this stage{later} (from {len(self.worked)} task(s) worked on "
                f"in this run, {duration(mean)} each)]")

    def summary(self):
        """The time each stage took, and in all."""
        parts = ", ".join(f"{name} {duration(seconds)}" for name, seconds in self.stage_times.items())
        return f"time per stage: {parts}; {duration(time.monotonic() - self.began)} in all"


@dataclass
class Run:
    cfg: object
    work_dir: Path
    task_ids: list = field(default_factory=list)
    force: bool = False
    loader: dict = field(default_factory=dict)      # data-loader options that change no result (workers, ...)
    tracker: str = DEFAULT_TRACKER                  # where training curves go (utils/tracking.py): TRACKER
    expname: str = None                             # the curves' experiment name (default: by stage; --expname)
    clock: Clock = field(default_factory=Clock)     # where the run stands (the log line at the start of each task)

    @classmethod
    def from_environment(cls, config, env=None, data_root=None):
        """The run the stage scripts describe: MMPAB_DATA_ROOT, MMPAB_WORK_DIR, TASK_IDS (default: every task),
        FORCE=1 (redo finished tasks) and TRACKER (tensorboard, wandb or none)."""
        env = os.environ if env is None else env
        cfg = load_dataset_config(config, data_root or env.get("MMPAB_DATA_ROOT"), check_folders=False)
        ids = target_ids(cfg, env.get("TASK_IDS") or "all", "TASK_IDS")
        try:
            force = switch(env.get("FORCE") or "0")
        except ValueError:
            raise UserError(f"FORCE={env.get('FORCE')!r} must be 1 (redo finished tasks) or 0: change it in the "
                            f"environment.") from None
        return cls(cfg, work_dir(env), ids, force, tracker=tracker_of(env.get("TRACKER")))

    def layout(self, arch="perceiver_io"):
        return Layout(self.work_dir, self.cfg.name, arch)

    def tasks(self):
        return [(t, self.cfg.task_name(t)) for t in self.task_ids]

    @cached_property
    def model_config(self):
        """The network's hyperparameters the config asks for (utils.data.model_config), computed once."""
        return model_config(self.cfg)

    def check_checkpoint(self, path):
        """The checkpoint at `path`, loaded (weights only) and checked to be of the network the config asks for; a
        UserError naming the file otherwise. Every stage that reads a checkpoint checks it before any work."""
        ckpt = load_checkpoint(path)
        check_model_config(ckpt, self.model_config, path)
        return ckpt

    def data_config(self, group):
        """What a task's data depends on besides its files: the config (without its task list), its model section
        and the task's modality; cheap to compute (tools/status.py compares it)."""
        raw = {k: v for k, v in self.cfg.raw.items()
               if k not in ("DATASETS", "num_groups", "modality", "original_task_ids", "clients")}
        return {"config": raw, "model": self.cfg.model, "modality": self.cfg.modality(group)}

    def data_settings(self, group):
        """What a task's data depends on: its data_config and the names and sizes of the files, found by the walk
        the loaders make (links followed; one that loops is refused, naming it)."""
        listing = []
        for split in ("train", "test"):
            folder = self.cfg.task_folder(group, split)
            files = [Path(top, f) for top, _, names in walk(folder) for f in names]
            listing += sorted(f"{p.relative_to(folder)}:{p.stat().st_size}" for p in files if p.is_file())
        digest = hashlib.sha256("\n".join(listing).encode()).hexdigest()
        return {**self.data_config(group), "files": digest}
