"""The selection-rule comparison (logs_perceiver_io/compare_selection_<cfg>.csv, written by compare_selection) in
numbers and verdicts: each rule's mean ± std over seeds per target, how often `similar` picked the oracle's
backbone, and whether picking pays (`similar` against every other rule, beyond the spread over seeds).
"""
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from utils.report.collect import read_csv

RULES = ("similar", "original", "random", "scratch", "oracle")
COLUMNS = ("rule", "seed", "target", "backbone", "target_acc", "baseline_acc")     # best_backbones: optional


@dataclass
class Comparison:
    path: Path
    frame: pd.DataFrame          # one row per (rule, seed, target), with fwt = target_acc − baseline_acc
    rules: list                  # RULES in their order, then any others
    targets: list                # the config's groups in their order, then any others


def read_comparison(path, groups):
    """The comparison CSV; UserError when it lacks a column, pandas' errors when it is torn or empty."""
    frame = read_csv(path, COLUMNS, "compare_selection", keep_default_na=False)
    for col in ("target_acc", "baseline_acc"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["fwt"] = frame.target_acc - frame.baseline_acc
    rules = [r for r in RULES if r in set(frame.rule)] + sorted(set(frame.rule) - set(RULES))
    targets = [t for t in groups if t in set(frame.target)] + sorted(set(frame.target) - set(groups))
    return Comparison(Path(path), frame, rules, targets)


def summary(cmp, column):
    """{target, then "average": {rule: (mean, std, count) over seeds, or None}}; "average" is the mean over targets
    within a seed, then over seeds."""
    frame = cmp.frame
    per_target = frame.groupby(["target", "rule"])[column].agg(["mean", "std", "count"])
    avg = frame.groupby(["rule", "seed"])[column].mean().groupby("rule").agg(["mean", "std", "count"])
    table = {}
    for rule in cmp.rules:
        for t in cmp.targets:
            table.setdefault(t, {})[rule] = per_target.loc[(t, rule)] if (t, rule) in per_target.index else None
        table.setdefault("average", {})[rule] = avg.loc[rule] if rule in avg.index else None
    return table


def accuracy_means(cmp):
    """summary(cmp, "target_acc") as a frame (index: targets and "average"; columns: (rule, mean|std)), to plot."""
    acc = summary(cmp, "target_acc")
    return pd.DataFrame({(r, k): [float(acc[t][r][k]) if acc[t][r] is not None else np.nan for t in acc]
                         for r in cmp.rules for k in ("mean", "std")}, index=list(acc))


def oracle_agreement(cmp):
    """How often `similar` picked the oracle's backbone: ({target: (hits, seeds)}, (hits, seeds) over all)."""
    frame = cmp.frame
    similar = frame[frame.rule == "similar"].set_index(["target", "seed"]).backbone
    oracle_rows = frame[frame.rule == "oracle"].set_index(["target", "seed"])
    # the oracle's best may be a tie: similar agrees when its pick is one of the equally good candidates
    oracle = (oracle_rows.best_backbones.map(lambda v: set(str(v).split(";"))) if "best_backbones" in oracle_rows
              else oracle_rows.backbone.map(lambda v: {v}))
    both = similar.index.intersection(oracle.index)
    per_target = {}
    for t in cmp.targets:
        keys = [k for k in both if k[0] == t]
        per_target[t] = (sum(similar[k] in oracle[k] for k in keys), len(keys))
    return per_target, (sum(similar[k] in oracle[k] for k in both), len(both))


def verdict(c, cmp):
    """Does picking pay? `similar` against every other rule: the mean over seeds of the per-seed difference of the
    targets' average accuracy, against the spread (std) over seeds of either rule. Markdown lines; the numbers go
    to c."""
    frame = cmp.frame
    per_seed = frame.groupby(["rule", "seed"]).target_acc.mean().unstack("rule")
    if "similar" not in per_seed:
        return []
    lines = ["### Does picking pay?", ""]
    for rule in [r for r in cmp.rules if r not in ("similar", "oracle")]:
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
