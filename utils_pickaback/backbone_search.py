"""The backbone search over a dataset config: which targets, which candidates, whose baseline checkpoints, and the
ModelDiff scores and picks. Shared by the find_backbone stage and pickaback_perceiverIO.py."""
import logging

import pandas as pd
from tqdm.contrib.logging import logging_redirect_tqdm

from packnet_models_pickaback import InferenceModel
from utils.data import task_dataset
from utils.errors import UserError
from utils.manifest import task_checkpoint
from utils_pickaback.modeldiff import search
from utils_pickaback.results import select_backbones

log = logging.getLogger("root")
CANDIDATE_CHOICES = ("all", "same", "cross")


def target_ids(cfg, spec, name="the target id"):
    """Task ids of `spec`: 'all', one id, or a list like 1,3; a UserError naming `name` (the variable or flag it came
    from) when an entry is not a task of the config."""
    if str(spec).strip().lower() == "all":
        return list(range(1, len(cfg.groups) + 1))
    entries = [t for t in str(spec).replace(" ", ",").split(",") if t]
    bad = [t for t in entries if not t.isdigit() or not 1 <= int(t) <= len(cfg.groups)]
    if bad or not entries:
        raise UserError(f"{name} {str(spec)!r} is not a list of task ids of config '{cfg.name}' "
                        f"({repr(bad[0]) + ' is not one' if bad else 'it is empty'}): give ids in "
                        f"1..{len(cfg.groups)}, a list like 1,3 or 'all'.")
    return sorted({int(t) for t in entries})


def candidate_ids(cfg, target, which):
    if which not in CANDIDATE_CHOICES:
        raise UserError(f"candidates '{which}' is not one of {', '.join(CANDIDATE_CHOICES)}.")
    modality = cfg.modality(cfg.task_name(target))
    ids = [k for k in range(1, len(cfg.groups) + 1) if k != target]
    if which == "same":
        return [k for k in ids if cfg.modality(cfg.task_name(k)) == modality]
    if which == "cross":
        return [k for k in ids if cfg.modality(cfg.task_name(k)) != modality]
    return ids


def plan(cfg, layout, targets, which):
    """({target: [candidates]}, {task id: baseline checkpoint}), checked: one error naming every missing baseline."""
    candidates_of = {t: candidate_ids(cfg, t, which) for t in targets}
    empty = [t for t, ks in candidates_of.items() if not ks]
    if empty:
        raise UserError(f"target(s) {', '.join(map(str, empty))} of config '{cfg.name}' have no candidate with "
                        f"candidates '{which}': use all.")
    needed = sorted(set(targets) | {k for ks in candidates_of.values() for k in ks})
    paths, missing = {}, []
    for k in needed:
        try:
            paths[k] = task_checkpoint(layout.baseline(cfg.task_name(k)).root,
                                       f"run run_pickaback/baseline.sh {cfg.name} first")
        except UserError as e:
            missing.append(str(e))
    if missing:
        raise UserError(f"no usable baseline checkpoint: {'; '.join(missing)}" if len(missing) > 1 else missing[0])
    for t in targets:
        cfg.check_task_data(cfg.task_name(t))
    return candidates_of, paths


def run_search(cfg, candidates_of, checkpoints, settings, selection, device, batch_size=32, amp=False):
    """ModelDiff over the pairs of `candidates_of` (in bf16 autocast with `amp`); returns (table rows, {target:
    picked task id})."""
    def load(task_id):
        model = InferenceModel.load(checkpoints[task_id], device=device, batch_size=batch_size, amp=amp)
        if model.task != cfg.task_name(task_id):
            log.warning(f"{checkpoints[task_id]} holds task {model.task}, not {cfg.task_name(task_id)}; comparing it "
                        f"as task {task_id}")
        return model

    def test_data(task_id):
        return task_dataset(cfg, cfg.task_name(task_id), "test", device)

    with logging_redirect_tqdm():
        rows = search(candidates_of, load, test_data, settings)
    picks = select_backbones(pd.DataFrame(rows), selection)
    for t, k in picks.items():
        log.info(f"Selected backbone for target {t} = (euc) {k}")
    return rows, picks
