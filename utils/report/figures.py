"""The report's figures, as PNG files beside report_<cfg>.md: the backbone search's similarity matrix, each CPG
backbone's accuracy against sparsity, the targets' accuracy against their baselines, the selection rules side
by side, and the sequence run's accuracy matrix and compactness. Each function draws from what
utils/report/collect.py (or sequence.py) gathered and returns the file's path; only the writer
(utils/report/write.py) imports this module, so nothing else pays for matplotlib.
"""
import io
import math

import matplotlib

matplotlib.use("Agg")                      # files only: no display is needed (or available on a cluster node)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from utils.checkpoint import atomic_write  # noqa: E402
from utils.report.collect import MISSING  # noqa: E402

MODALITY_COLOURS = {"image": "#1f77b4", "text": "#d95f02"}


def colour_by_modality(cfg, ticks, groups):
    """Colour each tick label by the modality of its task."""
    for tick, g in zip(ticks, groups, strict=False):
        tick.set_color(MODALITY_COLOURS.get(cfg.modality(g), "black"))


def save_figure(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def label(cfg, group):
    return f"{cfg.task_id(group)} {group} ({cfg.modality(group)})"


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
    colour_by_modality(c.cfg, ax.get_xticklabels(), sim.columns)
    colour_by_modality(c.cfg, ax.get_yticklabels(), sim.index)
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
    for ax, group in zip(axes.flat, groups, strict=False):
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
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=False):
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
    for tick, r in zip(ax.get_xticklabels(), rows, strict=False):
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


def plot_sequence_matrix(c, run, path):
    """The accuracy matrix A[j, i] of a sequence run (utils/report/sequence.Run) as a heat map."""
    t = len(run.order)
    fig, ax = plt.subplots(figsize=(1.1 * t + 3.5, 0.8 * t + 2.2))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(run.A), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    if t <= 20:
        for j in range(t):
            for i in range(t):
                v = run.A[j, i]
                ax.text(i, j, "—" if math.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=8,
                        color="#666666" if math.isnan(v) else "black" if v > 0.6 else "white")
    ax.set_xticks(range(t), [f"{i + 1}: {g} ({c.cfg.modality(g)})" for i, g in enumerate(run.order)],
                  rotation=35, ha="right")
    ax.set_yticks(range(t), [f"step {j + 1}: {g}" for j, g in enumerate(run.order)])
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        colour_by_modality(c.cfg, ticks, run.order)
    ax.set_xlabel("task i evaluated (position in the order)")
    ax.set_ylabel("after learning step j's task")
    ax.set_title(f"Sequence ({c.cfg.name}, run {run.name}, order {run.rule}): accuracy A[j, i]\n"
                 "grey = not learned yet", fontsize=10)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("test accuracy")
    return save_figure(fig, path)


def plot_sequence(c, run, path):
    """A sequence run in three panels: (a) each task's accuracy in the sequence (right after learning it, after the
    last task) against its baseline, (b) parameters of the one network against separate models over the number of
    tasks, (c) the network's width over the sequence."""
    t = len(run.order)
    steps = np.arange(1, t + 1)
    fig, (a, b, w) = plt.subplots(1, 3, figsize=(max(12, 1.2 * t + 9), 4.2),
                                  gridspec_kw={"width_ratios": [max(t, 2), 2, 2]})
    a.bar(steps - 0.27, run.baseline, 0.27, color="#bbbbbb", label="baseline (own model)")
    a.bar(steps, run.m["just_learned"], 0.27, color="#8da0cb", label="right after learning it A[i, i]")
    a.bar(steps + 0.27, run.m["final"], 0.27, color="#3b528b", label="after the last task A[t, i]")
    a.set_xticks(steps, [f"{i}: {g}" for i, g in zip(steps, run.order, strict=True)], fontsize=8, rotation=20)
    colour_by_modality(c.cfg, a.get_xticklabels(), run.order)
    a.set_ylim(0, 1.15)
    a.set_ylabel("test accuracy")
    a.set_xlabel("task (position in the order; label colour: modality)")
    a.set_title("(a) accuracy in the sequence vs baseline", fontsize=10)
    a.legend(fontsize=7, loc="upper left")
    a.grid(axis="y", alpha=0.3)
    b.plot(steps, run.steps.params, "o-", label="one network (CPG)")
    b.plot(steps, run.steps.separate_params, "s--", color="grey", label="separate models")
    b.set_xticks(steps)
    b.set_ylim(bottom=0)
    b.set_xlabel("number of tasks learned")
    b.set_ylabel("parameters")
    b.set_title("(b) parameters", fontsize=10)
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    w.plot(steps, run.steps.width, "o-", color="#1b9e77")
    w.set_xticks(steps)
    w.set_ylim(bottom=0)
    w.set_xlabel("step (task learned)")
    w.set_ylabel("width multiplier")
    w.set_title("(c) network width", fontsize=10)
    w.grid(alpha=0.3)
    fig.suptitle(f"Sequence ({c.cfg.name}, run {run.name}, order {run.rule})")
    fig.tight_layout()
    return save_figure(fig, path)
