"""Write the report of a dataset config's Pick-a-back run: what every stage produced, in one Markdown file with
figures and a CSV of every number.

    python tools/report.py demo
    MMPAB_WORK_DIR=/tmp/run MMPAB_DATA_ROOT=/tmp/data python tools/report.py demo --device cpu

Reads the stages' own files through their records (stage.json, choice.json, the search's manifest; utils/layout.py
says where each lives) and writes, under logs_perceiver_io/ of the working folder:

    report_<cfg>.md               per target: baseline, picked backbone, accuracy on it, gain, width, parameters
                                  owned / reused / grown, the backbone's pruning ratio; the backbone search's
                                  similarity matrix; each backbone's accuracy against sparsity; continual-learning
                                  metrics (accuracy matrix, average accuracy, forgetting, BWT, forward transfer,
                                  parameters); the selection rules side by side when compare_selection_<cfg>.csv
                                  exists
    report_<cfg>_similarity.png   report_<cfg>_sparsity.png   report_<cfg>_accuracy.png   (report_<cfg>_selection.png)
    report_<cfg>.csv              every number of the report: section, item, metric, value

Forgetting is measured, not assumed: the backbone task is evaluated on its test set from the chosen backbone
checkpoint and again from the target's checkpoint (this needs the data; --no_eval skips it). A stage that has not
run is listed as missing and everything else is still written; the report's path is printed at the end.
"""
import argparse
import io
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models import cpg  # noqa: E402
from models.build import Network  # noqa: E402
from utils.report import metrics  # noqa: E402
from utils.checkpoint import atomic_write, load_checkpoint, read_json  # noqa: E402
from utils.config import REPO_ROOT, load_dataset_config  # noqa: E402
from utils.errors import UserError, report_user_errors  # noqa: E402
from utils.layout import MANIFEST, Layout, Manifest  # noqa: E402

MISSING = "missing"
# what an unreadable stage file raises (missing keys, bad numbers, torn CSVs, checkpoints torch cannot load): the
# report lists it and goes on
BROKEN = (UserError, OSError, ValueError, KeyError, TypeError, RuntimeError, pd.errors.ParserError)
MODALITY_COLOURS = {"image": "#1f77b4", "text": "#d95f02"}
RULES = ("similar", "original", "random", "scratch", "oracle")


# ---- what the stages wrote ---------------------------------------------------------------------------------------
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


def finished_manifest(path):
    """(manifest, None) when the record at `path` exists and every file it names exists, else (None, why)."""
    manifest = Manifest(path)
    try:
        data = manifest.read()
    except UserError as e:
        return None, str(e)
    if not data:
        return None, f"no record {path}"
    absent = [str(p) for p in manifest.outputs().values() if not p.is_file()]
    if absent:
        return None, f"{path} names files that do not exist: {', '.join(absent)}"
    return manifest, None


def collect_baselines(c):
    accs = None
    try:
        accs = read_json(c.layout.baseline_acc_file)
    except UserError as e:
        c.notes.append(str(e))
    for group in c.cfg.groups:
        manifest, why = finished_manifest(c.layout.baseline_dir(group) / MANIFEST)
        acc = (accs or {}).get(group)
        if acc is None:
            c.miss("baseline", group, f"no accuracy in {c.layout.baseline_acc_file}")
        elif manifest is None:
            c.miss("baseline", group, why)
        entry = {"acc": float(acc) if acc is not None else None,
                 "checkpoint": manifest.output("checkpoint") if manifest else None}
        c.baselines[group] = entry
        if entry["checkpoint"] is not None:
            try:
                entry["params"] = Network.from_checkpoint(load_checkpoint(entry["checkpoint"])).num_parameters()
            except BROKEN as e:
                c.miss("baseline", group, f"cannot read {entry['checkpoint']}: {e}")


def collect_backbones(c):
    for group in c.cfg.groups:
        manifest, why = finished_manifest(c.layout.backbone_dir(group) / MANIFEST)
        if manifest is None:
            c.miss("wo_backbone", group, why)
            c.miss("select_pruning_ratio_of_backbone", group, "no CPG backbone to choose a ratio of")
            continue
        results = manifest.results()
        entry = {"record": {float(k): float(v) for k, v in results.get("record", {}).items()},
                 "width": results.get("width"), "ratio": None, "checkpoint": None}
        choice, why = finished_manifest(c.layout.choice_manifest(group))
        if choice is None:
            c.miss("select_pruning_ratio_of_backbone", group, why)
        else:
            entry["ratio"] = float(choice.results().get("ratio"))
            entry["checkpoint"] = choice.output("checkpoint")
        c.backbones[group] = entry


def search_outputs(layout):
    """The result and table CSVs the search's manifest names (any target's entry), else the layout's paths."""
    try:
        for entry in (read_json(layout.search_manifest) or {}).values():
            outputs = {k: (layout.search_manifest.parent / v).resolve() for k, v in entry.get("outputs", {}).items()}
            if "result" in outputs and "table" in outputs:
                return outputs["result"], outputs["table"]
    except (UserError, AttributeError):
        pass
    return layout.result_csv, layout.table_csv


def collect_search(c):
    result, table = search_outputs(c.layout)
    if table.is_file():
        c.table = pd.read_csv(table)
    else:
        c.miss("find_backbone", "all", f"no similarity table {table}")
    picks = pd.read_csv(result) if result.is_file() else pd.DataFrame(columns=["target_id", "task_id"])
    for t, k in zip(picks.target_id, picks.task_id):
        c.picks[c.cfg.task_name(t)] = c.cfg.task_name(k)
    for group in c.cfg.groups:
        if group not in c.picks:
            c.miss("find_backbone", group, f"no pick in {result}")


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
        kv, why = finished_manifest(c.layout.kv_manifest(backbone, c.cfg.task_id(target)))
        if kv is None:
            c.miss("transfer_kv", target, why)
        manifest, why = finished_manifest(c.layout.target_dir(backbone, target) / MANIFEST)
        if manifest is None:
            c.miss("w_backbone_MM", target, why)
            continue
        try:
            results = manifest.results()
            baseline = results.get("baseline_acc", row["baseline_acc"])
            row.update(target_acc=float(results["target_acc"]), width=float(results["width"]),
                       baseline_acc=float(baseline) if baseline is not None else None)
            if baseline is not None:
                row["gain"] = metrics.forward_transfer(row["target_acc"], row["baseline_acc"])
            checkpoint = manifest.output("checkpoint")
            row.update(parameter_counts(Network.from_checkpoint(load_checkpoint(checkpoint)), target))
            row["checkpoint"] = checkpoint
        except BROKEN as e:
            c.miss("w_backbone_MM", target, f"cannot read its record or checkpoint ({type(e).__name__}: {e})")


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


# ---- measuring the chains ----------------------------------------------------------------------------------------
class Evaluator:
    """Test accuracy of a task from a checkpoint; each task's test data and each (checkpoint, task) is loaded once."""

    def __init__(self, cfg, device, batch_size):
        self.cfg, self.device, self.batch_size = cfg, device, batch_size
        self.loaders, self.done = {}, {}

    def __call__(self, checkpoint, task):
        key = (str(checkpoint), task)
        if key not in self.done:
            from utils.runtime import load_task
            from utils.trainer import Trainer
            if task not in self.loaders:
                self.loaders[task] = load_task(self.cfg, task, batch_size=self.batch_size,
                                               val_batch_size=self.batch_size, device=self.device)
            data = self.loaders[task]
            net = Network.from_checkpoint(load_checkpoint(checkpoint))
            net.model.to(data.device)
            self.done[key] = Trainer(net, task, data.device, None, data.test_loader, amp=data.amp).evaluate()[1]
        return self.done[key]


def measure_chains(c, evaluate):
    for target, row in c.targets.items():
        backbone = row["backbone"]
        if row.get("checkpoint") is None:
            c.miss("metrics", target, "no target checkpoint (run w_backbone_MM)")
            continue
        chosen = c.backbones.get(backbone, {}).get("checkpoint")
        if chosen is None:
            c.miss("metrics", target, f"the backbone {backbone} has no chosen checkpoint (choice.json)")
            continue
        if evaluate is None:
            c.miss("metrics", target, "not measured (--no_eval)")
            continue
        try:
            a00 = evaluate(chosen, backbone)
            a10 = evaluate(row["checkpoint"], backbone)
            a11 = evaluate(row["checkpoint"], target)
        except BROKEN as e:
            c.miss("metrics", target, f"cannot evaluate ({type(e).__name__}: {e})")
            continue
        acc = metrics.chain_matrix(a00, a10, a11)
        c.chains[target] = {"backbone": backbone, "A": acc, "acc": metrics.average_accuracy(acc),
                            "forgetting": metrics.forgetting_per_task(acc)[0], "bwt": metrics.bwt_per_task(acc)[0],
                            "fwt": row.get("gain", math.nan)}


# ---- figures ---------------------------------------------------------------------------------------------------
def save_figure(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def by_modality(cfg, groups):
    order = {m: i for i, m in enumerate(("image", "text"))}
    return sorted(groups, key=lambda g: (order.get(cfg.modality(g), 9), cfg.task_id(g)))


def label(cfg, group):
    return f"{cfg.task_id(group)} {group} ({cfg.modality(group)})"


def similarity_matrix(c):
    table = c.table
    ids = sorted(set(table.target_id) | set(table.task_id))
    groups = by_modality(c.cfg, [c.cfg.task_name(i) for i in ids])
    rows = [g for g in groups if c.cfg.task_id(g) in set(table.target_id)]
    cols = [g for g in groups if c.cfg.task_id(g) in set(table.task_id)]
    sim = pd.DataFrame(np.nan, index=rows, columns=cols)
    for t, k, v in zip(table.target_id, table.task_id, table.sim_euc):
        sim.loc[c.cfg.task_name(t), c.cfg.task_name(k)] = float(v)
    return sim


def modality_boundaries(cfg, groups):
    return [i for i in range(1, len(groups)) if cfg.modality(groups[i]) != cfg.modality(groups[i - 1])]


def plot_similarity(c, sim, path):
    n_r, n_c = sim.shape
    fig, ax = plt.subplots(figsize=(1.0 * n_c + 3.5, 0.8 * n_r + 2.2))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    values = np.ma.masked_invalid(sim.values)
    im = ax.imshow(values, cmap=cmap, aspect="auto")
    lo, hi = np.nanmin(sim.values), np.nanmax(sim.values)
    if n_r * n_c <= 400:
        for i in range(n_r):
            for j in range(n_c):
                v = sim.values[i, j]
                text = "—" if math.isnan(v) else f"{v:.3f}"
                bright = not math.isnan(v) and (v - lo) / max(hi - lo, 1e-12) > 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white"
                        if not math.isnan(v) else "#666666")
    for i, target in enumerate(sim.index):
        if c.picks.get(target) in sim.columns:
            j = list(sim.columns).index(c.picks[target])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    for b in modality_boundaries(c.cfg, list(sim.columns)):
        ax.axvline(b - 0.5, color="black", linewidth=2)
    for b in modality_boundaries(c.cfg, list(sim.index)):
        ax.axhline(b - 0.5, color="black", linewidth=2)
    ax.set_xticks(range(n_c), [label(c.cfg, g) for g in sim.columns], rotation=35, ha="right")
    ax.set_yticks(range(n_r), [label(c.cfg, g) for g in sim.index])
    for tick, g in zip(ax.get_xticklabels(), sim.columns):
        tick.set_color(MODALITY_COLOURS.get(c.cfg.modality(g), "black"))
    for tick, g in zip(ax.get_yticklabels(), sim.index):
        tick.set_color(MODALITY_COLOURS.get(c.cfg.modality(g), "black"))
    ax.set_xlabel("candidate backbone K (its baseline model)")
    ax.set_ylabel("target task T")
    ax.set_title(f"Backbone search ({c.cfg.name}): ModelDiff similarity sim_euc of T and K\n"
                 "red box = picked backbone; black lines separate image and text tasks", fontsize=10)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("sim_euc = 1 − cosine distance of the Euclidean DDVs (higher = more similar)")
    ax.legend(handles=[Patch(facecolor="none", edgecolor="red", linewidth=2, label="picked backbone"),
                       Patch(facecolor="#dddddd", label="not a candidate")],
              loc="upper left", bbox_to_anchor=(0, -0.22 if n_c > 4 else -0.15), ncol=2, fontsize=8, frameon=False)
    return save_figure(fig, path)


def plot_sparsity(c, path):
    groups = [g for g in c.cfg.groups if c.backbones.get(g, {}).get("record")]
    ncols = min(4, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.7 * nrows + 0.8), sharex=True, sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax, group in zip(axes.flat, groups):
        entry = c.backbones[group]
        xs = sorted(entry["record"])
        ax.plot(xs, [entry["record"][x] for x in xs], "o-", color=MODALITY_COLOURS.get(c.cfg.modality(group)),
                markersize=4, label="accuracy at that ratio")
        base = c.baselines.get(group, {}).get("acc")
        if base is not None:
            ax.axhline(base, color="grey", linestyle="--", linewidth=1, label="baseline accuracy")
        ratio = entry.get("ratio")
        if ratio is not None and ratio in entry["record"]:
            ax.plot([ratio], [entry["record"][ratio]], marker="*", color="red", markersize=15, linestyle="none",
                    label="chosen ratio")
        ax.set_title(f"{group} ({c.cfg.modality(group)}): chose {ratio if ratio is not None else MISSING}",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlim(-0.05, 1.0)
        ax.set_ylim(-0.05, 1.05)
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.supxlabel("pruning ratio (fraction of the task's weights freed)", y=0.05)
    fig.supylabel("test accuracy")
    fig.suptitle(f"CPG backbones ({c.cfg.name}): accuracy against sparsity, chosen ratio starred")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, path)


def plot_accuracy(c, path):
    rows = [r for r in c.targets.values() if r.get("target_acc") is not None]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4.2))
    base = [r["baseline_acc"] if r["baseline_acc"] is not None else np.nan for r in rows]
    acc = [r["target_acc"] for r in rows]
    ax.bar(x - 0.2, base, 0.4, color="#bbbbbb", label="baseline (own model)")
    ax.bar(x + 0.2, acc, 0.4, color=[MODALITY_COLOURS.get(r["backbone_modality"]) for r in rows],
           label="on its backbone (CPG)")
    for i, r in enumerate(rows):
        if r.get("gain") is not None:
            ax.text(i + 0.2, acc[i] + 0.02, f"{r['gain']:+.3f}", ha="center", fontsize=8)
    ax.set_xticks(x, [f"{r['target']}\non {r['backbone']}" for r in rows], fontsize=8)
    for tick, r in zip(ax.get_xticklabels(), rows):
        tick.set_color(MODALITY_COLOURS.get(r["modality"], "black"))
    ax.set_ylim(0, 1.15)
    ax.set_xlabel("target task on its picked backbone (label colour: target modality)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Targets ({c.cfg.name}): baseline against CPG on the picked backbone (numbers: gain)")
    handles = [Patch(color="#bbbbbb", label="baseline (own model)")] + \
        [Patch(color=col, label=f"on its backbone, {m} backbone") for m, col in MODALITY_COLOURS.items()
         if any(r["backbone_modality"] == m for r in rows)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_selection(c, summary, rules, path):
    targets = list(summary.index)
    x = np.arange(len(targets))
    width = 0.8 / max(len(rules), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(targets) * max(len(rules), 2) / 2 + 2), 4.2))
    for n, rule in enumerate(rules):
        ax.bar(x - 0.4 + width * (n + 0.5), summary[(rule, "mean")], width, yerr=summary[(rule, "std")].fillna(0),
               capsize=2, label=rule)
    ax.set_xticks(x, targets, fontsize=8)
    ax.set_xlabel("target task (average = mean over targets per seed)")
    ax.set_ylabel("target accuracy (mean ± std over seeds)")
    ax.set_ylim(0, 1.15)
    ax.set_title(f"Selection rules side by side ({c.cfg.name})")
    ax.legend(title="rule", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


# ---- the report ------------------------------------------------------------------------------------------------
def fmt(value, digits=4, sign=False):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def md_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def stage_status(c):
    tasks = len(c.cfg.groups)
    rows = []
    for stage in ("baseline", "wo_backbone", "select_pruning_ratio_of_backbone", "find_backbone", "transfer_kv",
                  "w_backbone_MM", "metrics"):
        missing = sorted({task for s, task, _ in c.missing if s == stage})
        rows.append((stage, "done" if not missing else f"**missing** for {len(missing)} of {tasks}: "
                     f"{', '.join(missing)}"))
    return md_table(["stage", "status"], rows)


def main_table(c):
    rows = []
    for r in c.targets.values():
        c.number("targets", r["target"], "baseline_acc", r["baseline_acc"])
        for key in ("target_acc", "gain", "width", "owned", "reused", "earlier", "grown", "head", "chain_params",
                    "backbone_ratio"):
            c.number("targets", r["target"], key, r.get(key))
        c.number("targets", r["target"], "backbone", r["backbone"])
        backbone = f"{r['backbone']} ({r['backbone_modality']})" if r["backbone"] else MISSING
        reused = f"{fmt(r.get('reused'))} of {fmt(r.get('earlier'))}" if r.get("reused") is not None else MISSING
        rows.append((f"{r['target_id']} {r['target']} ({r['modality']})", fmt(r["baseline_acc"]), backbone,
                     fmt(r.get("target_acc")), fmt(r.get("gain"), sign=True), fmt(r.get("width"), 1),
                     fmt(r.get("owned")), reused, fmt(r.get("grown")), fmt(r.get("backbone_ratio"), 2)))
    return md_table(["target", "baseline acc", "picked backbone", "acc on backbone", "gain", "width", "owns",
                     "reuses (of earlier)", "grown", "backbone ratio"], rows)


def search_section(c, out):
    lines = ["## Backbone search", ""]
    if c.table is None:
        return lines + [f"Similarity table: {MISSING} (run run_pickaback/find_backbone.sh {c.cfg.name}).", ""]
    sim = similarity_matrix(c)
    for t in sim.index:
        for k in sim.columns:
            if not math.isnan(sim.loc[t, k]):
                c.number("similarity", f"{t}|{k}", "sim_euc", float(sim.loc[t, k]))
    path = plot_similarity(c, sim, out["similarity"])
    lines += [f"![similarity matrix]({path.name})", "",
              "sim_euc of target T (row) and candidate K (column), ordered image tasks first; the pick of each "
              "target is its row's boxed cell.", ""]
    rows = [(t, c.picks.get(t, MISSING), fmt(sim.loc[t, c.picks[t]]) if c.picks.get(t) in sim.columns else MISSING,
             sim.loc[t].idxmax() if sim.loc[t].notna().any() else MISSING) for t in sim.index]
    return lines + [md_table(["target", "picked", "its sim_euc", "most similar (max sim_euc)"], rows), ""]


def sparsity_section(c, out):
    lines = ["## Backbones: accuracy against sparsity", ""]
    if not c.backbones:
        return lines + [f"No CPG backbone: {MISSING} (run run_pickaback/wo_backbone.sh {c.cfg.name}).", ""]
    path = plot_sparsity(c, out["sparsity"])
    rows = []
    for group, entry in c.backbones.items():
        for s, acc in sorted(entry["record"].items()):
            c.number("record", f"{group}|{s}", "accuracy", acc)
        c.number("record", group, "chosen_ratio", entry["ratio"])
        chosen = entry["record"].get(entry["ratio"]) if entry["ratio"] is not None else None
        rows.append((group, fmt(c.baselines.get(group, {}).get("acc")), fmt(entry["width"], 1),
                     fmt(entry["ratio"], 2), fmt(chosen), max(entry["record"]) if entry["record"] else MISSING))
    return lines + [f"![accuracy against sparsity]({path.name})", "",
                    md_table(["backbone", "baseline acc", "width", "chosen ratio", "acc at chosen", "largest ratio "
                              "recorded"], rows), ""]


FORMULAS = """A[j, i] is the test accuracy on task i after training task j (Avalanche's convention). For a chain the
rows are (after the backbone was trained, after the target was trained) and the columns (backbone task, target task);
A[0, 1] is not measured (the backbone has no head for the target).

- average accuracy after the last task: ACC = mean_i A[t, i] = (A[1, 0] + A[1, 1]) / 2
- forgetting of the backbone task: f = A[0, 0] − A[1, 0] (Avalanche: accuracy right after a task was trained minus
  the accuracy after the last task)
- backward transfer: BWT = mean_{i<t} (A[t, i] − A[i, i]) = −f
- forward transfer: FWT = (target accuracy on its backbone) − (target's baseline accuracy)

A[0, 0] is the backbone task evaluated from the chosen backbone checkpoint (choice.json), A[1, 0] and A[1, 1] the
backbone and target tasks evaluated from the target's checkpoint, each on its test set: forgetting is **measured**.
"""


def metrics_section(c):
    lines = ["## Continual-learning metrics", "", FORMULAS]
    rows = []
    for target, ch in c.chains.items():
        a = ch["A"]
        for (j, i), v in np.ndenumerate(a):
            if not math.isnan(v):
                c.number("accuracy_matrix", f"{ch['backbone']}->{target}", f"A[{j},{i}]", float(v))
        for key in ("acc", "forgetting", "bwt", "fwt"):
            c.number("metrics", f"{ch['backbone']}->{target}", key, ch[key])
        rows.append((f"{ch['backbone']} → {target}", fmt(a[0, 0]), fmt(a[1, 0]), fmt(a[1, 1]), fmt(ch["acc"]),
                     fmt(ch["forgetting"]), fmt(ch["bwt"]), fmt(ch["fwt"], sign=True)))
    if rows:
        mean = {k: float(np.mean([ch[k] for ch in c.chains.values()])) for k in ("acc", "forgetting", "bwt", "fwt")}
        for k, v in mean.items():
            c.number("metrics", "mean", k, v)
        rows.append(("**mean**", "", "", "", fmt(mean["acc"]), fmt(mean["forgetting"]), fmt(mean["bwt"]),
                     fmt(mean["fwt"], sign=True)))
        lines.append(md_table(["chain backbone → target", "A[0,0]", "A[1,0]", "A[1,1]", "ACC", "forgetting f",
                               "BWT", "FWT"], rows))
    else:
        lines.append(f"No chain measured: {MISSING} (see the stages above).")
    lines.append("")
    chains = [r for r in c.targets.values() if r.get("chain_params") is not None]
    separate = [b["params"] for b in c.baselines.values() if b.get("params") is not None]
    lines += ["### Parameters", ""]
    total = sum(r["chain_params"] for r in chains) if chains else None
    sep = sum(separate) if separate else None
    c.number("parameters", "all chains", "params", total)
    c.number("parameters", "one model per task", "params", sep)
    rows = [("all chains (sum over targets of the target checkpoint's parameters)", fmt(total), len(chains)),
            ("one separate model per task (sum of the baseline checkpoints' parameters)", fmt(sep), len(separate))]
    if total is not None and sep:
        rows.append(("ratio chains / separate models", fmt(total / sep, 3), ""))
        c.number("parameters", "chains/separate", "ratio", total / sep)
    lines += [md_table(["models", "parameters", "count"], rows), "",
              "Parameters exclude the piggymasks (real-valued masks that are binarised), as Network.num_parameters.",
              ""]
    return lines


def selection_section(c, out):
    path = c.layout.comparison_csv
    if not path.is_file():
        return []
    lines = ["## Selection rules side by side", "", f"From `{path.name}`.", ""]
    frame = pd.read_csv(path, keep_default_na=False)
    for col in ("target_acc", "baseline_acc"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["fwt"] = frame.target_acc - frame.baseline_acc
    rules = [r for r in RULES if r in set(frame.rule)] + sorted(set(frame.rule) - set(RULES))
    targets = [t for t in c.cfg.groups if t in set(frame.target)] + sorted(set(frame.target) - set(c.cfg.groups))

    def summary(column):
        per_target = frame.groupby(["target", "rule"])[column].agg(["mean", "std", "count"])
        avg = frame.groupby(["rule", "seed"])[column].mean().groupby("rule").agg(["mean", "std", "count"])
        table = {}
        for rule in rules:
            for t in targets:
                table.setdefault(t, {})[rule] = per_target.loc[(t, rule)] if (t, rule) in per_target.index else None
            table.setdefault("average", {})[rule] = avg.loc[rule] if rule in avg.index else None
        return table

    def cell(s, sign=False):
        if s is None:
            return MISSING
        std = "" if math.isnan(s["std"]) else f" ± {s['std']:.4f}"
        return f"{fmt(float(s['mean']), sign=sign)}{std} (n={int(s['count'])})"

    for column, title, sign in (("target_acc", "Target accuracy, mean ± std over seeds", False),
                                ("fwt", "Forward transfer (target_acc − baseline_acc), mean ± std over seeds",
                                 True)):
        table = summary(column)
        for t, by_rule in table.items():
            for rule, s in by_rule.items():
                if s is not None:
                    c.number("selection", f"{t}|{rule}", f"{column}_mean", float(s["mean"]))
                    c.number("selection", f"{t}|{rule}", f"{column}_std", float(s["std"]))
                    c.number("selection", f"{t}|{rule}", f"{column}_n", int(s["count"]))
        lines += [f"### {title}", "", md_table(["target", *rules],
                                                [(t, *(cell(by_rule[r], sign) for r in rules))
                                                 for t, by_rule in table.items()]), ""]
    lines += ["\"average\" is the mean over targets within a seed, then mean ± std over seeds.", ""]
    similar = frame[frame.rule == "similar"].set_index(["target", "seed"]).backbone
    oracle_rows = frame[frame.rule == "oracle"].set_index(["target", "seed"])
    # the oracle's best may be a tie: similar agrees when its pick is one of the equally good candidates
    oracle = (oracle_rows.best_backbones.map(lambda v: set(str(v).split(";"))) if "best_backbones" in oracle_rows
              else oracle_rows.backbone.map(lambda v: {v}))
    both = similar.index.intersection(oracle.index)
    rows = []
    for t in targets:
        keys = [k for k in both if k[0] == t]
        hits = sum(similar[k] in oracle[k] for k in keys)
        c.number("selection", t, "similar_is_oracle", hits / len(keys) if keys else None)
        rows.append((t, f"{hits}/{len(keys)}" if keys else MISSING))
    hits = sum(similar[k] in oracle[k] for k in both)
    c.number("selection", "all", "similar_is_oracle", hits / len(both) if len(both) else None)
    rows.append(("**all**", f"{hits}/{len(both)}" + (f" ({100 * hits / len(both):.0f}%)" if len(both) else "")))
    lines += ["### How often `similar` picked the oracle's backbone", "",
              md_table(["target", "similar = oracle (seeds)"], rows),
              "", "(When several candidates tie for the oracle's best accuracy, picking any of them counts.)", ""]
    lines += verdict(c, frame, rules)
    acc = summary("target_acc")
    means = pd.DataFrame({(r, k): [float(acc[t][r][k]) if acc[t][r] is not None else np.nan for t in acc]
                          for r in rules for k in ("mean", "std")}, index=list(acc))
    figure = plot_selection(c, means, rules, out["selection"])
    lines[4:4] = [f"![selection rules]({figure.name})", ""]
    return lines


def verdict(c, frame, rules):
    """Does picking pay? `similar` against every other rule: the mean over seeds of the per-seed difference of the
    targets' average accuracy, against the spread (std) over seeds of either rule."""
    per_seed = frame.groupby(["rule", "seed"]).target_acc.mean().unstack("rule")
    if "similar" not in per_seed:
        return []
    lines = ["### Does picking pay?", ""]
    for rule in [r for r in rules if r not in ("similar", "oracle")]:
        paired = (per_seed["similar"] - per_seed[rule]).dropna()
        if paired.empty:
            continue
        spread = max(per_seed["similar"].std(), per_seed[rule].std())
        spread = 0.0 if math.isnan(spread) else spread
        d = float(paired.mean())
        c.number("selection", f"similar-{rule}", "mean_difference", d)
        c.number("selection", f"similar-{rule}", "spread", spread)
        word = "beats" if d > spread else "does not beat"
        lines.append(f"- `similar` {word} `{rule}` by more than the spread over seeds: {d:+.4f} on average over "
                     f"{len(paired)} seed(s), spread ±{spread:.4f}.")
    if "oracle" in per_seed:
        gap = float((per_seed["oracle"] - per_seed["similar"]).mean())
        c.number("selection", "oracle-similar", "mean_difference", gap)
        lines.append(f"- The oracle (every candidate tried, best test accuracy kept: an optimistic bound) is "
                     f"{gap:+.4f} above `similar` on average.")
    if "scratch" in per_seed:
        alone = float((frame[frame.rule == "scratch"].target_acc - frame[frame.rule == "scratch"].baseline_acc)
                      .mean())
        c.number("selection", "scratch", "below_baseline", alone)
        lines.append(f"- Trained alone (`scratch`), the targets reach {alone:+.4f} of their baseline accuracy on "
                     f"average: the closer to 0, the less a backbone can add with this much training data.")
    return lines + [""]


def missing_lines(c):
    """One line per stage and reason, the reason's task name written <task>: `- stage (group1, group2): why`."""
    grouped = {}
    for stage, task, why in c.missing:
        grouped.setdefault((stage, why.replace(task, "<task>") if task != "all" else why), []).append(task)
    return [f"- {stage} ({', '.join(tasks)}): {why}" for (stage, why), tasks in grouped.items()]


def build(c, evaluate):
    out = {name: c.layout.report(f"_{name}.png") for name in ("similarity", "sparsity", "accuracy",
                                                                     "selection")}
    steps = [("baseline", collect_baselines), ("wo_backbone", collect_backbones), ("find_backbone", collect_search),
             ("w_backbone_MM", collect_targets)]
    for stage, step in steps:
        try:
            step(c)
        except BROKEN as e:                      # a broken file of a stage: listed, and the rest still written
            c.miss(stage, "all", f"{type(e).__name__}: {e}")
    measure_chains(c, evaluate)
    lines = [f"# Pick-a-back report: `{c.cfg.name}`", "",
             f"Working folder `{c.layout.work_dir}`; every number of this report is in "
             f"`{c.layout.report('.csv').name}`.",
             "", "## Stages", "", stage_status(c), ""]
    lines += ["## Targets", "", main_table(c), "",
              "gain = acc on backbone − baseline acc; owns = weights whose ownership mask is the target; reuses = "
              "weights of the backbone task its binarised piggymask keeps (of all the backbone's weights in the "
              "layers the target computes with); grown = parameters of the feed-forward units growth added for it; "
              "backbone ratio = the pruning ratio chosen for the backbone.", ""]
    if any(r.get("target_acc") is not None for r in c.targets.values()):
        lines += [f"![target accuracy]({plot_accuracy(c, out['accuracy']).name})", ""]
    for stage, make in (("find_backbone", lambda: search_section(c, out)),
                        ("wo_backbone", lambda: sparsity_section(c, out)), ("metrics", lambda: metrics_section(c)),
                        ("compare_selection", lambda: selection_section(c, out))):
        try:
            lines += make()
        except BROKEN as e:
            c.miss(stage, "all", f"section not written ({type(e).__name__}: {e})")
    if c.missing or c.notes:
        lines += ["## Missing", ""] + missing_lines(c) + [f"- {note}" for note in c.notes] + [""]
    return "\n".join(lines)


def write_report(config, work_dir=None, data_root=None, device="cpu", batch_size=100, evaluate=True,
                 arch="perceiver_io"):
    """Write report_<cfg>.md, its figures and report_<cfg>.csv; returns the Markdown file's path."""
    cfg = load_dataset_config(config, data_root, check_folders=False)
    layout = Layout(Path(work_dir or os.environ.get("MMPAB_WORK_DIR") or REPO_ROOT), cfg.name, arch)
    c = Collected(cfg, layout)
    text = build(c, Evaluator(cfg, device, batch_size) if evaluate else None)
    numbers = pd.DataFrame(c.numbers, columns=["section", "item", "metric", "value"])
    numbers["value"] = numbers["value"].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                            else round(float(v), 12) if isinstance(v, float) else v)
    csv_text = numbers.to_csv(index=False, lineterminator="\n")
    atomic_write(layout.report(".csv"), lambda f: f.write(csv_text.encode()))
    path = layout.report()
    atomic_write(path, lambda f: f.write(text.encode()))
    return path, c


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_config", help="section of utils/dataset_config.yaml (cub, oxford, mscoco, demo, ...)")
    p.add_argument("--work_dir", help="the stages' working folder (default: $MMPAB_WORK_DIR, else the repository)")
    p.add_argument("--data_root", help="the data (default: $MMPAB_DATA_ROOT, else data/ in the repository)")
    p.add_argument("--arch", default="perceiver_io")
    p.add_argument("--device", default="cpu", help="where to evaluate the chains: cpu (default), auto, cuda, cuda:N")
    p.add_argument("--batch_size", type=int, default=100, help="test batch size of the evaluations")
    p.add_argument("--no_eval", action="store_true", help="do not evaluate the chains (forgetting, BWT and the "
                   "accuracy matrix are then listed as not measured)")
    return p.parse_args(argv)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    path, _ = write_report(args.dataset_config, args.work_dir, args.data_root, args.device, args.batch_size,
                           not args.no_eval, args.arch)
    print(path)


if __name__ == "__main__":
    main()
