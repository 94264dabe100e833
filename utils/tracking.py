"""Training curves: the per-epoch scalars of every training step, written while it trains, for TensorBoard
(`torch.utils.tensorboard`) or Weights & Biases (`wandb`, offline unless WANDB_MODE says otherwise), or not at all.

    runs = tracking.TaskRuns("tensorboard", logs, "wo_backbone/demo/group3", ...)   # a task's (Task.curves())
    with tracking.curve(runs, "finetune_x1", first=1) as curve:   # one run per training step of the task
        curve.log(epoch, {"train/loss": 0.41, "val/accuracy": 87.5, ...})

A step's run is `<logs>/tensorboard/<task name>/<step>`; the settings of the stage are its hyperparameters. A
resumed step continues its run at the epoch it resumes from: the writer is opened with `purge_step` = that epoch, so
TensorBoard hides any point an interrupted attempt wrote from there on (the attempt is killed between writing an
epoch's point and saving its resume state), and the curve has each epoch once. Only rank 0 of a torchrun job
writes. Nothing here touches a random stream or a result; `wandb` is imported only when it is the tracker.
"""
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from utils.distributed import is_main_process
from utils.errors import UserError

log = logging.getLogger("root")

TRACKERS = ("tensorboard", "wandb", "none")
DEFAULT_TRACKER = "tensorboard"
TENSORBOARD_DIR = "tensorboard"               # under logs_perceiver_io/
WANDB_PROJECT = "mm-pick-a-back"              # the original's project
# the original's experiment names (its --expname), by stage: W&B names runs <expname>_<dataset>_<arch>
EXPNAMES = {"baseline": "baseline", "wo_backbone": "wo_backbone", "w_backbone_MM": "w_backbone"}


def tracker_of(text):
    """TRACKER's value, checked: tensorboard (the default), wandb or none."""
    value = (text or DEFAULT_TRACKER).strip().lower()
    if value not in TRACKERS:
        raise UserError(f"TRACKER={text!r} must be one of {', '.join(TRACKERS)}: change it in the environment.")
    if value == "wandb" and importlib.util.find_spec("wandb") is None:       # said before any work starts
        raise UserError("TRACKER=wandb needs the wandb package: pip install wandb, or use TRACKER=tensorboard or "
                        "none.")
    return value


@dataclass(frozen=True)
class TaskRuns:
    """Where and how the training steps of one task are tracked: the tracker, the logs folder, the task's run name
    (`<stage>/<config>/<task path>`), its stage, config, task group and architecture, the settings, and the
    experiment name W&B runs are named after (default: the original's for the stage)."""
    kind: str
    logs: Path
    name: str
    stage: str
    config: str
    group: str
    arch: str = "perceiver_io"
    hparams: dict = field(default_factory=dict)
    expname: str = None

    @property
    def experiment(self):
        return self.expname or EXPNAMES.get(self.stage, self.stage)


class Curve:
    """A step's curve that writes nothing (TRACKER=none, a rank other than 0, or a task not tracked)."""

    def log(self, epoch, values):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def plain_hparams(settings):
    """The settings as hyperparameter values TensorBoard and W&B take: numbers, strings and booleans."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, (list, tuple)):
            value = " ".join(map(str, value))
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class TensorBoardCurve(Curve):
    """One step's run in TensorBoard's event files, continuing at epoch `first`."""

    def __init__(self, runs, step, first):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
        self.dir = Path(runs.logs) / TENSORBOARD_DIR / runs.name / step
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=first)
        exp, start, self.end = hparams({**plain_hparams(runs.hparams), "step": step},
                                       {"val/accuracy": 0.0, "train/accuracy": 0.0})
        self.writer.file_writer.add_summary(exp, first)
        self.writer.file_writer.add_summary(start, first)

    def log(self, epoch, values):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()                                       # a curve a watching TensorBoard sees each epoch

    def close(self):
        self.writer.file_writer.add_summary(self.end)
        self.writer.close()


def wandb_id(runs, step):
    """A stable W&B run id per (task, step): a resumed step continues its run."""
    return hashlib.sha256(f"{runs.name}/{step}".encode()).hexdigest()[:16]


class WandbCurve(Curve):
    """One step's W&B run, with the original's project, name, group and tags; offline unless WANDB_MODE is set."""

    def __init__(self, runs, step, first):
        import wandb                                              # (tracker_of checked that it is installed)
        expname = runs.experiment
        directory = None if os.environ.get("WANDB_DIR") else Path(runs.logs)
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE") or "offline"
        try:
            self.run = wandb.init(project=WANDB_PROJECT, name=f"{expname}_{runs.group}_{runs.arch}",
                                  group=f"{expname}_{runs.arch}", tags=[runs.group, expname], job_type=step,
                                  config={**plain_hparams(runs.hparams), "step": step, "run": runs.name,
                                          "config_name": runs.config},
                                  id=wandb_id(runs, step), resume="allow", dir=directory, mode=mode,
                                  reinit="create_new", settings=wandb.Settings(console="off", silent=True,
                                                                               show_info=False))
        except Exception as e:                                    # noqa: BLE001 (W&B's own errors: login, network)
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"W&B could not start the run of {runs.name}/{step} (WANDB_MODE={mode}): {first_line}; "
                            f"unset WANDB_MODE (offline), or use TRACKER=tensorboard.") from None
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")        # epochs on the x axis, in any order

    def log(self, epoch, values):
        self.run.log({"epoch": epoch, **values})

    def close(self):
        self.run.finish()


CURVES = {"tensorboard": TensorBoardCurve, "wandb": WandbCurve}


def curve(runs, step, first):
    """The curve of training step `step` of the task whose runs are `runs` (a TaskRuns, or None: not tracked),
    continuing at epoch `first` (the first epoch this attempt logs)."""
    if runs is None or runs.kind not in CURVES or not is_main_process():
        return Curve()
    return CURVES[runs.kind](runs, step, first)
