"""Stage 6, w_backbone_MM: every target of the search result CPG-trained on its backbone (picking its weights
through a piggymask, training the free ones, widening while below the target's baseline). Writes, per pair,
checkpoints_perceiver_io/CPG_fromsingle_scratch_woexp_target/<arch>/<cfg>/<backbone>/<target>/{scratch/,
gradual_prune/record.txt, train.log, train.csv, stage.json} and a row of logs_perceiver_io/w_backbone_<cfg>_acc.csv.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

from utils.checkpoint import baseline_accuracy, read_table, update_csv
from utils.data import load_task
from utils.manifest import file_digest
from utils.pipeline.cpg_steps import FinetuneStep, finetune_with_growth, network_from, step_resume
from utils.pipeline.executor import Unit
from utils.pipeline.inputs import selected_pairs, target_start
from utils.pipeline.lifecycle import chosen_lr, failing_task, Task, task_data, write_json
from utils.trainer import finish_task, save_task_checkpoint

log = logging.getLogger("root")


COLUMNS = ["target", "backbone", "width", "target_acc", "baseline_acc"]       # of w_backbone_<cfg>_acc.csv


def record_target(out, row):
    """Put the row of a (target, backbone) pair in w_backbone_<cfg>_acc.csv, replacing an earlier one."""
    return update_csv(out, [row], lambda t: (t.target == row["target"]) & (t.backbone == row["backbone"]),
                      COLUMNS)


def train_target(run, s, target, start, criterion, out, what, train_per_class=0, position=(1, 1)):
    """CPG-train `target` on the checkpoint `start` (None: alone, from scratch) into the TaskFolder `out`, widening
    while below its baseline, unless `out` already holds this task finished with the same settings. Returns the
    result row {target, backbone, width, target_acc, baseline_acc}."""
    data_settings = task_data(run, s.STAGE, what, target)
    task = Task(run, s, what, out.manifest,
                inputs={"baseline": criterion, "start": file_digest(start) if start else None, "data": data_settings,
                        "train_per_class": train_per_class}, group=target, position=position)
    if task.skip():
        return task.manifest.results()
    log.info(f"== {what}, from {start or 'scratch'}")
    with task.working(out.log):
        data = load_task(run.cfg, target, batch_size=s.batch_size, seed=s.seed, device=s.device,
                         num_classes=s.num_classes, train_per_class=train_per_class, amp=s.amp, epochs=s.epochs,
                         **run.loader)
        task.replacing(out.root)
        step = FinetuneStep.of(s, train_per_class)
        resume = task.track(step_resume(out.scratch, step, criterion, start, data_settings))
        net, _, acc, width = finetune_with_growth(network_from(start, run.model_config), data, step,
                                                  s.network_width_multiplier, s.width_step, criterion,
                                                  out.csv, resume, task.curves())
        finish_task(net, target)
        path = save_task_checkpoint(net, run.cfg, out.scratch, s.epochs)
        write_json(out.record, {"0.0": round(acc, 4)})
        row = {"target": target, "backbone": net.history[0] if start else "", "width": width,
               "target_acc": round(acc, 4), "baseline_acc": criterion}
        task.finish({"checkpoint": path, "record": out.record}, {**row, **chosen_lr(data)})
        log.info(f"saved {path}")
    return row


@dataclass(frozen=True)
class TargetJob:
    """One row of the search result: the target and its backbone (ids and names), the target's baseline accuracy
    and the checkpoint it starts from."""
    target_id: int
    backbone_id: int
    target: str
    backbone: str
    criterion: float
    start: Path


def target_jobs(run, layout, s):
    """[TargetJob] of the rows of the search result that TASK_IDS selects, every row checked before any
    training."""
    csv_path = Path(s.result_csv) if s.result_csv else layout.result_csv
    with failing_task(s.STAGE, str(csv_path)):
        pairs = selected_pairs(run, csv_path)
    with failing_task(s.STAGE, str(layout.target_acc_csv)):
        read_table(layout.target_acc_csv, COLUMNS)               # it must take the new rows after the training
    jobs = []
    for t, k in pairs:
        target, backbone = run.cfg.task_name(t), run.cfg.task_name(k)
        with failing_task(s.STAGE, f"target {t} ({target}) on backbone {k} ({backbone})"):
            jobs.append(TargetJob(t, k, target, backbone, baseline_accuracy(layout.baseline_acc_file, target),
                                  target_start(run, layout, t, backbone)))
    return jobs


def w_backbone_MM(run, s):  # noqa: N802 (the original script's name)
    """CPG-train every target of the search result on its backbone, widening while below its baseline."""
    layout = run.layout(s.arch)
    jobs = target_jobs(run, layout, s)
    for n, job in enumerate(jobs, 1):
        what = (f"w_backbone_MM target {job.target_id} ({n}/{len(jobs)}: {job.target}, "
                f"{run.cfg.modality(job.target)}) on backbone {job.backbone_id} ({job.backbone})")
        row = train_target(run, s, job.target, job.start, job.criterion, layout.target(job.backbone, job.target),
                           what, position=(n, len(jobs)))
        table = record_target(layout.target_acc_csv, {**row, "backbone": job.backbone})
        log.info(f"{layout.target_acc_csv.name}:\n{table.to_string(index=False)}")


def units(run, s, workers):
    """One unit per target row (TASK_IDS selects the targets)."""
    return [Unit(f"target {job.target_id} ({job.target}) on backbone {job.backbone_id} ({job.backbone})",
                 {"TASK_IDS": str(job.target_id)}) for job in target_jobs(run, run.layout(s.arch), s)]
