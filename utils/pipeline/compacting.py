"""Compacting one task, shared by the backbone stage (each task alone in a network) and the sequence run (every task
in one network): CPG's finetuning with growth, then gradual pruning along PRUNING_SCHEDULE, recording the accuracy at
every sparsity in record.txt, continued where it stopped after a kill (progress.json); and the rule that picks the
ratio a task is kept at from that record (the chooser's, also the select_pruning_ratio_of_backbone stage's).
"""
import json
import logging
import re
from pathlib import Path

from models.build import Network
from utils.checkpoint import CHECKPOINT_RE, atomic_write, read_json
from utils.distributed import is_main_process
from utils.layout import sparsity_key
from utils.pipeline.cpg_steps import (FinetuneStep, PruneStep, finetune_with_growth, network_from, prune_stage,
                                      step_resume)
from utils.pipeline.lifecycle import write_json
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


def train_and_compact(run, folder, s, data, data_settings, criterion, progress, start=None, total_num_tasks=None,
                      curves=None):
    """Add the task to a new network, or to the one of checkpoint `start`, finetune it (with growth), then compact
    it along the pruning schedule; each step's checkpoint and the record are written in `folder` (a TaskFolder) as
    the step ends. `total_num_tasks` (default TOTAL_NUM_TASKS) is how many tasks the pruning must leave room for;
    `curves` is the task's tracking.TaskRuns (None: not tracked). Returns (files written, record, width)."""
    group = data.task
    csv_path = folder.csv
    done = progress.load()
    if done:                                                      # finetuning and `index` pruning stages are done
        outputs = {k: Path(v) for k, v in done["outputs"].items()}
        record, width, first = dict(done["record"]), done["width"], done["index"]
        net = Network.load(outputs[done["last"]], run.model_config)
        outcome = Outcome(done["outcome"])
    else:
        step = FinetuneStep.of(s, getattr(s, "train_per_class", 0))
        resume = step_resume(folder.scratch, step, criterion, start, data_settings)
        net, outcome, acc, width = finetune_with_growth(network_from(start, run.model_config), data, step,
                                                        s.network_width_multiplier, s.width_step, criterion,
                                                        csv_path, resume, curves)
        record = {"0.0": round(acc, 4)}
        finish_task(net, group)
        outputs = {"0.0": save_task_checkpoint(net, run.cfg, folder.scratch, s.epochs), "record": folder.record}
        write_json(folder.record, record)
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
        stage_folder = folder.prune_stage(end)
        resume = step_resume(stage_folder, step, criterion, outputs[sparsity_key(initial)], data_settings)
        outcome, acc = prune_stage(net, data, step, criterion, record["0.0"], csv_path, resume, curves)
        if acc is None:
            log.info(f"stop pruning {group} at sparsity {initial}")
            break
        key = sparsity_key(end)
        record[key] = round(acc, 4)
        finish_task(net, group)
        outputs[key] = save_task_checkpoint(net, run.cfg, stage_folder, s.nr_epoch_for_each_prune)
        write_json(folder.record, record)
        save_progress(progress, outputs, record, width, index + 1, key, outcome)
        resume.clear()
        if outcome is Outcome.STOP_PRUNING:
            log.info(f"stop pruning {group} at sparsity {end}")
            break
    return outputs, record, width


def save_progress(progress, outputs, record, width, index, last, outcome):
    progress.save({"outputs": {k: str(v) for k, v in outputs.items()}, "record": record, "width": width,
                   "index": index, "last": last, "outcome": outcome.value})


def remove_stale_stages(folder, outputs):
    """Remove the pruning-stage checkpoints in the TaskFolder `folder` of earlier runs that this run did not write
    (e.g. a longer schedule), naming them in the log."""
    keep, removed = {Path(p).resolve() for p in outputs.values()}, []
    for stage in sorted(folder.gradual_prune.iterdir() if is_main_process() else ()):
        if stage.is_dir() and re.fullmatch(r"\d+\.\d+", stage.name):
            for f in sorted(stage.iterdir()):
                if CHECKPOINT_RE.match(f.name) and f.resolve() not in keep:
                    f.unlink()
                    removed.append(f"{stage.name}/{f.name}")
            if not any(stage.iterdir()):
                stage.rmdir()
    if removed:
        log.info(f"removed the pruning stages of an earlier run that this run did not reach from "
                 f"{folder.gradual_prune}: {', '.join(removed)}")


def choose_ratio(record, criterion, allow_acc_loss, at_max_width):
    """The largest recorded ratio whose accuracy is within `allow_acc_loss` of the criterion, or None (scratch).
    The criterion is the baseline accuracy, except when the backbone is at its maximum width and its unpruned
    accuracy is below the baseline: then no ratio could reach the baseline, and pruning may cost at most
    `allow_acc_loss` of what the task reached (the original chose 0.95 outright)."""
    record = dict(record)
    acc0 = float(record.pop("0.0", 0.0))
    if at_max_width and acc0 < criterion:
        criterion = acc0
    for key in sorted(record, key=float, reverse=True):
        if float(record[key]) + allow_acc_loss >= criterion:
            return key
    return None
