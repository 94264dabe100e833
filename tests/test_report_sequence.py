"""The report's sequence section (utils/report/sequence.py): a hand-made sequence CSV of 3 tasks, one default run
and an order comparison of 2 rules x 2 seeds, against hand-computed matrix, metrics, compactness and means; a
broken CSV as an entry under "Missing", not a crash; no CSV, no section."""
import math

import numpy as np
import pandas as pd
import pytest

from utils.layout import Layout
from utils.report import sequence, write_report
from tests.conftest import report_numbers, report_value

NAN = math.nan
ORDER = ["group1", "group5", "group3"]                       # image, text, image
A = [[0.9, NAN, NAN], [0.8, 0.7, NAN], [0.6, 0.65, 0.95]]
BASELINE = {"group1": 0.85, "group5": 0.75, "group3": 0.9}
PARAMS, SEPARATE = [1000, 1500, 1800], [1000, 2000, 3000]
WIDTH, FREE, SECONDS = [1.0, 1.5, 2.0], [0.5, 0.3, 0.1], [10.0, 12.0, 14.0]
OWNED = [[0.5, NAN, NAN], [0.45, 0.25, NAN], [0.4, 0.3, 0.2]]
# the comparison: (rule, seed) -> (final accuracy of every task, final params, final width)
COMPARED = {("similar", 1): (0.8, 1600, 1.5), ("similar", 2): (0.9, 1700, 2.0),
            ("random", 1): (0.6, 2000, 2.5), ("random", 2): (0.7, 2200, 3.0)}


def rows_of(run, rule, seed, order, acc, params, width, owned=OWNED):
    rows = []
    for j in range(len(order)):
        for i in range(j + 1):
            rows.append({"run": run, "rule": rule, "seed": seed, "step": j + 1, "learned": order[j],
                         "task": order[i], "position": i + 1, "accuracy": acc[j][i], "baseline_acc": BASELINE[order[i]],
                         "params": params[j], "separate_params": SEPARATE[j], "width": width[j], "owned": owned[j][i],
                         "free": FREE[j], "seconds": SECONDS[j]})
    return rows


def write_sequence(layout, compared=COMPARED):
    rows = rows_of("default", "config", 1, ORDER, A, PARAMS, WIDTH)
    for (rule, seed), (final, params, width) in compared.items():
        order = ORDER[::-1] if rule == "similar" else [ORDER[1], ORDER[0], ORDER[2]]
        acc = [[0.9, NAN, NAN], [0.85, 0.8, NAN], [final] * 3]
        rows += rows_of(f"{rule}_seed{seed}", rule, seed, order, acc, [1000, 1300, params], [1.0, 1.2, width])
    path = layout.sequence_csv
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def value(frame, item, metric):
    return float(report_value(frame, item, metric))


@pytest.fixture(scope="module")
def report_of_sequence(tmp_path_factory, demo_root):
    """(layout, report text) of a work folder holding only the sequence CSV (tests read it, never change it)."""
    work = tmp_path_factory.mktemp("sequence_report")
    layout = Layout(work, "demo")
    write_sequence(layout)
    path, _ = write_report("demo", work, demo_root, evaluate=False)
    return layout, path.read_text()


def test_sequence_section_matrix_metrics_and_compactness(report_of_sequence):
    layout, text = report_of_sequence
    assert "## Sequence: one network learns the tasks in turn" in text
    assert "### Run `default`: order `config` (seed 1): group1 → group5 → group3" in text
    # the matrix, in the Markdown and in the CSV
    assert "| after step j (learned) | 1 group1 | 2 group5 | 3 group3 |" in text
    assert "| 1 group1 | 0.9000 | — | — |" in text
    assert "| 2 group5 | 0.8000 | 0.7000 | — |" in text
    assert "| 3 group3 | 0.6000 | 0.6500 | 0.9500 |" in text
    matrix = report_numbers(layout, "sequence_matrix")
    assert set(matrix["item"]) == {"default"} and len(matrix) == 6
    got = np.full((3, 3), NAN)
    for metric, v in zip(matrix.metric, matrix.value, strict=True):
        j, i = (int(k) for k in metric[2:-1].split(","))
        got[j - 1, i - 1] = float(v)
    np.testing.assert_array_equal(got, np.array(A))
    # the metrics, by hand: ACC = (0.6 + 0.65 + 0.95) / 3; f = (0.9 - 0.6, 0.7 - 0.65); FWT_i = A[i,i] - baseline
    runs = report_numbers(layout, "sequence_runs")
    assert value(runs, "default", "acc") == pytest.approx(2.2 / 3)
    assert value(runs, "default", "forgetting") == pytest.approx(0.175)
    assert value(runs, "default", "bwt") == pytest.approx(-0.175)
    assert value(runs, "default", "fwt") == pytest.approx((0.05 - 0.05 + 0.05) / 3)
    assert "ACC = 0.7333" in text and "F = 0.1750, backward transfer BWT = -0.1750" in text
    assert "FWT = +0.0167" in text
    tasks = report_numbers(layout, "sequence_tasks")
    assert value(tasks, "default|group1", "forgetting") == pytest.approx(0.3)
    assert value(tasks, "default|group5", "bwt") == pytest.approx(-0.05)
    assert value(tasks, "default|group5", "fwt") == pytest.approx(-0.05)
    assert value(tasks, "default|group3", "final_vs_baseline") == pytest.approx(0.05)
    assert value(tasks, "default|group1", "final_vs_baseline") == pytest.approx(-0.25)
    assert value(tasks, "default|group3", "owned") == pytest.approx(0.2)
    assert tasks[(tasks["item"] == "default|group3") & (tasks.metric == "forgetting")].empty   # the last task
    assert "| 1 | group1 | 0.8500 | 0.9000 | +0.0500 | 0.6000 | -0.2500 | 0.3000 | -0.3000 | 0.400 |" in text
    assert "| 3 | group3 | 0.9000 | 0.9500 | +0.0500 | 0.9500 | +0.0500 | — | — | 0.200 |" in text
    # compactness: 1800 parameters against 1000 + 2000 (separate models of tasks 1..2 after step 2), ...
    steps = report_numbers(layout, "sequence_steps")
    assert [value(steps, f"default|{j}", "ratio") for j in (1, 2, 3)] == pytest.approx([1.0, 0.75, 0.6])
    assert value(runs, "default", "ratio") == pytest.approx(0.6)
    assert value(runs, "default", "free") == pytest.approx(0.1) and value(runs, "default", "seconds") == 36.0
    assert "| 3 | group3 | 1,800 | 3,000 | 0.600 | 2.00 | 0.100 | 14.0 |" in text
    for name in ("sequence_matrix", "sequence"):
        png = layout.report(f"_{name}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png.name})" in text


def test_sequence_order_comparison(report_of_sequence):
    layout, text = report_of_sequence
    assert "### Order rules side by side" in text
    order = report_numbers(layout, "sequence_order")
    std = float(np.std([0.8, 0.9], ddof=1))
    assert value(order, "similar", "acc_mean") == pytest.approx(0.85)
    assert value(order, "similar", "acc_std") == pytest.approx(std)
    assert value(order, "random", "acc_mean") == pytest.approx(0.65)
    assert value(order, "random", "acc_std") == pytest.approx(std)
    assert value(order, "similar", "params_mean") == pytest.approx(1650)
    assert value(order, "random", "ratio_mean") == pytest.approx(2100 / 3000)
    assert value(order, "random", "width_std") == pytest.approx(float(np.std([2.5, 3.0], ddof=1)))
    assert value(order, "similar", "n") == 2
    assert value(order, "similar-random", "mean_difference") == pytest.approx(0.2)
    assert "| `similar` | 2 | 0.8500 ± 0.0707 | 1,650 ± 71 | 0.550 ± 0.024 | 1.75 ± 0.35 |" in text
    assert ("- Order `similar` reaches 0.8500 ± 0.0707 average accuracy after the last task against 0.6500 ± 0.0707 "
            "for `random`: it beats `random` (+0.2000 on average over 2 seed(s), spread ±0.0707).") in text
    assert "| `random_seed1` | `random` | 1 | group5 → group1 → group3 | 0.6000 |" in text
    # the default run stays out of the comparison
    assert "`config`" not in text.split("### Order rules side by side")[1]


def test_one_seed_is_too_few(tmp_path, demo_root):
    layout = Layout(tmp_path, "demo")
    write_sequence(layout, {k: v for k, v in COMPARED.items() if k != ("random", 2)})
    path, _ = write_report("demo", tmp_path, demo_root, evaluate=False)
    text = path.read_text()
    assert "0.8500 ± 0.0707 average accuracy after the last task against 0.6000 for `random`: too few seeds" in text
    assert value(report_numbers(layout, "sequence_order"), "random", "n") == 1


def test_no_sequence_csv_no_section(tmp_path, demo_root):
    path, c = write_report("demo", tmp_path, demo_root, evaluate=False)
    assert "## Sequence" not in path.read_text() and not any(s == "sequence" for s, _, _ in c.missing)


@pytest.mark.parametrize("edit,words", [
    (lambda f: f.assign(accuracy=f.accuracy.where(f.index != 3, 1.5)), "accuracy on line 5 of"),
    (lambda f: f.assign(accuracy=f.accuracy.where(f.index != 0, NAN)), "accuracy on line 2 of"),
    (lambda f: f.drop(columns=["owned", "free"]), "lacks the column(s) owned, free: rerun run_pickaback/sequence.sh"),
    (lambda f: f.drop(index=4), "run 'default' evaluates positions [1, 3] after step 3, not 1..3"),
    (lambda f: f.assign(task=f.task.where(f.index != 0, "group9")), "names task(s) group9 that the config"),
])
def test_a_broken_sequence_csv_is_listed_not_a_crash(tmp_path, demo_root, edit, words):
    layout = Layout(tmp_path, "demo")
    path = write_sequence(layout)
    edit(pd.read_csv(path)).to_csv(path, index=False)
    report, c = write_report("demo", tmp_path, demo_root, evaluate=False)
    text = report.read_text()
    assert "## Sequence" not in text and "## Missing" in text
    line = next(line for line in text.splitlines() if line.startswith("- sequence (all): section not written"))
    assert "UserError" in line and str(path) in line and words in line, line
    assert not layout.report("_sequence.png").exists()


def test_a_torn_sequence_csv_is_listed(tmp_path, demo_root):
    layout = Layout(tmp_path, "demo")
    path = write_sequence(layout)
    path.write_text(path.read_text() + "default,config,1\n1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17\n")
    report, _ = write_report("demo", tmp_path, demo_root, evaluate=False)
    assert "- sequence (all): section not written (ParserError: " in report.read_text()


@pytest.mark.parametrize("name", ["read_sequence", "verdict"])
def test_a_bug_in_the_sequence_section_propagates(tmp_path, demo_root, monkeypatch, name):
    write_sequence(Layout(tmp_path, "demo"))

    def broken(*args, **kwargs):
        raise ValueError("a bug")
    monkeypatch.setattr(sequence, name, broken)
    with pytest.raises(ValueError, match="a bug"):
        write_report("demo", tmp_path, demo_root, evaluate=False)
