"""Stage 2, wo_backbone: per task, a CPG backbone from scratch (finetuned, widened while below its baseline), then
gradually pruned along PRUNING_SCHEDULE (compacting: utils/pipeline/compacting.py), recording the accuracy at every
sparsity in record.txt.

Per task, in R = checkpoints_perceiver_io/CPG_single_scratch_woexp/<arch>/<cfg>/<group>: R/scratch/ (the unpruned
backbone), R/gradual_prune/<s>/ (each pruning stage), R/gradual_prune/record.txt, R/train.log, R/train.csv and
R/stage.json. A run killed inside the task continues where it stopped: R/progress.json says which steps are done,
and the step that was running continues from its own resume state.
"""
import json
import logging
from dataclasses import dataclass

from utils.checkpoint import baseline_accuracy
from utils.data import load_task
from utils.pipeline.compacting import Progress, remove_stale_stages, train_and_compact
from utils.pipeline.executor import Unit
from utils.pipeline.lifecycle import chosen_lr, failing_task, Task, task_data

log = logging.getLogger("root")


@dataclass(frozen=True)
class BackboneJob:
    """One task of the stage and its input: the baseline accuracy it must reach."""
    task_id: int
    group: str
    criterion: float


def backbone_jobs(run, layout):
    """[BackboneJob] of the stage, every task's input checked before any work."""
    jobs = []
    for task_id, group in run.tasks():
        with failing_task("wo_backbone", f"task {task_id} ({group})"):
            jobs.append(BackboneJob(task_id, group, baseline_accuracy(layout.baseline_acc_file, group)))
    return jobs


def backbone_task(run, s, task_id, group, criterion, position=(1, 1)):
    """Finetune (with growth) and prune task `task_id`, unless it is finished with these settings and inputs."""
    folder, what = run.layout(s.arch).backbone(group), f"task {task_id} ({group})"
    data_settings = task_data(run, s.STAGE, what, group)          # (lists every data file: once per task)
    task = Task(run, s, what, folder.manifest,
                inputs={"baseline": criterion, "data": data_settings}, group=group, position=position)
    if task.skip():
        return
    log.info(f"== wo_backbone: {run.cfg.name} task {task_id} ({group}, {run.cfg.modality(group)})")
    with task.working(folder.log):
        data = load_task(run.cfg, group, batch_size=s.batch_size, seed=s.seed, device=s.device,
                         num_classes=s.num_classes, amp=s.amp, epochs=s.epochs, **run.loader)
        task.replacing(folder.root)
        progress = task.track(Progress(folder.progress, task.identity))
        outputs, record, width = train_and_compact(run, folder, s, data, data_settings, criterion, progress,
                                                   curves=task.curves())
        remove_stale_stages(folder, outputs)
        task.finish(outputs, {"record": record, "width": width, **chosen_lr(data)})
        log.info(f"record of {group}: {json.dumps(record)}")


def wo_backbone(run, s):
    """CPG-train every task of the run from scratch, then prune it gradually."""
    jobs = backbone_jobs(run, run.layout(s.arch))
    for n, job in enumerate(jobs, 1):
        backbone_task(run, s, job.task_id, job.group, job.criterion, position=(n, len(jobs)))


def units(run, s, workers):
    return [Unit(f"task {job.task_id} ({job.group})", {"TASK_IDS": str(job.task_id)})
            for job in backbone_jobs(run, run.layout(s.arch))]
