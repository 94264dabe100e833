"""Stage 3, select_pruning_ratio_of_backbone: per task, the largest pruning ratio whose accuracy stays within
ALLOW_ACC_LOSS of the baseline; that stage's checkpoint is placed in R/gradual_prune/ for the later stages (the
original's tools/choose_appropriate_pruning_ratio_for_next_task_notrmfiles.py, which calls `choose` too). The rule
itself, `choose_ratio`, is in utils/pipeline/compacting.py: the sequence run keeps each task by it too."""
import logging
from dataclasses import dataclass
from pathlib import Path

from utils.checkpoint import CHECKPOINT_RE, atomic_write, baseline_accuracy, read_record
from utils.distributed import is_main_process
from utils.manifest import Manifest, file_digest
from utils.pipeline.compacting import choose_ratio
from utils.pipeline.inputs import finished_backbone
from utils.pipeline.lifecycle import Task, failing_task
from utils.trainer import WIDTH_TOLERANCE

log = logging.getLogger("root")


def place_choice(source, gradual_prune):
    """Copy the chosen checkpoint into gradual_prune/ (atomically), then remove an earlier choice and the k/v
    files made from it, naming them in the log. Returns the placed path."""
    placed = Path(gradual_prune) / Path(source).name
    atomic_write(placed, lambda f: f.write(Path(source).read_bytes()))
    stale = sorted(old for old in (Path(gradual_prune).iterdir() if is_main_process() else ())
                   if old.is_file() and old != placed and (CHECKPOINT_RE.match(old.name) or
                                                           "_kv_transfer_" in old.name))
    for old in stale:
        old.unlink()
    if stale:
        log.info(f"removed the earlier choice and the k/v transfer files built on it from {gradual_prune}: "
                 f"{', '.join(p.name for p in stale)} (transfer_kv makes them again from the new choice)")
    return placed


def choose(group, record, criterion, allow_acc_loss, at_max_width, checkpoint_of, gradual_prune):
    """Choose the ratio, place its checkpoint (`checkpoint_of(key or "0.0")`) and log the original's lines;
    returns (ratio, placed path)."""
    key = choose_ratio(record, criterion, allow_acc_loss, at_max_width)
    if key is None:
        log.info("We select scratch")
    placed = place_choice(checkpoint_of(key or "0.0"), gradual_prune)
    log.info(f"We choose pruning ratio {key or '0.0'}")
    log.info(f"{group}: {placed} (record {record}, criterion {criterion})")
    return key or "0.0", placed


def backbone_width(ckpt, group):
    info = ckpt.get("shared_layer_info", {}).get(group, {})
    return float(info.get("network_width_multiplier", 1.0))


@dataclass(frozen=True)
class ChoiceJob:
    """One task of the stage: its lifecycle, its finished backbone's manifest and its checked inputs (record,
    baseline, width, max width, ...)."""
    group: str
    task: Task
    backbone: Manifest
    inputs: dict


def choice_task(run, s, task_id, group, position=(1, 1)):
    """The ChoiceJob of one task, every input checked: the finished backbone, its record, the baseline."""
    layout = run.layout(s.arch)
    with failing_task(s.STAGE, f"task {task_id} ({group})"):
        backbone = finished_backbone(run, layout, group)
        record = read_record(layout.backbone(group).record)
        criterion = baseline_accuracy(layout.baseline_acc_file, group)
        width = backbone_width(run.check_checkpoint(backbone.output("0.0")), group)
        max_width = float(backbone.read()["settings"]["max_network_width_multiplier"])
    inputs = {"record": record, "baseline": criterion, "width": width, "max_width": max_width,
              "backbone": file_digest(backbone.path), "model": run.cfg.model}
    task = Task(run, s, f"task {task_id} ({group})", layout.choice_manifest(group), inputs=inputs, position=position)
    return ChoiceJob(group, task, backbone, inputs)


def select_pruning_ratio_of_backbone(run, s):
    """Per task: choose the backbone's pruning ratio from its record and place that checkpoint in gradual_prune/.
    Every task's inputs are checked before any choice is replaced."""
    layout = run.layout(s.arch)
    jobs = [choice_task(run, s, task_id, group, (n, len(run.task_ids)))
            for n, (task_id, group) in enumerate(run.tasks(), 1)]
    for job in jobs:
        if job.task.skip():
            continue
        folder, inputs = layout.backbone(job.group), job.inputs
        with job.task.working(folder.log):
            job.task.replacing()
            ratio, placed = choose(job.group, inputs["record"], inputs["baseline"], s.allow_acc_loss,
                                   inputs["width"] >= inputs["max_width"] - WIDTH_TOLERANCE, job.backbone.output,
                                   folder.gradual_prune)
            job.task.finish({"checkpoint": placed}, {"ratio": ratio})

