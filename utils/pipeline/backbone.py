"""Stage 2, wo_backbone: per task, a CPG backbone from scratch (finetuned, widened while below its baseline), then
gradually pruned along PRUNING_SCHEDULE (compacting), recording the accuracy at every sparsity in record.txt.

Per task, in R = checkpoints_perceiver_io/CPG_single_scratch_woexp/<arch>/<cfg>/<group>: R/scratch/ (the unpruned
backbone), R/gradual_prune/<s>/ (each pruning stage), R/gradual_prune/record.txt, R/train.log, R/train.csv and
R/stage.json. A run killed inside the task continues where it stopped: R/progress.json says which steps are done,
and the step that was running continues from its own resume state.
"""
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from models.build import Network
from utils.checkpoint import CHECKPOINT_RE, atomic_write, baseline_accuracy, read_json
from utils.data import load_task
from utils.distributed import is_main_process
from utils.layout import sparsity_key
from utils.pipeline.cpg_steps import (FinetuneStep, PruneStep, finetune_with_growth, network_from, prune_stage,
                                      step_resume)
from utils.pipeline.lifecycle import Task, failing_task, write_json
from utils.trainer import Outcome, finish_task, save_task_checkpoint

log = logging.getLogger("root")


class Progress:
    """The steps of a task finished so far in an interrupted run (record, width, files written, next pruning
    stage), valid only for the same task identity; removed when the task is finished."""

    def __init__(self, path, identity):
        self.path, self.identity = Path(path), json.loads(json.dumps(identity))

    def load(self):
        data = read_json(self.path) if self.path.is_file() else None
        return data["progress"] if isinstance(data, dict) and data.get("identity") == self.identity else None

    def save(self, progress):
        atomic_write(self.path, lambda f: f.write(json.dumps({"identity": self.identity,
                                                              "progress": progress}).encode()))

    def clear(self):
        if is_main_process():
            self.path.unlink(missing_ok=True)


def backbone_jobs(run, layout):
    """[(task id, group, baseline accuracy)] of the stage, every task's input checked before any work."""
    jobs = []
    for task_id, group in run.tasks():
        with failing_task("wo_backbone", f"task {task_id} ({group})"):
            jobs.append((task_id, group, baseline_accuracy(layout.baseline_acc_file, group)))
    return jobs


@dataclass(frozen=True)
class Folders:
    """Where one task's CPG training and compacting writes: the finetuned checkpoint (scratch/), each pruning stage
    (gradual_prune/<s>/), the record, the per-epoch CSV and the progress of an interrupted run."""
    root: Path

    @property
    def scratch(self):
        return self.root / "scratch"

    @property
    def gradual_prune(self):
        return self.root / "gradual_prune"

    def prune_stage(self, sparsity):
        return self.gradual_prune / sparsity_key(sparsity)

    @property
    def record(self):
        return self.gradual_prune / "record.txt"

    @property
    def csv(self):
        return self.root / "train.csv"

    @property
    def progress(self):
        return self.root / "progress.json"


def backbone_task(run, s, task_id, group, criterion, position=(1, 1)):
    """Finetune (with growth) and prune task `task_id`, unless it is finished with these settings and inputs."""
    layout = run.layout(s.arch)
    folder = layout.backbone_dir(group)
    data_settings = run.data_settings(group)                      # (lists every data file: once per task)
    task = Task(run, s, f"task {task_id} ({group})", folder / "stage.json",
                inputs={"baseline": criterion, "data": data_settings}, group=group, position=position)
    if task.skip():
        return
    log.info(f"== wo_backbone: {run.cfg.name} task {task_id} ({group}, {run.cfg.modality(group)})")
    with task.working(layout.train_log(group)):
        data = load_task(run.cfg, group, batch_size=s.batch_size, seed=s.seed, device=s.device,
                         num_classes=s.num_classes, amp=s.amp, epochs=s.epochs, **run.loader)
        task.replacing(folder)
        progress = task.track(Progress(Folders(folder).progress, task.identity))
        outputs, record, width = train_and_compact(run, Folders(folder), s, data, data_settings, criterion, progress,
                                                   curves=task.curves())
        remove_stale_stages(layout.gradual_prune_dir(group), outputs)
        task.finish(outputs, {"record": record, "width": width})
        log.info(f"record of {group}: {json.dumps(record)}")


def train_and_compact(run, folders, s, data, data_settings, criterion, progress, start=None, total_num_tasks=None,
                      curves=None):
    """Add the task to a new network, or to the one of checkpoint `start`, finetune it (with growth), then compact
    it along the pruning schedule; each step's checkpoint and the record are written in `folders` as the step ends.
    `total_num_tasks` (default TOTAL_NUM_TASKS) is how many tasks the pruning must leave room for; `curves` is the
    task's tracking.TaskRuns (None: not tracked). Returns (files written, record, width)."""
    group = data.task
    csv_path = folders.csv
    done = progress.load()
    if done:                                                      # finetuning and `index` pruning stages are done
        outputs = {k: Path(v) for k, v in done["outputs"].items()}
        record, width, first = dict(done["record"]), done["width"], done["index"]
        net = Network.load(outputs[done["last"]], run.model_config)
        outcome = Outcome(done["outcome"])
    else:
        step = FinetuneStep.of(s)
        resume = step_resume(folders.scratch, step, criterion, start, data_settings)
        net, outcome, acc, width = finetune_with_growth(network_from(start, run.model_config), data, step,
                                                        s.network_width_multiplier, s.width_step, criterion,
                                                        csv_path, resume, curves)
        record = {"0.0": round(acc, 4)}
        finish_task(net, group)
        outputs = {"0.0": save_task_checkpoint(net, run.cfg, folders.scratch, s.epochs), "record": folders.record}
        write_json(folders.record, record)
        save_progress(progress, outputs, record, width, 0, "0.0", outcome)
        resume.clear()
        first = 0
    if outcome is Outcome.NOTHING_TO_PRUNE:
        log.info(f"{group} owns no weights: nothing to prune")
        return outputs, record, width
    if outcome is Outcome.STOP_PRUNING:                           # (resumed after the stage that stopped it)
        return outputs, record, width
    schedule = s.pruning_schedule
    for index in range(first, len(schedule)):
        initial, end = (schedule[index - 1] if index else 0.0), schedule[index]
        step = PruneStep.of(s if total_num_tasks is None else s.replace(total_num_tasks=total_num_tasks), initial,
                            end)
        folder = folders.prune_stage(end)
        resume = step_resume(folder, step, criterion, outputs[sparsity_key(initial)], data_settings)
        outcome, acc = prune_stage(net, data, step, criterion, record["0.0"], csv_path, resume, curves)
        if acc is None:
            log.info(f"stop pruning {group} at sparsity {initial}")
            break
        key = sparsity_key(end)
        record[key] = round(acc, 4)
        finish_task(net, group)
        outputs[key] = save_task_checkpoint(net, run.cfg, folder, s.nr_epoch_for_each_prune)
        write_json(folders.record, record)
        save_progress(progress, outputs, record, width, index + 1, key, outcome)
        resume.clear()
        if outcome is Outcome.STOP_PRUNING:
            log.info(f"stop pruning {group} at sparsity {end}")
            break
    return outputs, record, width


def save_progress(progress, outputs, record, width, index, last, outcome):
    progress.save({"outputs": {k: str(v) for k, v in outputs.items()}, "record": record, "width": width,
                   "index": index, "last": last, "outcome": outcome.value})


def remove_stale_stages(gradual_prune, outputs):
    """Pruning-stage checkpoints of earlier runs that this run did not write (e.g. a longer schedule)."""
    keep = {Path(p).resolve() for p in outputs.values()}
    for folder in (Path(gradual_prune).iterdir() if is_main_process() else ()):
        if folder.is_dir() and re.fullmatch(r"\d+\.\d+", folder.name):
            for f in folder.iterdir():
                if CHECKPOINT_RE.match(f.name) and f.resolve() not in keep:
                    f.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()


def wo_backbone(run, s):
    """CPG-train every task of the run from scratch, then prune it gradually."""
    jobs = backbone_jobs(run, run.layout(s.arch))
    for n, (task_id, group, criterion) in enumerate(jobs, 1):
        backbone_task(run, s, task_id, group, criterion, position=(n, len(jobs)))


def units(run, s, workers):
    return [(f"task {t} ({group})", {"TASK_IDS": str(t)}) for t, group, _ in backbone_jobs(run, run.layout(s.arch))]
