"""write_report: the report of a dataset config's run, from collecting what the stages wrote to the files.

Collects (utils/report/collect.py), measures the chains (evaluate.py), draws the figures (figures.py) and writes the
Markdown (markdown.py) and the CSV of every number, under logs_perceiver_io/ of the working folder:
report_<cfg>.md, report_<cfg>_<figure>.png, report_<cfg>.csv. A stage whose files are absent or broken in a way a
user can cause (collect.EXPECTED) is listed under "Missing" and the rest is still written; any other error is a bug
and propagates.
"""
import math
import os
from pathlib import Path

import pandas as pd

from utils.checkpoint import atomic_write
from utils.config import REPO_ROOT, load_dataset_config
from utils.layout import Layout
from utils.report import clients, collect, figures, markdown, sequence, verdicts
from utils.report.collect import EXPECTED, Collected
from utils.report.evaluate import Evaluator, measure_chains

FIGURES = ("similarity", "sparsity", "accuracy", "selection", "sequence_matrix", "sequence", "clients_picks")


def collect_all(c):
    """Every stage's files into c; a stage's files broken as a whole (e.g. a torn CSV) are listed for "all"."""
    steps = [("baseline", collect.collect_baselines), ("wo_backbone", collect.collect_backbones),
             ("find_backbone", collect.collect_search), ("w_backbone_MM", collect.collect_targets)]
    for stage, step in steps:
        try:
            step(c)
        except EXPECTED as e:
            c.miss(stage, "all", f"{type(e).__name__}: {e}")


def search_part(c, out):
    sim = collect.similarity_matrix(c) if c.table is not None else None
    figure = figures.plot_similarity(c, sim, out["similarity"]).name if sim is not None else None
    return markdown.search_section(c, sim, figure)


def sparsity_part(c, out):
    figure = figures.plot_sparsity(c, out["sparsity"]).name if c.backbones else None
    return markdown.sparsity_section(c, figure)


def metrics_part(c, out):
    return markdown.metrics_section(c)


def selection_part(c, out):
    """The selection rules side by side, when compare_selection has written its CSV."""
    if not c.layout.comparison_csv.is_file():
        return []
    cmp = verdicts.read_comparison(c.layout.comparison_csv, c.cfg.groups)
    figure = figures.plot_selection(c, verdicts.accuracy_means(cmp), cmp.rules, out["selection"])
    return markdown.selection_section(c, cmp, figure.name)


def sequence_part(c, out):
    """The sequence run, when the sequence stage has written its CSV; its figures for the default run."""
    path = c.layout.sequence_csv
    if not path.is_file():
        return []
    seq = sequence.read_sequence(path, c.cfg.groups)
    run = seq.default
    matrix = figures.plot_sequence_matrix(c, run, out["sequence_matrix"]).name if run is not None else None
    figure = figures.plot_sequence(c, run, out["sequence"]).name if run is not None else None
    return markdown.sequence_section(c, seq, matrix, figure)


def clients_part(c, out):
    """The clients run (Pick-a-back's devices), when run_pickaback/clients.sh has written its CSV; the picks figure
    for the default run."""
    path = c.layout.clients_csv
    if not path.is_file():
        return []
    run = clients.read_clients(path, c.layout.clients_messages_csv, c.cfg.groups)
    figure = clients.plot_picks(c, run, out["clients_picks"]).name if run.default is not None else None
    return clients.section(c, run, figure)


def build(c, evaluate):
    """The report's Markdown text; c gathers its numbers and what is missing."""
    out = {name: c.layout.report(f"_{name}.png") for name in FIGURES}
    collect_all(c)
    measure_chains(c, evaluate)
    lines = markdown.head(c)
    if any(r.get("target_acc") is not None for r in c.targets.values()):
        lines += markdown.accuracy_figure(figures.plot_accuracy(c, out["accuracy"]).name)
    for stage, part in (("find_backbone", search_part), ("wo_backbone", sparsity_part), ("metrics", metrics_part),
                        ("compare_selection", selection_part), ("sequence", sequence_part),
                        ("clients", clients_part)):
        try:
            lines += part(c, out)
        except EXPECTED as e:              # e.g. a torn comparison, sequence or clients CSV: listed
            c.miss(stage, "all", f"section not written ({type(e).__name__}: {e})")
    return "\n".join(lines + markdown.missing_section(c))


def csv_text(numbers):
    frame = pd.DataFrame(numbers, columns=["section", "item", "metric", "value"])
    # absent numbers as empty cells; floats rounded so that the CSV does not show binary noise
    frame["value"] = frame["value"].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                        else round(float(v), 12) if isinstance(v, float) else v)
    return frame.to_csv(index=False, lineterminator="\n")


def write_report(config, work_dir=None, data_root=None, device="cpu", batch_size=100, evaluate=True,
                 arch="perceiver_io"):
    """Write report_<cfg>.md, its figures and report_<cfg>.csv; returns (the Markdown file's path, the Collected)."""
    cfg = load_dataset_config(config, data_root, check_folders=False)
    layout = Layout(Path(work_dir or os.environ.get("MMPAB_WORK_DIR") or REPO_ROOT), cfg.name, arch)
    c = Collected(cfg, layout)
    text = build(c, Evaluator(cfg, device, batch_size) if evaluate else None)
    numbers = csv_text(c.numbers)
    atomic_write(layout.report(".csv"), lambda f: f.write(numbers.encode()))
    path = layout.report()
    atomic_write(path, lambda f: f.write(text.encode()))
    return path, c
