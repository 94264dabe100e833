"""What the stages of a run wrote, gathered for the report in one `Collected`.

Every file is found through the stages' own records (utils/manifest.py: `Manifest` for stage.json, choice.json and
the k/v transfer's records, `SearchManifest` for the search's), never by guessing paths. A task whose record or
files are absent is listed as missing (`Collected.miss`) and the report goes on; so is a file the user can break (an
unreadable record or checkpoint: `UserError`; a torn or empty CSV). Any other exception is a bug and propagates.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models import cpg
from models.build import Network
from utils.checkpoint import accuracy, checked_columns, load_checkpoint, number, read_json
from utils.errors import UserError
from utils.layout import Layout
from utils.manifest import Manifest, SearchManifest
from utils.report import metrics

MISSING = "missing"
SEARCH_TABLE_COLUMNS = ("target_id", "task_id", "sim_euc")        # of the search's table, those the report reads
SEARCH_RESULT_COLUMNS = ("target_id", "task_id")


class StageMissingError(Exception):
    """A stage has not (completely) run for a task: its record, or a file the record names, does not exist."""


# a task that is not usably done: not run, or its record unreadable (Manifest.read's UserError names the file)
NOT_DONE = (StageMissingError, UserError)
# everything a stage's files can do to the report: the above, a checkpoint or JSON file that cannot be read
# (UserError from load_checkpoint / read_json / Network.from_checkpoint), a torn or empty CSV. Listed as missing;
# anything else is a bug of the report and must not read as "stage missing"
EXPECTED = (StageMissingError, UserError, pd.errors.ParserError, pd.errors.EmptyDataError)


@dataclass
class Collected:
    cfg: object
    layout: Layout
    missing: list = field(default_factory=list)          # (stage, task, why)
    baselines: dict = field(default_factory=dict)        # group -> {acc, checkpoint, params}
    backbones: dict = field(default_factory=dict)        # group -> {record, width, ratio, checkpoint}
    table: pd.DataFrame = None                            # the search's table (target_id, task_id, ..., sim_euc)
    picks: dict = field(default_factory=dict)            # target group -> backbone group
    targets: dict = field(default_factory=dict)          # target group -> the row of the report's main table
    chains: dict = field(default_factory=dict)           # target group -> CL metrics of backbone -> target
    numbers: list = field(default_factory=list)          # (section, item, metric, value) for the CSV
    notes: list = field(default_factory=list)

    def miss(self, stage, task, why):
        self.missing.append((stage, task, str(why)))

    def number(self, section, item, metric, value):
        self.numbers.append((section, item, metric, value))


# ---- reading records and CSVs ------------------------------------------------------------------------------------
def finished(path):
    """The Manifest at `path` when its record exists and every file it names exists. Raises StageMissingError saying
    which is absent, UserError when the record cannot be read."""
    manifest = Manifest(path)
    if not manifest.read():
        raise StageMissingError(f"no record {path}")
    absent = manifest.missing_outputs()
    if absent:
        raise StageMissingError(f"{path} names files that do not exist: {', '.join(str(p) for p in absent)}")
    return manifest


def result(manifest, key):
    """The number `key` of a record's results; UserError when an older or edited record lacks it or it is no number."""
    results = manifest.results()
    if key not in results:
        raise UserError(f"{manifest.path} has no {key} among its results: rerun the stage that writes it.")
    return number(results[key], f"{key} in {manifest.path}")


NUMBERS = {"target_acc": (0.0, 1.0), "baseline_acc": (0.0, 1.0), "width": (1e-12, math.inf),
           "sim_euc": (-math.inf, math.inf),                            # what the report reads from the stages' CSVs
           # the sequence's (utils/report/sequence.py)
           "accuracy": (0.0, 1.0), "owned": (0.0, 1.0), "free": (0.0, 1.0), "step": (1, math.inf),
           "position": (1, math.inf), "params": (0, math.inf), "separate_params": (0, math.inf),
           "seconds": (0.0, math.inf)}


def read_csv(path, columns, stage, **kwargs):
    """A stage's CSV holding at least `columns`, its numbers finite and in range (accuracies in [0, 1]); UserError
    naming the absent columns or the bad value (an edited or foreign file)."""
    frame = pd.read_csv(path, **kwargs)
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise UserError(f"{path} lacks the column(s) {', '.join(absent)}: rerun {stage} to regenerate it.")
    return checked_columns(frame, path, {c: r for c, r in NUMBERS.items() if c in columns})


def whole_numbers(frame, columns, path, stage):
    """`frame` with `columns` as whole numbers (int64); a UserError naming the line, the file and `stage` (what
    regenerates it) for a value that is not one."""
    for col in columns:
        frame[col] = pd.to_numeric(frame[col])
        bad = frame.index[frame[col] % 1 != 0]
        if len(bad):
            raise UserError(f"{col} on line {bad[0] + 2} of {path} is {frame[col][bad[0]]!r}, not a whole number: "
                            f"rerun {stage} to regenerate it.")
        frame[col] = frame[col].astype(np.int64)
    return frame


def baseline_accuracies(path):
    """{group: accuracy} of the baseline stage's JSON, {} when there is none; UserError when it cannot be read."""
    return read_json(path) or {}


# ---- the stages --------------------------------------------------------------------------------------------------
def collect_baselines(c):
    accs = {}
    try:
        accs = baseline_accuracies(c.layout.baseline_acc_file)
    except UserError as e:                 # a note: every baseline is then listed as missing its accuracy
        c.notes.append(str(e))
    for group in c.cfg.groups:
        acc = accs.get(group)
        if acc is None:
            c.miss("baseline", group, f"no accuracy in {c.layout.baseline_acc_file}")
        try:
            manifest = finished(c.layout.baseline(group).manifest)
        except NOT_DONE as e:
            manifest = None
            if acc is not None:            # one reason per task: a missing accuracy is listed first
                c.miss("baseline", group, e)
        entry = {"acc": accuracy(acc, f"the accuracy of {group} in {c.layout.baseline_acc_file}")
                 if acc is not None else None,
                 "checkpoint": manifest.output("checkpoint") if manifest else None}
        c.baselines[group] = entry
        if entry["checkpoint"] is not None:
            try:
                entry["params"] = Network.from_checkpoint(load_checkpoint(entry["checkpoint"])).num_parameters()
            except UserError as e:
                c.miss("baseline", group, f"cannot read {entry['checkpoint']}: {e}")


def collect_backbones(c):
    for group in c.cfg.groups:
        try:
            manifest = finished(c.layout.backbone(group).manifest)
        except NOT_DONE as e:
            c.miss("wo_backbone", group, e)
            c.miss("select_pruning_ratio_of_backbone", group, "no CPG backbone to choose a ratio of")
            continue
        results = manifest.results()
        record = {number(k, f"a ratio in {manifest.path}"): accuracy(v, f"the accuracy at {k} in {manifest.path}")
                  for k, v in results.get("record", {}).items()}
        entry = {"record": record, "width": results.get("width"), "ratio": None, "checkpoint": None}
        try:
            choice = finished(c.layout.choice_manifest(group))
            entry["ratio"] = result(choice, "ratio")
            entry["checkpoint"] = choice.output("checkpoint")
        except NOT_DONE as e:
            c.miss("select_pruning_ratio_of_backbone", group, e)
        c.backbones[group] = entry


def search_outputs(cfg, layout):
    """The result and table CSVs the search's manifest names (any target's entry), else the layout's paths."""
    for group in cfg.groups:
        try:
            outputs = SearchManifest(layout.search_manifest, cfg.task_id(group)).outputs()
        except UserError:                  # unreadable: the layout's paths, where the search writes them
            break
        if "result" in outputs and "table" in outputs:
            return outputs["result"], outputs["table"]
    return layout.result_csv, layout.table_csv


def collect_search(c):
    result_csv, table = search_outputs(c.cfg, c.layout)
    if table.is_file():
        c.table = read_csv(table, SEARCH_TABLE_COLUMNS, "find_backbone")
    else:
        c.miss("find_backbone", "all", f"no similarity table {table}")
    picks = read_csv(result_csv, SEARCH_RESULT_COLUMNS, "find_backbone") if result_csv.is_file() else \
        pd.DataFrame(columns=list(SEARCH_RESULT_COLUMNS))
    for t, k in zip(picks.target_id, picks.task_id, strict=False):
        c.picks[c.cfg.task_name(t)] = c.cfg.task_name(k)
    for group in c.cfg.groups:
        if group not in c.picks:
            c.miss("find_backbone", group, f"no pick in {result_csv}")


def collect_targets(c):
    for target in c.cfg.groups:
        backbone = c.picks.get(target)
        row = {"target_id": c.cfg.task_id(target), "target": target, "modality": c.cfg.modality(target),
               "baseline_acc": c.baselines.get(target, {}).get("acc"), "backbone": backbone,
               "backbone_modality": c.cfg.modality(backbone) if backbone else None,
               "backbone_ratio": c.backbones.get(backbone, {}).get("ratio") if backbone else None}
        c.targets[target] = row
        if backbone is None:
            for stage in ("transfer_kv", "w_backbone_MM"):
                c.miss(stage, target, "no backbone picked for it")
            continue
        try:
            finished(c.layout.kv_manifest(backbone, c.cfg.task_id(target)))
        except NOT_DONE as e:
            c.miss("transfer_kv", target, e)
        try:
            manifest = finished(c.layout.target(backbone, target).manifest)
        except NOT_DONE as e:
            c.miss("w_backbone_MM", target, e)
            continue
        try:
            read_target(row, manifest)
        except UserError as e:
            c.miss("w_backbone_MM", target, f"cannot read its record or checkpoint ({type(e).__name__}: {e})")


def read_target(row, manifest):
    """Fill a target's row from its finished record and checkpoint (what is read before an error stays filled)."""
    results = manifest.results()
    baseline = results.get("baseline_acc", row["baseline_acc"])
    row.update(target_acc=result(manifest, "target_acc"), width=result(manifest, "width"),
               baseline_acc=accuracy(baseline, f"baseline_acc in {manifest.path}") if baseline is not None else None)
    if baseline is not None:
        row["gain"] = metrics.forward_transfer(row["target_acc"], row["baseline_acc"])
    checkpoint = manifest.output("checkpoint")
    if checkpoint is None:
        raise UserError(f"{manifest.path} names no checkpoint: rerun the stage that writes it.")
    row.update(parameter_counts(Network.from_checkpoint(load_checkpoint(checkpoint)), row["target"]))
    row["checkpoint"] = checkpoint


def parameter_counts(net, task):
    """What task `task` of a network owns (ownership mask = its id), reuses (earlier tasks' weights its binarised
    piggymask keeps), could have reused (all earlier tasks' weights in the layers it computes with), and what growth
    added for it."""
    tid = net.task_id(task)
    owned = reused = earlier = 0
    for layer in cpg.used_layers(net.model, net.modalities[task]).values():
        om = cpg.ownership(layer)
        before = (om.mask > 0) & (om.mask < tid)
        owned += int((om.mask == tid).sum())
        earlier += int(before.sum())
        if str(tid) in om.piggymasks:
            reused += int((before & (om.piggymasks[str(tid)] > cpg.PIGGYMASK_THRESHOLD)).sum())
    grown = sum(p.numel() for ff in net.model.feedforwards() for b in ff.branches if int(b.created_by) == tid
                for n, p in b.named_parameters() if ".piggymasks." not in n)
    head = sum(p.numel() for p in net.model.heads[task].parameters())
    return {"owned": owned, "reused": reused, "earlier": earlier, "grown": grown, "head": head,
            "chain_params": net.num_parameters()}


# ---- the search's table as a matrix ------------------------------------------------------------------------------
def by_modality(cfg, groups):
    order = {m: i for i, m in enumerate(("image", "text"))}
    return sorted(groups, key=lambda g: (order.get(cfg.modality(g), 9), cfg.task_id(g)))


def similarity_matrix(c):
    """sim_euc of target (rows) and candidate (columns), image tasks first; NaN where a pair was not compared."""
    table = c.table
    ids = sorted(set(table.target_id) | set(table.task_id))
    groups = by_modality(c.cfg, [c.cfg.task_name(i) for i in ids])
    rows = [g for g in groups if c.cfg.task_id(g) in set(table.target_id)]
    cols = [g for g in groups if c.cfg.task_id(g) in set(table.task_id)]
    sim = pd.DataFrame(np.nan, index=rows, columns=cols)
    for t, k, v in zip(table.target_id, table.task_id, table.sim_euc, strict=False):
        sim.loc[c.cfg.task_name(t), c.cfg.task_name(k)] = number(v, f"sim_euc of targets {t} and {k} in the "
                                                                   f"search's table")
    return sim
