"""Stage 5, transfer_kv: for every (target, backbone) row of the search result, the backbone's chosen checkpoint
with the target's input adapter and k/v projection grafted in (cross-modal pairs) or unchanged (same modality), as
<backbone>/gradual_prune/checkpoint-<e>_kv_transfer_<target>.pth.tar. transfer_kv_perceiver_io.py calls the same
function."""
import logging
from pathlib import Path

from packnet_models_pickaback.kv_transfer import read_pairs, transfer
from utils.errors import UserError
from utils.layout import file_digest, task_checkpoint
from utils.pipeline.choice import chosen_backbone
from utils.pipeline.lifecycle import Task, failing_task

log = logging.getLogger("root")


def target_source(run, layout, group):
    """The target's own earlier model: its chosen CPG backbone if there is one, else its baseline."""
    try:
        return chosen_backbone(run, layout, group), "CPG backbone"
    except UserError:
        pass
    return task_checkpoint(layout.baseline_dir(group), f"task {group} has neither a CPG backbone nor a baseline: "
                           f"run run_pickaback/baseline.sh {run.cfg.name} first"), "baseline"


def selected_pairs(run, csv_path):
    """The (target, backbone) rows of a search result whose target the run selects (TASK_IDS)."""
    pairs = read_pairs(csv_path, run.cfg)
    missing = sorted(set(run.task_ids) - {t for t, _ in pairs})
    if missing and len(run.task_ids) < len(run.cfg.groups):        # TASK_IDS named targets the CSV lacks
        raise UserError(f"{csv_path} has no row for target(s) {', '.join(map(str, missing))}: run "
                        f"run_pickaback/find_backbone.sh {run.cfg.name} for them, or drop them from TASK_IDS.")
    if missing:
        log.info(f"{csv_path} has no row for target(s) {', '.join(map(str, missing))}: nothing to do for them "
                 f"(run run_pickaback/find_backbone.sh {run.cfg.name} for them first)")
    return [(t, k) for t, k in pairs if t in run.task_ids]


def kv_jobs(run, layout, pairs):
    """[(target id, backbone id, the backbone's chosen checkpoint, (the target's own model, its stage) or (None,
    None) for a same-modality pair)], every pair checked before any file is written."""
    jobs = []
    for t, k in pairs:
        target, backbone = run.cfg.task_name(t), run.cfg.task_name(k)
        with failing_task("transfer_kv", f"target {t} ({target}) on backbone {k} ({backbone})"):
            k_path = chosen_backbone(run, layout, backbone)
            cross = run.cfg.modality(target) != run.cfg.modality(backbone)
            source = target_source(run, layout, target) if cross else (None, None)
            for path in (k_path, source[0]):                      # of the network the config asks for
                if path is not None:
                    run.check_checkpoint(path)
            jobs.append((t, k, k_path, source))
    return jobs


def transfer_kv(run, s, pairs=None, layout=None):
    """Write the k/v transfer file of every (target, backbone) row of the search result (or of `pairs`) that is
    not finished with the same checkpoints; returns the files of the pairs."""
    layout = layout or run.layout(s.arch)
    csv_path = Path(s.csv_path) if s.csv_path else layout.result_csv
    if pairs is None:
        with failing_task("transfer_kv", str(csv_path)):
            pairs = selected_pairs(run, csv_path)
    outs = []
    jobs = kv_jobs(run, layout, pairs)                            # every pair is checked before anything is written
    for n, (t, k, k_path, source) in enumerate(jobs, 1):
        task = Task(run, s, f"target {t} on backbone {k}", layout.kv_manifest(run.cfg.task_name(k), t),
                    inputs={"target": t, "backbone": k, "backbone_checkpoint": file_digest(k_path),
                            "model": run.cfg.model,
                            "source": file_digest(source[0]) if source[0] else None}, position=(n, len(jobs)))
        outs.append(layout.kv_transfer_file(k_path, t))
        if task.skip():
            continue
        with task.working(layout.stage_log("transfer_kv")):
            task.replacing()
            copied = transfer(run.cfg, t, k, k_path, source, outs[-1])
            task.finish({"checkpoint": outs[-1]}, {"copied": copied})
    return outs
