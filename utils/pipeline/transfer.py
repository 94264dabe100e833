"""Stage 5, transfer_kv: for every (target, backbone) row of the search result, the backbone's chosen checkpoint
with the target's input adapter and k/v projection grafted in (cross-modal pairs) or unchanged (same modality), as
<backbone>/gradual_prune/checkpoint-<e>_kv_transfer_<target>.pth.tar. transfer_kv_perceiver_io.py calls the same
function."""
import logging
from dataclasses import dataclass
from pathlib import Path

from packnet_models_pickaback.kv_transfer import transfer
from utils.manifest import file_digest
from utils.pipeline.inputs import chosen_backbone, selected_pairs, target_source
from utils.pipeline.lifecycle import Task, failing_task

log = logging.getLogger("root")


@dataclass(frozen=True)
class KvJob:
    """One (target, backbone) pair of the stage: the backbone's chosen checkpoint and, for a cross-modal pair,
    (the target's own earlier model, its stage); (None, None) for a same-modality pair."""
    target_id: int
    backbone_id: int
    backbone_checkpoint: Path
    source: tuple


def kv_jobs(run, layout, pairs):
    """[KvJob] of the pairs, every pair checked before any file is written."""
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
            jobs.append(KvJob(t, k, k_path, source))
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
    for n, job in enumerate(jobs, 1):
        t, k, k_path, source = job.target_id, job.backbone_id, job.backbone_checkpoint, job.source
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
