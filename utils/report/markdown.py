"""The report's Markdown, section by section, from what utils/report/collect.py gathered (and the chains
utils/report/evaluate.py measured). Each section returns its lines and puts every number it shows into the
Collected (c.number) for report_<cfg>.csv; the figures it links are drawn by the writer and passed in by name.
"""
import math

import numpy as np

from utils.report import sequence
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
    original = c.cfg.original_task_ids if c.cfg.renumbered else None
    for r in c.targets.values():
        if original:
            c.number("targets", r["target"], "original_task_id", original[r["target"]])
        c.number("targets", r["target"], "baseline_acc", r["baseline_acc"])
        for key in ("target_acc", "gain", "width", "owned", "reused", "earlier", "grown", "head", "chain_params",
                    "backbone_ratio"):
            c.number("targets", r["target"], key, r.get(key))
        c.number("targets", r["target"], "backbone", r["backbone"])
        backbone = f"{r['backbone']} ({r['backbone_modality']})" if r["backbone"] else MISSING
        reused = f"{fmt(r.get('reused'))} of {fmt(r.get('earlier'))}" if r.get("reused") is not None else MISSING
        row = (f"{r['target_id']} {r['target']} ({r['modality']})", fmt(r["baseline_acc"]), backbone,
               fmt(r.get("target_acc")), fmt(r.get("gain"), sign=True), fmt(r.get("width"), 1),
               fmt(r.get("owned")), reused, fmt(r.get("grown")), fmt(r.get("backbone_ratio"), 2))
        rows.append(row[:1] + (original[r["target"]],) + row[1:] if original else row)
    headers = ["target", "baseline acc", "picked backbone", "acc on backbone", "gain", "width", "owns",
               "reuses (of earlier)", "grown", "backbone ratio"]
    return md_table(headers[:1] + ["original id"] + headers[1:] if original else headers, rows)


def renumbering_note(c):
    """When the config's task ids are not the original's (cub): where the mapping is, and what cannot be compared."""
    if not c.cfg.renumbered:
        return []
    ids = set(c.cfg.original_task_ids.values())
    gaps = ", ".join(str(i) for i in range(1, max(ids) + 1) if i not in ids)
    return [f"Task ids are this config's and differ from the original's: the column original id gives each "
            f"target's id in the original's logs (`original_task_ids` in `{c.cfg.config_file}`). The original's "
            f"tasks {gaps + ' and any' if gaps else 'any'} above {max(ids)} have no task here: their rows in its logs "
            f"cannot be compared.", ""]


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
            "backbone ratio = the pruning ratio chosen for the backbone.", ""] + renumbering_note(c)


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


SEQUENCE_FORMULAS = """A[j, i] is the test accuracy of the task at position i of the order after step j learned the task
at position j (both 1-based; — above the diagonal: not learned yet). With t the last step, as in the chains above
(Avalanche's conventions):

- average accuracy after the last task: ACC = mean_i A[t, i]
- forgetting of task i < t: f_i = A[i, i] − A[t, i]; F = mean_{i<t} f_i; BWT = mean_{i<t} (A[t, i] − A[i, i]) = −F
- forward transfer of task i: FWT_i = A[i, i] − (task i's separate baseline accuracy); FWT = mean_i FWT_i
"""


def sequence_section(c, seq, matrix_figure, figure):
    """The sequence run from a sequence.Sequence: run `default` in full (figures: the file names of its matrix and
    of its three panels), then the order comparison's runs by rule."""
    lines = ["## Sequence: one network learns the tasks in turn", "",
             f"From `{seq.path.name}`: one CPG network learns the tasks of an order one after the other; after each "
             f"step every task learned so far is evaluated on its test set.", ""]
    for run in seq.runs.values():
        run_numbers(c, run)
    if seq.default is not None:
        lines += sequence_run_lines(c, seq.default, matrix_figure, figure)
    else:
        lines += [f"Run `{sequence.DEFAULT}`: {MISSING} (run run_pickaback/sequence.sh {c.cfg.name}).", ""]
    return lines + (sequence_order_lines(c, seq) if seq.compared else [])


def run_numbers(c, run):
    """A run's final numbers into the CSV (section sequence_runs, item the run's name)."""
    c.number("sequence_runs", run.name, "rule", run.rule)
    c.number("sequence_runs", run.name, "seed", run.seed)
    c.number("sequence_runs", run.name, "order", " ".join(run.order))
    for key in ("acc", "forgetting", "bwt", "fwt", "params", "separate_params", "ratio", "width", "free",
                "seconds"):
        c.number("sequence_runs", run.name, key, run.m[key])


def sequence_run_lines(c, run, matrix_figure, figure):
    m, t = run.m, len(run.order)
    lines = [f"### Run `{run.name}`: order `{run.rule}` (seed {run.seed}): {' → '.join(run.order)}", "",
             SEQUENCE_FORMULAS, f"![sequence accuracy matrix]({matrix_figure})", ""]
    rows = []
    for j in range(t):
        for i in range(j + 1):
            c.number("sequence_matrix", run.name, f"A[{j + 1},{i + 1}]", float(run.A[j, i]))
        rows.append((f"{j + 1} {run.order[j]}", *(fmt(float(run.A[j, i])) if i <= j else "—" for i in range(t))))
    lines += [md_table(["after step j (learned)", *(f"{i + 1} {g}" for i, g in enumerate(run.order))], rows), ""]
    lines += [f"- average accuracy after the last task: ACC = {fmt(m['acc'])}",
              f"- forgetting F = {fmt(m['forgetting'])}, backward transfer BWT = {fmt(m['bwt'], sign=True)}",
              f"- forward transfer against the baselines: FWT = {fmt(m['fwt'], sign=True)}", ""]
    rows = []
    for i, task in enumerate(run.order):
        last = i == t - 1                 # no forgetting for the last task (Avalanche: left out of the means)
        values = {"position": i + 1, "baseline_acc": run.baseline[i], "just_learned": m["just_learned"][i],
                  "fwt": m["fwt_per_task"][i], "final_acc": m["final"][i],
                  "final_vs_baseline": m["final_vs_baseline"][i], "owned": m["owned"][i],
                  "forgetting": None if last else m["forgetting_per_task"][i],
                  "bwt": None if last else m["bwt_per_task"][i]}
        for key, v in values.items():
            if v is not None:
                c.number("sequence_tasks", f"{run.name}|{task}", key, v)
        rows.append((i + 1, task, fmt(values["baseline_acc"]), fmt(values["just_learned"]),
                     fmt(values["fwt"], sign=True), fmt(values["final_acc"]),
                     fmt(values["final_vs_baseline"], sign=True), "—" if last else fmt(values["forgetting"]),
                     "—" if last else fmt(values["bwt"], sign=True), fmt(values["owned"], 3)))
    lines += [md_table(["position", "task", "baseline acc", "right after learning A[i,i]", "FWT_i", "final A[t,i]",
                        "final − baseline", "forgetting f_i", "BWT_i", "owns (after the last step)"], rows), ""]
    return lines + sequence_steps_lines(c, run, figure)


def sequence_steps_lines(c, run, figure):
    rows = []
    for j, s in run.steps.iterrows():
        ratio = s.params / s.separate_params if s.separate_params else math.nan
        for key, v in (("learned", s.learned), ("params", int(s.params)), ("separate_params", int(s.separate_params)),
                       ("ratio", ratio), ("width", float(s.width)), ("free", float(s.free)),
                       ("seconds", float(s.seconds))):
            c.number("sequence_steps", f"{run.name}|{j}", key, v)
        rows.append((j, s.learned, fmt(int(s.params)), fmt(int(s.separate_params)), fmt(ratio, 3),
                     fmt(float(s.width), 2), fmt(float(s.free), 3), fmt(float(s.seconds), 1)))
    m = run.m
    return ["#### Compactness and time", "", f"![sequence accuracy, parameters and width]({figure})", "",
            md_table(["step", "learned", "params (one network)", "separate models (tasks 1..j)", "ratio", "width",
                      "free share", "seconds"], rows), "",
            f"After the last step the network holds {fmt(m['params'])} parameters against {fmt(m['separate_params'])} "
            f"for one separate model per task (ratio {fmt(m['ratio'], 3)}), at width {fmt(m['width'], 2)}, with a "
            f"share {fmt(m['free'], 3)} of its prunable weights still free; training took {fmt(m['seconds'], 1)} s "
            f"in all. Each task's owned share is in the table above.", ""]


def sequence_order_lines(c, seq):
    """The comparison's runs by rule: mean ± std over seeds of their final numbers, and the verdict."""
    stats = sequence.summary(seq)
    rows = []
    for rule, by in stats.items():
        for key, (mean, std, _) in by.items():
            c.number("sequence_order", rule, f"{key}_mean", mean)
            c.number("sequence_order", rule, f"{key}_std", std)
        c.number("sequence_order", rule, "n", by["acc"][2])
        rows.append((f"`{rule}`", by["acc"][2], sequence.mean_std(by["acc"]), sequence.mean_std(by["params"], 0),
                     sequence.mean_std(by["ratio"], 3), sequence.mean_std(by["width"], 2)))
    runs = [(f"`{r.name}`", f"`{r.rule}`", r.seed, " → ".join(r.order), fmt(r.m["acc"]), fmt(r.m["bwt"], sign=True),
             fmt(r.m["params"]), fmt(r.m["ratio"], 3), fmt(r.m["width"], 2)) for r in seq.compared]
    return ["### Order rules side by side", "",
            "Each rule's runs (one per seed) after their last task, mean ± std over seeds: how the order the tasks "
            "are learned in changes the final average accuracy and the network's size.", "",
            md_table(["order rule", "seeds", "average accuracy ACC", "params", "params / separate", "width"], rows),
            "", md_table(["run", "rule", "seed", "order", "ACC", "BWT", "params", "params / separate", "width"], runs),
            "", "#### Does the order matter?", "", *sequence.verdict(c, seq, stats)]


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
