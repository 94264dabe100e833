"""The sequence run (logs_perceiver_io/sequence_<cfg>.csv, written by the sequence stage) in numbers: one CPG network
learns the tasks of an order in turn, and after each step j every task learned so far is evaluated. Per run: the
accuracy matrix A[j, i] and its continual-learning metrics (utils/report/metrics.py, Avalanche's conventions), the
network's parameters and width against separate models; over the order comparison's runs: each rule's mean ± std over
seeds and whether the order matters.

The CSV is long: one row per (run, step j, evaluated task i at position <= j), with the columns of COLUMNS. A file
that lacks a column, holds a number that is not finite or out of range (collect.NUMBERS), or whose rows do not make a
complete lower-triangular matrix per run is a UserError naming the file; pandas' errors when it is torn or empty.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from utils.checkpoint import checked_columns
from utils.errors import UserError
from utils.report import metrics
from utils.report.collect import read_csv, whole_numbers

STAGE = "run_pickaback/sequence.sh"          # what regenerates the file (read_csv's "rerun ... to regenerate it")
DEFAULT = "default"                          # the normal run; the comparison's are "<rule>_seed<S>"
RULES = ("config", "similar", "random")
COLUMNS = ("run", "rule", "seed", "step", "learned", "task", "position", "accuracy", "baseline_acc", "params",
           "separate_params", "width", "owned", "free", "seconds")
TEXT = ("run", "rule", "learned", "task")
INTEGERS = ("seed", "step", "position", "params", "separate_params")
PER_STEP = ("learned", "params", "separate_params", "width", "free", "seconds")      # one value per (run, step)
SUMMARY = ("acc", "params", "ratio", "width")                  # what the comparison shows per rule


@dataclass
class Run:
    """One run of the sequence: its order and, by position (0-based index = position - 1), its matrices."""
    name: str
    rule: str
    seed: int
    order: list                  # the tasks by position
    A: np.ndarray                # A[j, i]: accuracy of the task at position i + 1 after step j + 1; NaN above
    owned: np.ndarray            # share of the prunable weights owned by task i after step j; NaN above
    baseline: list               # each task's separate baseline accuracy, by position
    steps: pd.DataFrame          # index: step 1..t; columns PER_STEP
    m: dict = field(default_factory=dict)                       # its metrics, see run_metrics

    def __post_init__(self):
        self.m = run_metrics(self)


@dataclass
class Sequence:
    path: Path
    runs: dict                   # name -> Run, "default" first, then the others by rule (RULES' order) and seed
    rules: list                  # the rules of the comparison's runs (not "default"), RULES' order then others

    @property
    def default(self):
        return self.runs.get(DEFAULT)

    @property
    def compared(self):
        return [r for name, r in self.runs.items() if name != DEFAULT]


def run_metrics(run):
    """The continual-learning metrics of a run's matrix (metrics.py) and its final compactness."""
    a, base = run.A, run.baseline
    diag, final = [float(a[i, i]) for i in range(len(a))], [float(v) for v in a[-1]]
    last = run.steps.iloc[-1]
    return {"acc": metrics.average_accuracy(a), "forgetting_per_task": metrics.forgetting_per_task(a),
            "forgetting": metrics.forgetting(a), "bwt_per_task": metrics.bwt_per_task(a),
            "bwt": metrics.backward_transfer(a), "just_learned": diag,
            "fwt_per_task": metrics.forward_transfer(diag, base), "final": final,
            "final_vs_baseline": metrics.forward_transfer(final, base),
            "fwt": float(np.mean(metrics.forward_transfer(diag, base))),
            "params": int(last.params), "separate_params": int(last.separate_params),
            "ratio": float(last.params) / float(last.separate_params) if last.separate_params else math.nan,
            "width": float(last.width), "free": float(last.free), "owned": [float(v) for v in run.owned[-1]],
            "seconds": float(run.steps.seconds.sum())}


# ---- reading -----------------------------------------------------------------------------------------------------
def read_sequence(path, groups):
    """The sequence CSV as runs; `groups`: the config's tasks (a task outside them is an error of the file)."""
    frame = read_csv(path, COLUMNS, STAGE, keep_default_na=False, dtype={c: str for c in TEXT})
    checked_columns(frame, path, {"seed": (-math.inf, math.inf)})
    if frame.empty:
        raise UserError(f"{path} holds no rows: rerun {STAGE} to regenerate it.")
    whole_numbers(frame, INTEGERS, path, STAGE)
    for col in set(COLUMNS) - set(INTEGERS) - set(TEXT):
        frame[col] = pd.to_numeric(frame[col]).astype(float)
    unknown = sorted(set(frame.task) - set(groups))
    if unknown:
        raise UserError(f"{path} names task(s) {', '.join(unknown)} that the config does not have: rerun {STAGE} "
                        f"to regenerate it.")
    runs = [build_run(name, rows, path) for name, rows in frame.groupby("run", sort=False)]
    seen = {}
    for r in runs:
        if r.name != DEFAULT and seen.setdefault((r.rule, r.seed), r.name) != r.name:
            raise UserError(f"{path}: runs {seen[(r.rule, r.seed)]!r} and {r.name!r} are both rule {r.rule!r} with "
                            f"seed {r.seed}: rerun {STAGE} to regenerate it.")
    rules = rule_order({r.rule for r in runs if r.name != DEFAULT})
    runs.sort(key=lambda r: (r.name != DEFAULT, rules.index(r.rule) if r.rule in rules else -1, r.seed, r.name))
    return Sequence(Path(path), {r.name: r for r in runs}, rules)


def rule_order(rules):
    return [r for r in RULES if r in rules] + sorted(set(rules) - set(RULES))


def single(rows, key, column, path, run):
    """{key: the one value of `column`}; UserError when a `key` has two different values in the run."""
    values = rows.groupby(key, sort=True)[column].unique()
    for k, v in values.items():
        if len(v) > 1:
            raise UserError(f"{path}: run {run!r} has {len(v)} different {column} values for {key} {k}: rerun {STAGE} "
                            f"to regenerate it.")
    return {k: v[0] for k, v in values.items()}


def build_run(name, rows, path):
    """A Run from its rows: steps 1..t, step j evaluating exactly positions 1..j and learning the task at j, each
    task at one position; else a UserError naming the file and the run."""
    def bad(why):
        return UserError(f"{path}: run {name!r} {why}: rerun {STAGE} to regenerate it.")

    for col in ("rule", "seed"):
        if rows[col].nunique() > 1:
            raise bad(f"has more than one {col}")
    order = single(rows, "position", "task", path, name)
    if len(set(order.values())) < len(order):
        raise bad("has a task at more than one position")
    t = int(rows.step.max())
    if sorted(set(rows.step)) != list(range(1, t + 1)):
        raise bad(f"has steps {sorted(set(rows.step))}, not 1..{t}")
    for j, at in rows.groupby("step"):
        if sorted(at.position) != list(range(1, j + 1)):
            raise bad(f"evaluates positions {sorted(at.position)} after step {j}, not 1..{j}")
    steps = pd.DataFrame({col: single(rows, "step", col, path, name) for col in PER_STEP})
    for j, learned in steps.learned.items():
        if learned != order[j]:
            raise bad(f"learns {learned} at step {j}, but evaluates {order[j]} at position {j}")
    baseline = single(rows, "position", "baseline_acc", path, name)
    a, owned = np.full((t, t), math.nan), np.full((t, t), math.nan)
    for j, i, acc, own in zip(rows.step, rows.position, rows.accuracy, rows.owned, strict=True):
        a[j - 1, i - 1], owned[j - 1, i - 1] = acc, own
    first = rows.iloc[0]
    return Run(name, first.rule, int(first.seed), [order[p] for p in range(1, t + 1)], a, owned,
               [float(baseline[p]) for p in range(1, t + 1)], steps)


# ---- the order comparison ----------------------------------------------------------------------------------------
def per_run(seq):
    """One row per comparison run: rule, seed and its final SUMMARY numbers."""
    return pd.DataFrame([{"run": r.name, "rule": r.rule, "seed": r.seed, **{k: r.m[k] for k in SUMMARY}}
                         for r in seq.compared], columns=["run", "rule", "seed", *SUMMARY])


def summary(seq):
    """{rule: {metric of SUMMARY: (mean, std, count) over seeds}}; std NaN for one seed."""
    stats = per_run(seq).groupby("rule")[list(SUMMARY)].agg(["mean", "std", "count"])
    return {rule: {k: (float(stats.loc[rule, (k, "mean")]), float(stats.loc[rule, (k, "std")]),
                       int(stats.loc[rule, (k, "count")])) for k in SUMMARY} for rule in seq.rules}


def mean_std(stat, digits=4):
    mean, std, _ = stat
    return f"{mean:,.{digits}f}" + ("" if math.isnan(std) else f" ± {std:,.{digits}f}")


def verdict(c, seq, stats):
    """Does the order matter? `similar` (else the first rule) against every other rule: the mean over seeds of the
    per-seed difference of the final average accuracy, against the spread (std) over seeds of either rule; too few
    seeds when either has fewer than 2. Markdown lines; the numbers go to c."""
    rules = seq.rules
    if len(rules) < 2:
        return [f"Only one order rule (`{rules[0]}`) was run: nothing to compare it with.", ""] if rules else []
    focus = "similar" if "similar" in rules else rules[0]
    others = [r for r in rules if r != focus]
    per_seed = per_run(seq).pivot(index="seed", columns="rule", values="acc")
    judged = []
    for rule in others:
        n = min(stats[focus]["acc"][2], stats[rule]["acc"][2])
        paired = (per_seed[focus] - per_seed[rule]).dropna()
        if n < 2 or len(paired) < 2:
            judged.append(f"too few seeds to tell it from `{rule}` (n={n}, {len(paired)} seed(s) in common)")
            continue
        spread = max(stats[focus]["acc"][1], stats[rule]["acc"][1])
        d = float(paired.mean())
        c.number("sequence_order", f"{focus}-{rule}", "mean_difference", d)
        c.number("sequence_order", f"{focus}-{rule}", "spread", spread)
        word = "beats" if d > spread else "is beaten by" if -d > spread else "is within the spread over seeds of"
        judged.append(f"it {word} `{rule}` ({d:+.4f} on average over {len(paired)} seed(s), spread ±{spread:.4f})")
    against = " and ".join(f"{mean_std(stats[r]['acc'])} for `{r}`" for r in others)
    return [f"- Order `{focus}` reaches {mean_std(stats[focus]['acc'])} average accuracy after the last task against "
            f"{against}: {'; '.join(judged)}.", ""]
