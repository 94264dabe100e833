"""The CPG training steps of one task, shared by the backbone stage, the target stage and CPG_MM_main_normal.py:
finetuning at one width (picking: the piggymask over earlier tasks' weights; the free weights trained), growing
(finetuning again wider while the task stays below its baseline) and one gradual-pruning stage (compacting).

A step's settings are a small typed object built from a stage's settings or from the entry point's flags; its
resume state is keyed on them (with the baseline, the start checkpoint and the data), and lives in the folder the
step writes, so a step started by a stage script is continued by the entry point and the other way round.
"""
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from models.build import Network
from utils.distributed import is_main_process
from utils.layout import resume_file
from utils.manifest import file_digest
from utils.resume import Resume
from utils.trainer import Outcome, begin, cpg_finetune, cpg_prune, start_cpg_task

log = logging.getLogger("root")


@dataclass(frozen=True)
class FinetuneStep:
    """CPG finetuning of the active task at one width (CPG_MM_main_normal.py --mode finetune)."""
    epochs: int
    lr: float
    lr_mask: float
    weight_decay: float
    batch_size: int
    num_classes: int
    seed: int
    recipe: str
    amp: bool
    max_width: float
    train_per_class: int = 0          # > 0: that many training samples per class (the few-shot comparison)
    reinit_free: bool = False         # the freed weights a task takes start freshly initialised, not at zero

    @classmethod
    def of(cls, s, train_per_class=0):
        """The step of a stage's settings (BackboneSettings, TargetSettings or SequenceSettings)."""
        return cls(s.epochs, s.init_lr, s.lr_mask, s.weight_decay, s.batch_size, s.num_classes, s.seed, s.recipe,
                   s.amp, s.max_network_width_multiplier, train_per_class, getattr(s, "reinit_free", False))


@dataclass(frozen=True)
class PruneStep:
    """One gradual-pruning stage of the task a network ends with, from `initial` to `target` sparsity
    (CPG_MM_main_normal.py --mode prune)."""
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    num_classes: int
    seed: int
    amp: bool
    frequency: int
    interval: int
    max_width: float
    total_num_tasks: int
    initial: float
    target: float

    @classmethod
    def of(cls, s, initial, target):
        """The pruning stage `initial` -> `target` of the backbone stage's settings."""
        return cls(s.nr_epoch_for_each_prune, s.pruning_lr, s.weight_decay, s.batch_size, s.num_classes, s.seed,
                   s.amp, s.pruning_frequency, s.pruning_interval, s.max_network_width_multiplier, s.total_num_tasks,
                   float(initial), float(target))


def step_resume(folder, step, baseline, start, data_settings):
    """The resume state of `step` in `folder`: continued only with the same step settings, baseline accuracy,
    start checkpoint (its content) and data."""
    identity = {"step": type(step).__name__, **dataclasses.asdict(step), "baseline": baseline,
                "start": file_digest(start) if start else None, "data": data_settings}
    return Resume(resume_file(folder), identity)


def network_from(start, config):
    """How a step builds its network again for each width it tries: the checkpoint `start` (rebuilt, checked
    against the model `config`), or a new network."""
    return (lambda: Network.load(start, config)) if start else (lambda: Network.new(config))


def finetune_at(net, data, step, width, baseline, csv_path=None, resume=None, curves=None):
    """Add the task to `net` at `width` (picking and growing to that width) and finetune it, its curves in `curves`
    (the task's tracking.TaskRuns, or None); returns (Outcome, test accuracy, width)."""
    width = start_cpg_task(net, data, width, step.reinit_free)
    log.info(f"task {data.task} ({data.modality}) as task {net.task_id(data.task)} of {net.history} on "
             f"{data.device}; width x{width}, {net.num_parameters()} parameters")
    outcome, acc = cpg_finetune(net, data, epochs=step.epochs, lr=step.lr, lr_mask=step.lr_mask, recipe=step.recipe,
                                weight_decay=step.weight_decay, seed=step.seed, baseline=baseline, width=width,
                                max_width=step.max_width, csv_path=csv_path, resume=resume, curves=curves)
    return outcome, acc, width


def finetune_with_growth(make_net, data, step, width, width_step, baseline, csv_path, resume, curves=None,
                         finetune=finetune_at):
    """Finetune at `width`; while the task stays below its baseline, start again `width_step` wider, up to the
    step's max width. Returns (net, outcome, accuracy, width). A resume state saved at some width continues there
    (the narrower attempts had ended in widening). `curves`: the task's tracking.TaskRuns (None: not tracked).
    `finetune` is one attempt (the GPU check's projection passes one that trains nothing, to count the attempts).
    Without a resume state to continue, the task starts over, and so does its train.csv (`csv_path`)."""
    saved = resume.load()
    if saved is None:
        start_csv(csv_path)
    if saved and saved["phase"]["kind"] == "finetune":
        width = saved["phase"]["width"]
    while True:
        begin(data, step.seed)                                    # the initial weights depend on the seed only
        net = make_net()
        outcome, acc, width = finetune(net, data, step, width, baseline, csv_path, resume, curves)
        if outcome is not Outcome.EXPAND:
            return net, outcome, acc, width
        width = round(min(width + width_step, step.max_width), 4)
        log.info(f"expanding the network to width x{width}")


def start_csv(csv_path):
    """A task started over starts its train.csv afresh: an earlier attempt's rows (a redone task, or one restarted
    after it was interrupted before its first epoch was saved) are removed, with a line naming the file; a resumed
    attempt keeps them and appends."""
    path = Path(csv_path) if csv_path else None
    if path is not None and is_main_process() and path.is_file():
        path.unlink()
        log.info(f"removed {path}, the rows of an earlier attempt: the task starts over")


def prune_stage(net, data, step, baseline, unpruned_acc, csv_path=None, resume=None, curves=None):
    """One gradual-pruning stage, its curve in `curves` (the task's tracking.TaskRuns, or None); returns (Outcome,
    test accuracy or None when the stage did not run)."""
    return cpg_prune(net, data, epochs=step.epochs, lr=step.lr, weight_decay=step.weight_decay, seed=step.seed,
                     initial=step.initial, target=step.target, frequency=step.frequency, interval=step.interval,
                     baseline=baseline, max_width=step.max_width, total_num_tasks=step.total_num_tasks,
                     unpruned_acc=unpruned_acc, csv_path=csv_path, resume=resume, curves=curves)
