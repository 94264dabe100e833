"""The report's clients section (utils/report/clients.py): the comparison's numbers (clients_comparison) of hand-made
frames against hand-computed means, stds, forward transfer, forgetting (0, and > 0 after a synthetic drop) and bytes
per pick per exchange; the verdict follows the numbers; the section and the picks figure written from a real clients
run's CSVs (tests/data/clients_demo*.csv: the demo's 4 clients, tiny settings, under both exchanges); no CSV, no
section; a broken CSV listed under "Missing". No training."""
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.layout import Layout
from utils.report import clients, write_report
from tests.conftest import report_numbers, report_value

DATA = Path(__file__).parent / "data"
NAN = math.nan
BASELINE = {"group1": 0.8, "group2": 0.6, "group3": 0.7, "group4": 0.5}
TASKS = {"alice": ("group1", "group2"), "bob": ("group3", "group4")}          # round 1, round 2


def run_rows(run, rule, seed, exchange, acc, params=(1000, 3000), drop=None):
    """The rows of a run of 2 clients x 2 rounds: each learns a task per round, reaching acc[task]; in round 2 it
    evaluates its round-1 task again, at acc[task] − drop.get(task, 0). params: each client's in its last round."""
    drop = drop or {}
    rows = []
    for (client, (first, second)), p in zip(TASKS.items(), params, strict=True):
        for r, learned, evaluated in ((1, first, {first: acc[first]}),
                                      (2, second, {first: acc[first] - drop.get(first, 0.0), second: acc[second]})):
            for task, a in evaluated.items():
                rows.append({"run": run, "rule": rule, "exchange": exchange, "seed": seed, "round": r,
                             "client": client, "learned": learned, "task": task, "accuracy": a,
                             "baseline_acc": BASELINE[task], "pick": "new" if r == 1 else f"{client}:n01:{first}",
                             "network": f"n0{r}", "scores": "[]", "bytes_sent": 10, "bytes_received": 20,
                             "params": p if r == 2 else p // 2, "width": 1.0, "seconds_baseline": 0.1,
                             "seconds_search": 0.0, "seconds_learn": 0.1})
    return rows


def messages_of(run, exchange, total):
    """Two messages of a run, `total` bytes in all."""
    return [{"run": run, "exchange": exchange, "round": 1, "kind": "baseline", "sender": "server", "receiver": "alice",
             "bytes": total // 4},
            {"run": run, "exchange": exchange, "round": 2, "kind": "learn", "sender": "bob", "receiver": "server",
             "bytes": total - total // 4}]


HIGH = {"group1": 0.9, "group2": 0.8, "group3": 0.7, "group4": 0.6}       # FWT (0.1 + 0.2 + 0 + 0.1) / 4 = 0.1
LOW = {t: a - 0.1 for t, a in HIGH.items()}                                # FWT 0.0
# the comparison: (rule, seed) -> (accuracies, params, {exchange: total bytes}, drop)
RUNS = {("similar", 1): (HIGH, (1000, 3000), {"models": 8000, "profile": 4000}, None),
        ("similar", 2): (LOW, (2000, 4000), {"models": 12000, "profile": 2000}, None),
        ("own", 1): (dict.fromkeys(HIGH, 0.5), (1000, 1000), {"models": 400}, None),
        ("own", 2): (dict.fromkeys(HIGH, 0.6), (1000, 1000), {"models": 800}, None),
        ("scratch", 1): (HIGH, (1000, 1000), {"models": 400}, {"group1": 0.2}),         # alice's group1 drops
        ("scratch", 2): (HIGH, (1000, 1000), {"models": 400}, None)}


def frames(runs=RUNS, default=True):
    rows, messages = [], []
    if default:
        for exchange, total in (("models", 6000), ("profile", 3000)):
            rows += run_rows("default", "similar", 2, exchange, HIGH)
            messages += messages_of("default", exchange, total)
    for (rule, seed), (acc, params, sent, drop) in runs.items():
        for exchange, total in sent.items():
            rows += run_rows(f"{rule}_seed{seed}", rule, seed, exchange, acc, params, drop)
            messages += messages_of(f"{rule}_seed{seed}", exchange, total)
    return pd.DataFrame(rows), pd.DataFrame(messages)


def test_comparison_numbers_by_hand():
    cmp = clients.clients_comparison(*frames())
    assert list(cmp.index) == ["similar", "own", "scratch"]              # the default run is not a rule
    std = float(np.std([0.75, 0.65], ddof=1))
    # final accuracy: per seed the mean of the 4 (client, task)s' last rows, then mean ± std over the 2 seeds
    assert cmp.loc["similar", "acc_mean"] == pytest.approx(0.70)
    assert cmp.loc["similar", "acc_std"] == pytest.approx(std)
    assert cmp.loc["own", "acc_mean"] == pytest.approx(0.55) and cmp.loc["own", "acc_std"] == pytest.approx(std)
    assert cmp.loc["similar", "n"] == 2
    # forward transfer: accuracy in the round learned − baseline, by hand 0.1 (seed 1) and 0.0 (seed 2)
    assert cmp.loc["similar", "fwt_mean"] == pytest.approx(0.05)
    assert cmp.loc["similar", "fwt_std"] == pytest.approx(float(np.std([0.1, 0.0], ddof=1)))
    assert cmp.loc["own", "fwt_mean"] == pytest.approx(np.mean([(-0.3 - 0.1 - 0.2 + 0.0) / 4,
                                                                (-0.2 + 0.0 - 0.1 + 0.1) / 4]))
    # no drop: no forgetting, and none at worst
    for rule in ("similar", "own"):
        assert cmp.loc[rule, "forgetting_mean"] == 0.0 and cmp.loc[rule, "forgetting_max"] == 0.0
    # params per client: the mean over clients of their last round's, then over seeds
    assert cmp.loc["similar", "params_mean"] == pytest.approx(np.mean([2000, 3000]))
    assert cmp.loc["similar", "params_std"] == pytest.approx(float(np.std([2000, 3000], ddof=1)))
    # bytes per pick: the run's total bytes / its 4 learning events (2 clients x 2 rounds), mean over seeds, under
    # each exchange; a rule run under one exchange only has no number under the other
    assert cmp.loc["similar", "bytes_per_pick_models"] == pytest.approx(np.mean([8000 / 4, 12000 / 4]))
    assert cmp.loc["similar", "bytes_per_pick_profile"] == pytest.approx(np.mean([4000 / 4, 2000 / 4]))
    assert cmp.loc["own", "bytes_per_pick_models"] == pytest.approx(np.mean([100, 200]))
    assert math.isnan(cmp.loc["own", "bytes_per_pick_profile"])


def test_a_drop_is_forgetting():
    cmp = clients.clients_comparison(*frames())
    # seed 1: alice's group1 1.0 → 0.7 (0.9 − 0.2): forgetting mean over the 2 tasks evaluated twice (0.2, 0) = 0.1,
    # seed 2: 0; over seeds 0.05 ± std; the worst task 0.2
    assert cmp.loc["scratch", "forgetting_mean"] == pytest.approx(0.05)
    assert cmp.loc["scratch", "forgetting_std"] == pytest.approx(float(np.std([0.1, 0.0], ddof=1)))
    assert cmp.loc["scratch", "forgetting_max"] == pytest.approx(0.2)
    # the final accuracy is the last round's: the drop counts, the earlier accuracy does not
    assert cmp.loc["scratch", "acc_mean"] == pytest.approx(np.mean([0.75 - 0.2 / 4, 0.75]))
    # forward transfer is measured in the round a task was learned: the later drop does not change it
    assert cmp.loc["scratch", "fwt_mean"] == pytest.approx(0.1)
    # over 3 rounds the reference is the best earlier accuracy, not the first: 0.6, 0.9, then 0.7 forgets 0.2
    three = pd.DataFrame({"round": [1, 2, 3], "client": "alice", "task": "group1", "learned": ["group1", "x", "y"],
                          "accuracy": [0.6, 0.9, 0.7], "baseline_acc": 0.5, "params": 10})
    m = clients.run_metrics(three)
    assert m["forgetting"] == pytest.approx(0.2) and m["forgetting_max"] == pytest.approx(0.2)
    assert m["acc"] == pytest.approx(0.7) and m["fwt"] == pytest.approx(0.1) and m["picks"] == 1


def test_accuracies_come_from_one_exchange():
    """The learning is the same under both exchanges: the models rows are read, the profile rows only for bytes."""
    rows, messages = frames()
    profile = rows.exchange == "profile"
    rows.loc[profile, "accuracy"] = 0.0
    rows.loc[profile, "params"] = 1
    cmp = clients.clients_comparison(rows, messages)
    assert cmp.loc["similar", "acc_mean"] == pytest.approx(0.70)
    assert cmp.loc["similar", "params_mean"] == pytest.approx(2500)
    assert cmp.loc["similar", "bytes_per_pick_profile"] == pytest.approx(750)


def test_the_default_run_is_no_comparison():
    assert clients.clients_comparison(*frames(runs={})).empty
    assert len(clients.clients_comparison(*frames(runs={("own", 1): RUNS[("own", 1)]}))) == 1


def test_the_similarity_is_the_picked_candidates():
    scores = ('[{"candidate": "alice:n01:group1", "sim_euc": 0.9}, {"candidate": "bob:n02:group3", "sim_euc": 0.5},'
              ' {"candidate": "carol:n01:group2", "sim_euc": 0.7}]')
    assert clients.pick_similarity("bob:n02:group3", scores) == 0.5          # neither the first nor the best
    assert math.isnan(clients.pick_similarity("new", scores))
    assert math.isnan(clients.pick_similarity("dave:n01:group4", "[]"))     # a rule that does not score (random)


def test_the_verdict_follows_the_numbers():
    better = clients.verdict(clients.clients_comparison(*frames()))
    assert better == ("- Does borrowing pay? `similar` reaches 0.7000 ± 0.0707 final accuracy at 2,500 "
                             "(models) / 750 (profile) bytes per pick, against `own` 0.5500 ± 0.0707 at 150 (models) "
                             "bytes per pick: +0.1500, pays (spread ±0.0707) (the other rules: `scratch` 0.7250 "
                             "± 0.0354 at 100 (models))."), better
    # own ahead: the same sentence says so
    swapped = {**RUNS, ("own", 1): (dict.fromkeys(HIGH, 0.9), (1000, 1000), {"models": 400}, None),
               ("own", 2): (dict.fromkeys(HIGH, 0.95), (1000, 1000), {"models": 400}, None)}
    worse = clients.verdict(clients.clients_comparison(*frames(swapped)))
    assert "`own` 0.9250 ± 0.0354 at 100 (models) bytes per pick: -0.2250, costs accuracy" in worse, worse
    # one seed: no claim
    one = {k: v for k, v in RUNS.items() if k[1] == 1}
    assert "too few seeds to tell" in clients.verdict(clients.clients_comparison(*frames(one)))


def test_the_sample_run_forgets_nothing():
    """A real (tiny) CPG clients run: every task evaluated again keeps its accuracy, so forgetting is 0."""
    run = clients.read_clients(DATA / "clients_demo.csv", DATA / "clients_demo_messages.csv",
                               [f"group{i}" for i in range(1, 9)])
    m = clients.run_metrics(run.default)
    assert m["forgetting"] == 0.0 and m["forgetting_max"] == 0.0 and m["picks"] == 8
    assert m["acc"] == pytest.approx(np.mean([1.0, 0.4444, 0.3333, 0.5556, 0.8333, 0.3889, 0.4444, 0.4444]))


def test_the_section_from_a_real_run(tmp_path):
    layout = Layout(tmp_path, "demo")
    layout.clients_csv.parent.mkdir(parents=True)
    for name in ("clients_demo.csv", "clients_demo_messages.csv"):
        shutil.copy(DATA / name, layout.logs / name)
    path, c = write_report("demo", tmp_path, tmp_path / "no_data", evaluate=False)
    text = path.read_text()
    section = text.split("## Clients: devices that borrow from each other")[1].split("## Missing")[0]
    assert "### Run `default`: rule `similar`, seed 2, exchange(s) `models`, `profile`" in section
    # a client's matrix: its tasks by the round it learned them, — before, against its baseline
    assert "| task | baseline | round 2 (learned group4) | round 3 (learned group6) | final − baseline |" in section
    assert "| group6 | 0.4444 | — | 0.4444 | +0.0000 |" in section
    assert "| group3 | 0.2778 | 0.3333 | 0.3333 | +0.0555 |" in section
    # the picks: holder, its similarity (sim_euc of the picked candidate), the bytes received under each exchange
    assert ("| 2 | alice | group7 | bob (n01:group3) | n02 | 0.9297 | 1,554,188 | 1,747,707 |") in section
    assert "| 1 | alice | group1 | new | n01 | missing | 16 | 16 |" in section
    picks = report_numbers(layout, "clients_picks")
    assert float(report_value(picks, "3|dave", "sim_euc")) == 0.996057  # bob:n01:group3's of 7 candidates
    assert float(report_value(picks, "2|bob", "sim_euc")) == 0.971335
    assert report_value(picks, "2|bob", "pick") == "carol:n01:group2"
    # bytes per round: the messages CSV's sums, per exchange and round
    messages = pd.read_csv(layout.clients_messages_csv)
    sums = messages.groupby(["exchange", "round"]).bytes.sum()
    table = report_numbers(layout, "clients_bytes")
    for (exchange, r), total in sums.items():
        assert int(report_value(table, f"{exchange}|{r}", "total")) == total
    assert "| 3 | 24 | 459 | 776,968 | 320,056 | 1,281,568 | 2,692 | 777,063 | 3,158,830 |" in section
    # the figure, linked; no comparison without comparison runs
    png = layout.report("_clients_picks.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png.name})" in section
    assert "### Selection rules side by side" not in section
    assert not any(stage == "clients" for stage, _, _ in c.missing)


def test_the_comparison_in_the_report(tmp_path):
    layout = Layout(tmp_path, "demo")
    layout.logs.mkdir(parents=True)
    rows, messages = frames()
    rows.to_csv(layout.clients_csv, index=False)
    messages.to_csv(layout.clients_messages_csv, index=False)
    path, _ = write_report("demo", tmp_path, tmp_path / "no_data", evaluate=False)
    section = path.read_text().split("### Selection rules side by side")[1]
    assert ("| `similar` | 2 | 0.7000 ± 0.0707 | +0.0500 ± 0.0707 | 0.0000 ± 0.0000 | 0.0000 | 2,500 ± 707 | 2,500 "
            "| 750 |") in section
    assert "| `scratch` | 2 | 0.7250 ± 0.0354 | +0.1000 ± 0.0000 | 0.0500 ± 0.0707 | 0.2000 |" in section
    assert "| `own` | 2 | 0.5500 ± 0.0707 |" in section and section.count("| — |") == 2        # not run under profile
    assert "- Does borrowing pay? `similar` reaches 0.7000 ± 0.0707" in section
    numbers = report_numbers(layout, "clients_comparison")
    assert float(report_value(numbers, "scratch", "forgetting_max")) == pytest.approx(0.2)
    assert float(report_value(numbers, "similar", "bytes_per_pick_profile")) == pytest.approx(750)


def test_no_clients_csv_no_section(tmp_path):
    path, c = write_report("demo", tmp_path, tmp_path / "no_data", evaluate=False)
    assert "## Clients" not in path.read_text() and not any(s == "clients" for s, _, _ in c.missing)
    assert not Layout(tmp_path, "demo").report("_clients_picks.png").exists()


@pytest.mark.parametrize("edit,words", [
    (lambda f: f.drop(columns=["scores"]), "lacks the column(s) scores: rerun run_pickaback/clients.sh"),
    (lambda f: f.assign(accuracy=f.accuracy.where(f.index != 2, 1.5)), "accuracy on line 4 of"),
    (lambda f: f.assign(task=f.task.where(f.index != 0, "group9")), "names task(s) group9 that the config"),
])
def test_a_broken_clients_csv_is_listed_not_a_crash(tmp_path, edit, words):
    layout = Layout(tmp_path, "demo")
    layout.logs.mkdir(parents=True)
    rows, messages = frames()
    edit(rows).to_csv(layout.clients_csv, index=False)
    messages.to_csv(layout.clients_messages_csv, index=False)
    report, _ = write_report("demo", tmp_path, tmp_path / "no_data", evaluate=False)
    text = report.read_text()
    assert "## Clients" not in text
    line = next(line for line in text.splitlines() if line.startswith("- clients (all): section not written"))
    assert "UserError" in line and str(layout.clients_csv) in line and words in line, line
    assert not layout.report("_clients_picks.png").exists()
