"""What a stage reads of the stages before it, each read checked and a missing one named in a UserError that says
which stage to run: a task's baseline checkpoint, its finished CPG backbone, the backbone checkpoint the chooser
placed, the search result's (target, backbone) pairs, the checkpoint a target starts from and a target's own earlier
model, and the search's table and pick that a sequence run starts from. The stage modules read each other's outputs
only through these, so that none of them imports another.
"""
import logging

from packnet_models_pickaback.kv_transfer import read_pairs
from utils.errors import UserError
from utils.manifest import Manifest, task_checkpoint
from utils_pickaback.results import TABLE_COLUMNS, read_rows

log = logging.getLogger("root")


def baseline_checkpoint(run, layout, group, what=None):
    """The checkpoint of `group`'s baseline (stage baseline); `what` ends the error when there is none."""
    return task_checkpoint(layout.baseline(group).root,
                           what or f"run run_pickaback/baseline.sh {run.cfg.name} first")


def finished_backbone(run, layout, group):
    """The manifest of `group`'s CPG backbone (stage wo_backbone), finished with every file it names."""
    backbone = Manifest(layout.backbone(group).manifest)
    if not backbone.read() or backbone.missing_outputs():
        raise UserError(f"the CPG backbone in {layout.backbone(group).root} is not finished: run "
                        f"run_pickaback/wo_backbone.sh {run.cfg.name} first.")
    return backbone


def chosen_backbone(run, layout, group):
    """The checkpoint the chooser placed for `group`; a UserError naming the stages to run when there is none."""
    return task_checkpoint(layout.backbone(group).gradual_prune,
                           f"run run_pickaback/wo_backbone.sh {run.cfg.name} and then "
                           f"run_pickaback/select_pruning_ratio_of_backbone.sh {run.cfg.name} first",
                           manifest=layout.choice_manifest(group))


def target_source(run, layout, group):
    """The target's own earlier model: its chosen CPG backbone if there is one, else its baseline."""
    try:
        return chosen_backbone(run, layout, group), "CPG backbone"
    except UserError:
        pass
    return baseline_checkpoint(run, layout, group, f"task {group} has neither a CPG backbone nor a baseline: "
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


def target_start(run, layout, t, backbone):
    """The k/v-transferred backbone made for target t, else the chosen backbone checkpoint; checked to load and to
    be of the network the config asks for (before the target's record is touched)."""
    manifest = Manifest(layout.kv_manifest(backbone, t))
    if manifest.path.is_file():
        path = manifest.output("checkpoint")
        if path is None or not path.is_file():
            raise UserError(f"{manifest.path} names a k/v transfer file that does not exist: rerun "
                            f"run_pickaback/transfer_kv.sh {run.cfg.name}.")
    else:
        path = chosen_backbone(run, layout, backbone)
    run.check_checkpoint(path)
    return path


def search_table(run, layout, s):
    """The search's table when a sequence run's ORDER=similar or START=similar needs it; None otherwise."""
    if "similar" not in (s.order, s.start):
        return None
    if not layout.table_csv.is_file():
        raise UserError(f"ORDER={s.order} START={s.start} need the backbone search's table {layout.table_csv}: run "
                        f"run_pickaback/find_backbone.sh {run.cfg.name} first.")
    return read_rows(layout.table_csv, TABLE_COLUMNS, len(run.cfg.groups))


def first_start(run, layout, first):
    """A sequence run's START=similar: the checkpoint the first task starts from, the backbone the search picked for
    it (its k/v transfer file when there is one)."""
    picks = dict(read_pairs(layout.result_csv, run.cfg)) if layout.result_csv.is_file() else {}
    if first not in picks:
        raise UserError(f"START=similar needs the backbone the search picked for task {first}, which "
                        f"{layout.result_csv} does not hold: run run_pickaback/find_backbone.sh {run.cfg.name} (and "
                        f"the stages before transfer_kv) first, or use START=scratch.")
    return target_start(run, layout, first, run.cfg.task_name(picks[first]))
