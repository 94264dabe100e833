"""The backbone search over a dataset config: which targets, which candidates, whose baseline checkpoints, and the
search over them (candidates.search, each task's baseline a candidate named by its task id) as the table's rows
and picks. Shared by the find_backbone stage and pickaback_perceiverIO.py."""
import logging
from functools import partial

from tqdm.contrib.logging import logging_redirect_tqdm

from packnet_models_pickaback import load_network
from utils.data import task_dataset
from utils.errors import UserError
from utils.manifest import task_checkpoint
from utils_pickaback.candidates import Candidate, Networks, Target, pick, search

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
    """ModelDiff over the pairs of `candidates_of` ({target id: [candidate ids]}), each task's baseline a candidate
    named by its task id (in bf16 autocast with `amp`); returns (table rows as TABLE_COLUMNS dicts, {target: picked
    task id}). Candidates in task id order, so ties go to the lowest task id."""
    task_of = {path: k for k, path in checkpoints.items()}

    def open_baseline(path, device):
        net = load_network(path, device)
        if net.history[-1] != cfg.task_name(task_of[path]):
            log.warning(f"{path} holds task {net.history[-1]}, not {cfg.task_name(task_of[path])}; comparing it "
                        f"as task {task_of[path]}")
        return net

    targets = [Target(t, checkpoints[t], partial(task_dataset, cfg, cfg.task_name(t), "test", device))
               for t in sorted(candidates_of)]
    candidates = [Candidate(k, checkpoints[k]) for k in sorted({k for ks in candidates_of.values() for k in ks})]
    with logging_redirect_tqdm():
        rows = search(targets, candidates, settings, Networks(device, batch_size, amp, open_baseline),
                      compares=lambda target, candidate: candidate.holder in candidates_of[target.task_id])
    picks = {t: row.candidate.holder for t, row in pick(rows, selection).items()}
    for t, k in picks.items():
        log.info(f"Selected backbone for target {t} = (euc) {k}")
    return [{"target_id": row.target.task_id, "task_id": row.candidate.holder, **row.scores} for row in rows], picks
