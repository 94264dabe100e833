"""Does picking pay? The experiment that trains every target under each backbone-selection rule and seed, apart from
the default run (run_pickaback/compare_selection.sh):

    similar   the most similar candidate (the default of find_backbone.sh)
    original  the original code's rule (the largest distance)
    random    a seeded random candidate
    scratch   no backbone: the target alone, with the same epochs and growth rule
    oracle    every candidate tried, the best kept

Every (seed, backbone, target) training is done once, shared by the rules that pick it; the trainings are
independent (the graph's units: they spread over GPUS like a stage's tasks), and the table is written from their
records once every one is finished.
"""
import logging
import random
from dataclasses import dataclass

import pandas as pd

from utils.checkpoint import atomic_write, baseline_accuracy
from utils.errors import UserError
from utils.manifest import Manifest
from utils.pipeline.inputs import target_start
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


@dataclass(frozen=True)
class Training:
    """One training of the comparison: `target` on `backbone` (0: none, from scratch) under `seed`."""
    seed: int
    backbone: int
    target: int

    @property
    def key(self):
        """Its name among the comparison's runs (what a parallel worker is handed)."""
        return f"seed{self.seed}_target{self.target}_" + (f"backbone{self.backbone}" if self.backbone else "alone")


@dataclass(frozen=True)
class Comparison:
    """What the comparison trains, every input checked: the backbones each (rule, seed, target) trains on (none:
    scratch), every training once in order (shared by the rules that pick it) and each target's baseline
    accuracy."""
    picks: dict
    trainings: list
    criteria: dict

    @property
    def pairs(self):
        """The (target, backbone) pairs the trainings start from (their k/v transfers)."""
        return sorted({(t.target, t.backbone) for t in self.trainings if t.backbone})


def comparison_plan(run, settings):
    """The Comparison of compare_selection with `settings` ({stage: settings}), read from the backbone search's
    table; a UserError when a target has no row there."""
    s = settings["compare_selection"]
    layout = run.layout(s.arch)
    table = read_rows(layout.table_csv, TABLE_COLUMNS, len(run.cfg.groups))
    criteria = {t: baseline_accuracy(layout.baseline_acc_file, group) for t, group in run.tasks()}
    picks = {(rule, seed, t): rule_picks(table, rule, t, seed)
             for rule in s.selections for seed in s.seeds for t in run.task_ids}
    missing = sorted({t for (rule, _, t), ks in picks.items() if rule != "scratch" and not ks})
    if missing:
        raise UserError(f"targets {missing} have no row in {layout.table_csv}: run run_pickaback/find_backbone.sh "
                        f"{run.cfg.name} for them.")
    trainings = sorted({Training(seed, k, t) for (_, seed, t), ks in picks.items() for k in (ks or [0])},
                       key=lambda t: (t.seed, t.backbone, t.target))
    return Comparison(picks, trainings, criteria)


def trainings(run, settings):
    """{key: label} of the comparison's trainings, in order: its independent units."""
    return {t.key: f"seed {t.seed}, target {t.target} ({run.cfg.task_name(t.target)}) " +
            (f"on backbone {t.backbone} ({run.cfg.task_name(t.backbone)})" if t.backbone else "alone")
            for t in comparison_plan(run, settings).trainings}


def prepare(run, settings):
    """What every training needs first: the k/v transfer of each (target, backbone) pair it trains."""
    transfer_kv(run, settings["transfer_kv"], pairs=comparison_plan(run, settings).pairs)


def comparison_folder(run, s, training):
    """The TaskFolder of one training, apart from the default run's."""
    backbone = run.cfg.task_name(training.backbone) if training.backbone else None
    return run.layout(s.arch).comparison(training.seed, backbone, run.cfg.task_name(training.target))


def train(run, settings, key):
    """Do the training named `key`, unless it is finished with these settings."""
    s, plan = settings["compare_selection"], comparison_plan(run, settings)
    n, training = next((n, t) for n, t in enumerate(plan.trainings, 1) if t.key == key)
    seed, k, t = training.seed, training.backbone, training.target
    target = run.cfg.task_name(t)
    backbone = run.cfg.task_name(k) if k else None
    start = target_start(run, run.layout(s.arch), t, backbone) if k else None
    what = (f"compare_selection {n}/{len(plan.trainings)}: seed {seed}, target {t} ({target}) "
            f"{'on backbone ' + str(k) + ' (' + backbone + ')' if k else 'alone'}")
    train_target(run, settings["w_backbone_MM"].replace(seed=seed), target, start, plan.criteria[t],
                 comparison_folder(run, s, training), what, s.target_train_per_class,
                 position=(n, len(plan.trainings)))


def write_table(run, settings):
    """Write one row per (rule, seed, target) to logs_perceiver_io/compare_selection_<cfg>.csv from the records of
    the finished trainings; returns the rows (a DataFrame)."""
    s, plan = settings["compare_selection"], comparison_plan(run, settings)
    layout = run.layout(s.arch)
    rows = []
    for (rule, seed, t), ks in plan.picks.items():
        done = [Manifest(comparison_folder(run, s, Training(seed, k, t)).manifest).results() for k in (ks or [0])]
        best = max(done, key=lambda r: r["target_acc"])             # one row unless oracle: its best candidate
        tied = sorted(r["backbone"] for r in done if r["target_acc"] == best["target_acc"])
        rows.append({"rule": rule, "seed": seed, "target": run.cfg.task_name(t), "backbone": best["backbone"],
                     "target_acc": best["target_acc"], "baseline_acc": plan.criteria[t], "width": best["width"],
                     "best_backbones": ";".join(tied)})                # the oracle's equally good candidates
    frame = pd.DataFrame(rows)
    text = frame.to_csv(index=False, lineterminator="\n")
    atomic_write(layout.comparison_csv, lambda f: f.write(text.encode()))
    log.info(f"wrote {layout.comparison_csv}\n" +
             frame.groupby("rule", sort=False).target_acc.agg(["mean", "std"]).round(4).to_string())
    return frame
