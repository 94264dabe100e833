"""utils/report/ (tools/report.py) and utils/report/metrics.py: the metrics against Avalanche's definitions, a
report of a run with stages missing or broken, a bug of the report failing loudly instead of reading as "stage
missing", and forgetting measured as exactly 0 on a real (tiny) trained chain."""
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_main
from tools import report
from utils.config import load_dataset_config
from utils.layout import Layout
from utils.pipeline import STAGES
from utils.report import collect, figures, markdown, metrics, verdicts, write_report

NAN = math.nan


# ---- (1) the metrics ------------------------------------------------------------------------------------------
def avalanche_reference(acc):
    """Avalanche's Forgetting/BWT, replayed over the evaluations of a run: after training experience j every
    experience i <= j is evaluated; the first evaluation of i after training it is its `initial`, the latest its
    `last`; forgetting of i = initial - last, BWT = last - initial, stream values the mean over i < the current
    experience; stream accuracy after the last experience is the mean of its evaluations (equal test sizes)."""
    acc = np.asarray(acc, dtype=float)
    initial, last = {}, {}
    for j in range(len(acc)):
        for i in range(j + 1):
            initial.setdefault(i, acc[j, i])
            last[i] = acc[j, i]
    current = len(acc) - 1
    f = [initial[i] - last[i] for i in sorted(initial) if i != current]
    return {"acc": float(np.mean([last[i] for i in last])), "forgetting": f,
            "stream_forgetting": float(np.mean(f)) if f else NAN,
            "bwt": [-v for v in f], "stream_bwt": float(-np.mean(f)) if f else NAN}


KNOWN = [  # (matrix, average accuracy, forgetting per task, BWT)
    ([[0.9, NAN], [0.7, 0.8]], 0.75, [0.2], -0.2),
    ([[0.5, NAN], [0.6, 0.9]], 0.75, [-0.1], 0.1),                      # positive backward transfer
    ([[1.0, NAN], [1.0, 0.3667]], 0.68335, [0.0], 0.0),                 # CPG: nothing forgotten
    ([[0.9, NAN, NAN], [0.8, 0.85, NAN], [0.6, 0.7, 0.95]], 0.75, [0.3, 0.15], -0.225),
]


@pytest.mark.parametrize("acc,average,forgotten,bwt", KNOWN)
def test_metrics_on_known_matrices(acc, average, forgotten, bwt):
    assert metrics.average_accuracy(acc) == pytest.approx(average)
    assert metrics.forgetting_per_task(acc) == pytest.approx(forgotten)
    assert metrics.forgetting(acc) == pytest.approx(np.mean(forgotten))
    assert metrics.backward_transfer(acc) == pytest.approx(bwt)
    assert metrics.bwt_per_task(acc) == pytest.approx([-f for f in forgotten])
    ref = avalanche_reference(acc)
    assert metrics.average_accuracy(acc) == pytest.approx(ref["acc"])
    assert metrics.forgetting_per_task(acc) == pytest.approx(ref["forgetting"])
    assert metrics.backward_transfer(acc) == pytest.approx(ref["stream_bwt"])


def test_metrics_match_avalanche_on_random_matrices():
    rng = np.random.default_rng(0)
    for n in range(1, 6):
        acc = np.tril(rng.uniform(size=(n, n))) + np.triu(np.full((n, n), NAN), 1)
        ref = avalanche_reference(acc)
        assert metrics.average_accuracy(acc) == pytest.approx(ref["acc"])
        assert metrics.forgetting_per_task(acc) == pytest.approx(ref["forgetting"])
        assert metrics.bwt_per_task(acc) == pytest.approx(ref["bwt"])
        if n == 1:
            assert math.isnan(metrics.forgetting(acc)) and math.isnan(metrics.backward_transfer(acc))
        else:
            assert metrics.forgetting(acc) == pytest.approx(ref["stream_forgetting"])
            assert metrics.backward_transfer(acc) == pytest.approx(ref["stream_bwt"])


def test_equal_accuracies_give_exactly_zero_and_forward_transfer():
    acc = metrics.chain_matrix(0.8, 0.8, 0.5)
    assert metrics.forgetting_per_task(acc) == [0.0] and metrics.bwt_per_task(acc) == [0.0]
    assert math.copysign(1, metrics.bwt_per_task(acc)[0]) == 1.0             # +0.0, not -0.0
    assert metrics.forward_transfer(0.3667, 0.2667) == pytest.approx(0.1)
    assert metrics.forward_transfer([0.5, 0.9], [0.6, 0.9]) == pytest.approx([-0.1, 0.0])
    with pytest.raises(ValueError):
        metrics.average_accuracy([[0.1, 0.2]])


# ---- (2) missing stages ---------------------------------------------------------------------------------------
def read(path):
    return path.read_text()


def test_report_of_an_empty_work_dir_lists_every_stage_missing(tmp_path, demo_root, capsys):
    code = run_main(report.main, ["demo", "--work_dir", str(tmp_path), "--data_root", str(demo_root)])
    assert code == 0
    layout = Layout(tmp_path, "demo")
    path = layout.logs / "report_demo.md"
    assert capsys.readouterr().out.strip().endswith(str(path))
    text = read(path)
    for stage in STAGES:
        assert f"| {stage} | **missing** for " in text
    assert "## Missing" in text and "No chain measured: missing" in text
    assert (layout.logs / "report_demo.csv").is_file()


def test_report_with_only_baselines(tiny_run, demo_root, tmp_path):
    full, only = Layout(tiny_run, "demo"), Layout(tmp_path, "demo")
    only.logs.mkdir(parents=True)
    shutil.copy(full.baseline_acc_file, only.baseline_acc_file)
    for group in load_dataset_config("demo", demo_root, check_folders=False).groups:
        shutil.copytree(full.baseline(group).root, only.baseline(group).root)
    path, c = write_report("demo", tmp_path, demo_root)
    text = read(path)
    assert "| baseline | done |" in text
    for stage in STAGES[1:]:
        assert f"| {stage} | **missing** for " in text
    assert "| 1 group1 (image) | " in text and len(c.chains) == 0
    parameters = pd.read_csv(only.report(".csv"))
    separate = parameters[(parameters.section == "parameters") & (parameters.item == "one model per task")]
    assert int(float(separate.value.iloc[0])) > 0


# ---- (3) measured forgetting on a real chain --------------------------------------------------------------------
def test_forgetting_is_measured_zero_on_a_real_chain(tiny_run, demo_root, tmp_path):
    chain_work = shutil.copytree(tiny_run, tmp_path / "work")           # a real backbone -> target chain per target
    path, c = write_report("demo", chain_work, demo_root)
    layout = Layout(chain_work, "demo")
    text = read(path)
    assert "**missing**" not in text and "## Missing" not in text
    assert len(c.chains) == len(c.cfg.groups)
    for target, chain in c.chains.items():
        a = chain["A"]
        assert not math.isnan(a[0, 0]) and not math.isnan(a[1, 0]) and not math.isnan(a[1, 1])
        assert chain["forgetting"] == 0.0 and chain["bwt"] == 0.0, (target, a)
        assert chain["fwt"] == pytest.approx(c.targets[target]["target_acc"] - c.targets[target]["baseline_acc"])
        assert a[1, 1] == pytest.approx(c.targets[target]["target_acc"], abs=1e-4)
    numbers = pd.read_csv(layout.report(".csv"))
    forgetting = numbers[(numbers.section == "metrics") & (numbers.metric == "forgetting")]
    assert len(forgetting) == len(c.cfg.groups) + 1 and (forgetting.value.astype(float) == 0.0).all()
    for name in ("similarity", "sparsity", "accuracy"):
        png = layout.report(f"_{name}.png")
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png.name})" in text


# ---- selection rules side by side --------------------------------------------------------------------------------
def write_comparison(layout):
    """A compare_selection CSV of two seeds and two targets, every rule (similar = oracle for 3 of the 4)."""
    rows = []
    for seed in (1, 2):
        for target, baseline, picks in (("group1", 0.5, {"similar": "group2", "oracle": "group2",
                                                         "random": "group5", "original": "group4"}),
                                        ("group3", 0.3, {"similar": "group2", "oracle": "group4" if seed == 1 else
                                                         "group2", "random": "group7", "original": "group8"})):
            for n, (rule, backbone) in enumerate([*picks.items(), ("scratch", "")]):
                rows.append({"rule": rule, "seed": seed, "target": target, "backbone": backbone,
                             "target_acc": round(baseline + 0.08 * n + 0.01 * seed, 4), "baseline_acc": baseline,
                             "width": 1.0})
    layout.comparison_csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(layout.comparison_csv, index=False)


def test_selection_rules_side_by_side(tmp_path, demo_root):
    layout = Layout(tmp_path, "demo")
    write_comparison(layout)
    path, _ = write_report("demo", tmp_path, demo_root)
    text = read(path)
    assert "## Selection rules side by side" in text
    # group1 under `similar` (n = 0): 0.51, 0.52 -> 0.515 ± 0.0071; forward transfer +0.015
    assert "| group1 | 0.5150 ± 0.0071 (n=2) |" in text
    assert "| group1 | +0.0150 ± 0.0071 (n=2) |" in text
    assert "| group3 | 1/2 |" in text and "| group1 | 2/2 |" in text and "| **all** | 3/4 (75%) |" in text
    numbers = pd.read_csv(layout.report(".csv"))
    agree = numbers[(numbers.section == "selection") & (numbers.metric == "similar_is_oracle")]
    assert float(agree[agree["item"] == "all"].value.iloc[0]) == 0.75
    avg = numbers[(numbers.section == "selection") & (numbers["item"] == "average|scratch")]
    assert float(avg[avg.metric == "target_acc_mean"].value.iloc[0]) == pytest.approx(((0.5 + 0.32 + 0.015) + (
        0.3 + 0.32 + 0.015)) / 2)
    assert layout.report("_selection.png").is_file()


# ---- broken files are listed, bugs propagate ---------------------------------------------------------------------
def test_the_report_command_passes_its_flags_and_prints_the_reports_path(tiny_run, demo_root, tmp_path, capsys):
    work = shutil.copytree(tiny_run, tmp_path / "work")
    code = run_main(report.main, ["demo", "--work_dir", str(work), "--data_root", str(demo_root), "--no_eval"])
    path = Layout(work, "demo").report(".md")
    assert code == 0 and capsys.readouterr().out.strip() == str(path)
    groups = ", ".join(load_dataset_config("demo", demo_root, check_folders=False).groups)
    assert f"- metrics ({groups}): not measured (--no_eval)" in read(path)         # --no_eval reached the report


def test_broken_stage_files_are_listed_and_the_rest_written(tmp_path, demo_root):
    layout = Layout(tmp_path, "demo")
    layout.result_csv.write_text("target_id,task_id\n1,2\n3,4,5,6\n")       # torn CSV: ParserError
    layout.table_csv.write_text("")                                          # empty CSV: EmptyDataError
    layout.comparison_csv.parent.mkdir(parents=True)
    layout.comparison_csv.write_text("rule,seed\nsimilar,1\n")               # lacks columns: UserError
    path, _ = write_report("demo", tmp_path, demo_root, evaluate=False)
    text = read(path)
    assert "- find_backbone (all): EmptyDataError: " in text                 # the table is read first
    assert f"- compare_selection (all): section not written (UserError: {layout.comparison_csv} lacks the " \
           f"column(s) target, backbone, target_acc, baseline_acc: rerun compare_selection" in text
    assert "| find_backbone | **missing** for " in text and "## Backbones: accuracy against sparsity" in text
    layout.table_csv.unlink()
    path, _ = write_report("demo", tmp_path, demo_root, evaluate=False)
    assert "- find_backbone (all): ParserError: Error tokenizing data." in read(path)


def test_an_unreadable_record_is_listed_with_its_reason(tmp_path, demo_root):
    layout = Layout(tmp_path, "demo")
    layout.logs.mkdir(parents=True)
    layout.baseline_acc_file.write_text('{"group1": 0.5}')
    record = layout.baseline("group1").manifest
    record.parent.mkdir(parents=True)
    record.write_text("{not json")
    path, _ = write_report("demo", tmp_path, demo_root, evaluate=False)
    assert f"- baseline (group1): {record} is not valid JSON: fix or delete the file.".replace(
        "/group1/", "/<task>/") in read(path)


def raise_(error):
    def broken(*args, **kwargs):
        raise error
    return broken


@pytest.mark.parametrize("module,name,error", [
    (collect, "collect_baselines", KeyError("acc")),
    (collect, "collect_targets", TypeError("a bug")),
    (collect, "collect_search", AttributeError("a bug")),
    (verdicts, "read_comparison", ValueError("a bug")),        # ValueError: not a CSV error of pandas
    (figures, "plot_selection", RuntimeError("a bug")),
    (markdown, "metrics_section", KeyError("fwt")),
])
def test_a_bug_in_a_step_propagates_instead_of_reading_as_missing(tmp_path, demo_root, monkeypatch, module, name,
                                                                   error):
    write_comparison(Layout(tmp_path, "demo"))                  # so that the selection section is written
    monkeypatch.setattr(module, name, raise_(error))
    with pytest.raises(type(error), match=str(error.args[0])):
        write_report("demo", tmp_path, demo_root, evaluate=False)
