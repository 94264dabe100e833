"""The report's Markdown, section by section, from what utils/report/collect.py gathered (and the chains
utils/report/evaluate.py measured). Each section returns its lines and puts every number it shows into the
Collected (c.number) for report_<cfg>.csv; the figures it links are drawn by the writer and passed in by name.
"""
import math

import numpy as np

from utils.report.collect import MISSING
from utils.report.verdicts import oracle_agreement, summary, verdict

STATUS_STAGES = ("baseline", "wo_backbone", "select_pruning_ratio_of_backbone", "find_backbone", "transfer_kv",
                 "w_backbone_MM", "metrics")


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


# ---- the head: stages and targets ----------------------------------------------------------------------------
def stage_status(c):
    tasks = len(c.cfg.groups)
    rows = []
    for stage in STATUS_STAGES:
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


def head(c):
    """Title, the stages' status and the targets' table: written before any section can add to c.missing."""
    return [f"# Pick-a-back report: `{c.cfg.name}`", "",
            f"Working folder `{c.layout.work_dir}`; every number of this report is in "
            f"`{c.layout.report('.csv').name}`.",
            "", "## Stages", "", stage_status(c), "",
            "## Targets", "", main_table(c), "",
            "gain = acc on backbone − baseline acc; owns = weights whose ownership mask is the target; reuses = "
            "weights of the backbone task its binarised piggymask keeps (of all the backbone's weights in the "
            "layers the target computes with); grown = parameters of the feed-forward units growth added for it; "
            "backbone ratio = the pruning ratio chosen for the backbone.", ""]


def accuracy_figure(figure):
    return [f"![target accuracy]({figure})", ""]


# ---- the sections ------------------------------------------------------------------------------------------------
def search_section(c, sim, figure):
    """`sim`: the similarity matrix (None without the search's table); `figure`: its plot's file name."""
    lines = ["## Backbone search", ""]
    if sim is None:
        return lines + [f"Similarity table: {MISSING} (run run_pickaback/find_backbone.sh {c.cfg.name}).", ""]
    for t in sim.index:
        for k in sim.columns:
            if not math.isnan(sim.loc[t, k]):
                c.number("similarity", f"{t}|{k}", "sim_euc", float(sim.loc[t, k]))
    lines += [f"![similarity matrix]({figure})", "",
              "sim_euc of target T (row) and candidate K (column), ordered image tasks first; the pick of each "
              "target is its row's boxed cell.", ""]
    rows = [(t, c.picks.get(t, MISSING), fmt(sim.loc[t, c.picks[t]]) if c.picks.get(t) in sim.columns else MISSING,
             sim.loc[t].idxmax() if sim.loc[t].notna().any() else MISSING) for t in sim.index]
    return lines + [md_table(["target", "picked", "its sim_euc", "most similar (max sim_euc)"], rows), ""]


def sparsity_section(c, figure):
    """`figure`: the file name of the backbones' accuracy-against-sparsity plot (None without backbones)."""
    lines = ["## Backbones: accuracy against sparsity", ""]
    if not c.backbones:
        return lines + [f"No CPG backbone: {MISSING} (run run_pickaback/wo_backbone.sh {c.cfg.name}).", ""]
    rows = []
    for group, entry in c.backbones.items():
        for s, acc in sorted(entry["record"].items()):
            c.number("record", f"{group}|{s}", "accuracy", acc)
        c.number("record", group, "chosen_ratio", entry["ratio"])
        chosen = entry["record"].get(entry["ratio"]) if entry["ratio"] is not None else None
        rows.append((group, fmt(c.baselines.get(group, {}).get("acc")), fmt(entry["width"], 1),
                     fmt(entry["ratio"], 2), fmt(chosen), max(entry["record"]) if entry["record"] else MISSING))
    return lines + [f"![accuracy against sparsity]({figure})", "",
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
    return lines + parameters_lines(c)


def parameters_lines(c):
    chains = [r for r in c.targets.values() if r.get("chain_params") is not None]
    separate = [b["params"] for b in c.baselines.values() if b.get("params") is not None]
    lines = ["### Parameters", ""]
    total = sum(r["chain_params"] for r in chains) if chains else None
    sep = sum(separate) if separate else None
    c.number("parameters", "all chains", "params", total)
    c.number("parameters", "one model per task", "params", sep)
    rows = [("all chains (sum over targets of the target checkpoint's parameters)", fmt(total), len(chains)),
            ("one separate model per task (sum of the baseline checkpoints' parameters)", fmt(sep), len(separate))]
    if total is not None and sep:
        rows.append(("ratio chains / separate models", fmt(total / sep, 3), ""))
        c.number("parameters", "chains/separate", "ratio", total / sep)
    return lines + [md_table(["models", "parameters", "count"], rows), "",
                    "Parameters exclude the piggymasks (real-valued masks that are binarised), as "
                    "Network.num_parameters.", ""]


def selection_section(c, cmp, figure):
    """The rules side by side from a verdicts.Comparison; `figure`: the file name of their plot."""
    lines = ["## Selection rules side by side", "", f"From `{cmp.path.name}`.", "",
             f"![selection rules]({figure})", ""]

    def cell(s, sign=False):
        if s is None:
            return MISSING
        std = "" if math.isnan(s["std"]) else f" ± {s['std']:.4f}"
        return f"{fmt(float(s['mean']), sign=sign)}{std} (n={int(s['count'])})"

    for column, title, sign in (("target_acc", "Target accuracy, mean ± std over seeds", False),
                                ("fwt", "Forward transfer (target_acc − baseline_acc), mean ± std over seeds",
                                 True)):
        table = summary(cmp, column)
        for t, by_rule in table.items():
            for rule, s in by_rule.items():
                if s is not None:
                    c.number("selection", f"{t}|{rule}", f"{column}_mean", float(s["mean"]))
                    c.number("selection", f"{t}|{rule}", f"{column}_std", float(s["std"]))
                    c.number("selection", f"{t}|{rule}", f"{column}_n", int(s["count"]))
        lines += [f"### {title}", "", md_table(["target", *cmp.rules],
                                                [(t, *(cell(by_rule[r], sign) for r in cmp.rules))
                                                 for t, by_rule in table.items()]), ""]
    lines += ["\"average\" is the mean over targets within a seed, then mean ± std over seeds.", ""]
    return lines + agreement_lines(c, cmp) + verdict(c, cmp)


def agreement_lines(c, cmp):
    per_target, (hits, n) = oracle_agreement(cmp)
    rows = []
    for t, (t_hits, t_n) in per_target.items():
        c.number("selection", t, "similar_is_oracle", t_hits / t_n if t_n else None)
        rows.append((t, f"{t_hits}/{t_n}" if t_n else MISSING))
    c.number("selection", "all", "similar_is_oracle", hits / n if n else None)
    rows.append(("**all**", f"{hits}/{n}" + (f" ({100 * hits / n:.0f}%)" if n else "")))
    return ["### How often `similar` picked the oracle's backbone", "",
            md_table(["target", "similar = oracle (seeds)"], rows),
            "", "(When several candidates tie for the oracle's best accuracy, picking any of them counts.)", ""]


# ---- what is missing ---------------------------------------------------------------------------------------------
def missing_lines(c):
    """One line per stage and reason, the reason's task name written <task>: `- stage (group1, group2): why`."""
    grouped = {}
    for stage, task, why in c.missing:
        grouped.setdefault((stage, why.replace(task, "<task>") if task != "all" else why), []).append(task)
    return [f"- {stage} ({', '.join(tasks)}): {why}" for (stage, why), tasks in grouped.items()]


def missing_section(c):
    if not (c.missing or c.notes):
        return []
    return ["## Missing", ""] + missing_lines(c) + [f"- {note}" for note in c.notes] + [""]
