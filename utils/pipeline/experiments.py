"""Does picking pay? The experiment that trains every target under each backbone-selection rule and seed, apart from
the default run (run_pickaback/compare_selection.sh):

    similar   the most similar candidate (the default of find_backbone.sh)
    original  the original code's rule (the largest distance)
    random    a seeded random candidate
    scratch   no backbone: the target alone, with the same epochs and growth rule
    oracle    every candidate tried, the best kept
"""
import logging
import random

import pandas as pd

from utils.checkpoint import atomic_write, baseline_accuracy
from utils.errors import UserError
from utils.pipeline.backbone import wo_backbone
from utils.pipeline.baseline import baseline
from utils.pipeline.choice import select_pruning_ratio_of_backbone
from utils.pipeline.inputs import target_start
from utils.pipeline.search import find_backbone
from utils.pipeline.settings import stage_settings
from utils.pipeline.target import train_target
from utils.pipeline.transfer import transfer_kv
from utils_pickaback.results import SELECTION_RULES, TABLE_COLUMNS, read_rows

log = logging.getLogger("root")


def rule_picks(table, rule, target, seed):
    """The backbone ids `rule` trains `target` on: one, none (scratch) or every candidate (oracle)."""
    rows = table[table.target_id == target].sort_values("task_id")
    candidates = [int(k) for k in rows.task_id]
    if rule == "scratch":
        return []
    if rule in ("oracle",):
        return candidates
    if rule == "random":
        return [random.Random(f"{seed}-{target}").choice(candidates)]
    return [int(rows.loc[rows[SELECTION_RULES[rule]].idxmax(), "task_id"])]


def compare_selection(run, s, env=None):
    """Train every target under each selection rule and seed, and write one row per (rule, seed, target) to
    logs_perceiver_io/compare_selection_<cfg>.csv. The stages before the target stage are the default run's
    (reused when finished); every (seed, backbone, target) training is done once and shared by the rules that pick
    it, in its own folder apart from the default run's."""
    for name, stage in (("baseline", baseline), ("wo_backbone", wo_backbone),
                        ("select_pruning_ratio_of_backbone", select_pruning_ratio_of_backbone),
                        ("find_backbone", find_backbone)):
        log.info(f"==== stage {name} of '{run.cfg.name}' (reused when finished)")
        stage(run, stage_settings(name, env))
    layout = run.layout(s.arch)
    target_settings = stage_settings("w_backbone_MM", env)
    table = read_rows(layout.table_csv, TABLE_COLUMNS, len(run.cfg.groups))
    criteria = {t: baseline_accuracy(layout.baseline_acc_file, group) for t, group in run.tasks()}
    plan_of = {(rule, seed, t): rule_picks(table, rule, t, seed)
               for rule in s.selections for seed in s.seeds for t in run.task_ids}
    missing = sorted({t for (rule, _, t), ks in plan_of.items() if rule != "scratch" and not ks})
    if missing:
        raise UserError(f"targets {missing} have no row in {layout.table_csv}: run run_pickaback/find_backbone.sh "
                        f"{run.cfg.name} for them.")
    pairs = sorted({(t, k) for (_, _, t), ks in plan_of.items() for k in ks})
    transfer_kv(run, stage_settings("transfer_kv", env), pairs=pairs)
    # one training per (seed, backbone, target); backbone 0 = none (scratch)
    results, trainings = {}, sorted({(seed, k, t) for (_, seed, t), ks in plan_of.items() for k in (ks or [0])})
    for n, (seed, k, t) in enumerate(trainings, 1):
        target = run.cfg.task_name(t)
        backbone = run.cfg.task_name(k) if k else None
        start = target_start(run, layout, t, backbone) if k else None
        what = (f"compare_selection {n}/{len(trainings)}: seed {seed}, target {t} ({target}) "
                f"{'on backbone ' + str(k) + ' (' + backbone + ')' if k else 'alone'}")
        results[seed, k, t] = train_target(run, target_settings.replace(seed=seed), target, start, criteria[t],
                                           layout.comparison(seed, backbone, target), what,
                                           s.target_train_per_class, position=(n, len(trainings)))
    rows = []
    for (rule, seed, t), ks in plan_of.items():
        done = [results[seed, k, t] for k in (ks or [0])]
        best = max(done, key=lambda r: r["target_acc"])             # one row unless oracle: its best candidate
        tied = sorted(r["backbone"] for r in done if r["target_acc"] == best["target_acc"])
        rows.append({"rule": rule, "seed": seed, "target": run.cfg.task_name(t), "backbone": best["backbone"],
                     "target_acc": best["target_acc"], "baseline_acc": criteria[t], "width": best["width"],
                     "best_backbones": ";".join(tied)})                # the oracle's equally good candidates
    frame = pd.DataFrame(rows)
    text = frame.to_csv(index=False, lineterminator="\n")
    atomic_write(layout.comparison_csv, lambda f: f.write(text.encode()))
    log.info(f"wrote {layout.comparison_csv}\n" +
             frame.groupby("rule", sort=False).target_acc.agg(["mean", "std"]).round(4).to_string())
    return frame
