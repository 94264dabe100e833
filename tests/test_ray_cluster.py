"""Past one machine (RAY_ADDRESS): a stage's units run on an existing Ray cluster, here two nodes started on the
loopback address of this machine (one CPU each, so one worker per node), and give the sequential run's outputs bit
for bit (conftest's tiny_run, one thread as here), as do the two experiments' runs; the first failing unit stops the
stage with one sentence; a node that dies mid-stage fails its unit with one sentence naming the node, and a rerun
continues; an address that does not answer is one sentence. A plain run (no GPUS, no RAY_ADDRESS) imports nothing of
Ray. The units and their engine are the same as with GPUS (test_parallel: a local instance); the tests that need a
cluster share one, on one xdist worker, the node-dies test last (it kills the second node)."""
import dataclasses
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import REPO, env_for, processes_of_session
from tests.test_stages import checksums
from tests.test_parallel import assert_same_checkpoint, manifest, without_seconds
from utils.checkpoint import read_json
from utils.engines.units import run_units
from utils.errors import UserError
from utils.layout import Layout
from utils.manifest import task_checkpoint
from utils.pipeline import graph, run_stage

ON_THE_CLUSTER = pytest.mark.xdist_group("ray_cluster")      # the tests that share the cluster, in this order
START_TIMEOUT_S = 60
# Every node on 127.0.0.1 only: `ray start` would give the nodes of a multi-node cluster this machine's network
# address and listen on every interface, so the two nodes are started by Ray's own single-machine cluster utility
# (the same gcs_server and raylet processes) with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps Ray on loopback.
NODE_SETTINGS = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                 "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",  # a dead node is
                 "RAY_health_check_initial_delay_ms": "500"}                                       # seen at once
CLUSTER = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, connect=False,
                  head_node_args={"num_cpus": 1, "include_dashboard": False, "temp_dir": sys.argv[1]})
second = cluster.add_node(num_cpus=1)
print(cluster.address, second.all_processes["raylet"][0].process.pid, flush=True)
sys.stdin.read()                                  # until the test closes it
cluster.shutdown()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_session(proc):
    """Stop a process started in a session of its own, and every process of that session (a test cluster keeps
    nothing)."""
    deadline = time.time() + 10
    while (alive := processes_of_session(proc.pid, zombies=False)) and time.time() < deadline:
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)
    proc.wait(timeout=10)


def processes():
    """[(pid, the fields of /proc/<pid>/stat after the command)] of the machine's live processes."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
            out.append((int(pid), [pid, "", *stat[stat.rindex(")") + 2:].split()]))
        except (OSError, ValueError):
            pass
    return out


def process_tree(root):
    """`root` and every process below it."""
    tree, children = [root], {}
    for pid, stat in processes():
        children.setdefault(int(stat[3]), []).append(pid)
    for pid in tree:
        tree += children.get(pid, [])
    return tree


@pytest.fixture(scope="module")
def cluster():
    """A two-node Ray cluster on 127.0.0.1 (one CPU each, its own temp folder and ports), stopped at the end of the
    module: (address, the second node's raylet pid)."""
    temp_dir = tempfile.mkdtemp(prefix="mmpab-ray-")
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER, temp_dir], env={**os.environ, **NODE_SETTINGS},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        ready = select.select([proc.stdout], [], [], START_TIMEOUT_S)[0]
        line = proc.stdout.readline().split() if ready else []
        if len(line) != 2:
            pytest.fail(f"the test's Ray cluster did not start within {START_TIMEOUT_S} s")
        yield line[0], int(line[1])
    finally:
        try:
            proc.stdin.close()
            proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass
        stop_session(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_plain_stage_run_imports_nothing_of_ray(demo_root, tmp_path):
    code = ("import sys; from utils.pipeline import run_stage; import os; "
            "run_stage('baseline', 'demo', {**os.environ}); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, **env_for(demo_root, tmp_path, TASK_IDS="1")}).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_a_ray_address_that_does_not_answer_is_one_sentence(demo_root, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(UserError) as error:
        run_stage("baseline", "demo", env_for(demo_root, tmp_path, TASK_IDS="1 2", RAY_ADDRESS=address),
                  engine=run_units)
    assert re.fullmatch(rf"RAY_ADDRESS='{address}' does not answer \([^\n]*\): start a Ray head there \(`ray start "
                        r"--head --port 6379`[^\n]*\.", str(error.value)), error.value
    assert not (tmp_path / "checkpoints_perceiver_io").exists()


ON_TWO_NODES = (r"{}: {} unit\(s\) on 2 workers \(gpu ([\d.]+) cpu#1 = cpu on node \1 \(\w{{8}}\), "
                r"gpu \1 cpu#2 = cpu on node \1 \(\w{{8}}\)\)")


def on_cluster(stage, address, work, demo_root, caplog, **extra):
    """Stage `stage` with its parent (the driver) in this process, its units on the cluster at `address`, one thread
    per worker as in tiny_run; returns the parent's log lines."""
    caplog.set_level("INFO")
    run_stage(stage, "demo", env_for(demo_root, work, RAY_ADDRESS=address, OMP_NUM_THREADS="1", **extra),
              engine=run_units)
    return "\n".join(caplog.messages)


@ON_THE_CLUSTER
def test_targets_on_a_cluster_give_the_sequential_results_and_the_shared_csv_keeps_every_row(cluster, tiny_run,
                                                                                             demo_root, tmp_path,
                                                                                             caplog):
    work = Path(shutil.copytree(tiny_run, tmp_path / "work"))
    mine, seq = Layout(work, "demo"), Layout(tiny_run, "demo")
    mine.target_acc_csv.unlink()                                                 # rewritten by the two workers
    ids = [1, 5]                                                                  # an image and a text target
    lines = on_cluster("w_backbone_MM", cluster[0], work, demo_root, caplog, TASK_IDS="1 5", FORCE="1")
    assert re.search(ON_TWO_NODES.format("w_backbone_MM", 2), lines), lines
    assert re.search(r"\[gpu [\d.]+ cpu#1\] w_backbone_MM target \d \(group\d\) on backbone \d \(group\d\): "
                     r"done in \d+ s", lines), lines
    expected = pd.read_csv(seq.target_acc_csv)
    expected = expected[expected.target.isin([f"group{i}" for i in ids])].sort_values("target")
    got = pd.read_csv(mine.target_acc_csv).sort_values("target")                 # rows in the order they finished
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    pairs = pd.read_csv(seq.result_csv)
    for t in ids:
        backbone = f"group{int(pairs.set_index('target_id').task_id[t])}"
        folder, reference = mine.target(backbone, f"group{t}").root, seq.target(backbone, f"group{t}").root
        assert_same_checkpoint(task_checkpoint(folder / "scratch", "-", manifest=folder / "stage.json"),
                               task_checkpoint(reference / "scratch", "-", manifest=reference / "stage.json"))
        assert manifest(folder) == manifest(reference)
        assert read_json(folder / "gradual_prune" / "record.txt") == \
            read_json(reference / "gradual_prune" / "record.txt")
    assert not list(work.glob(".mmpab-node-*"))                                  # the shared-folder check's markers


@ON_THE_CLUSTER
def test_a_failing_unit_stops_the_stage_with_one_sentence(cluster, demo_root, tmp_path):
    env = env_for(demo_root, tmp_path, RAY_ADDRESS=cluster[0], OMP_NUM_THREADS="1", TASK_IDS="1 2", NUM_CLASSES="5")
    with pytest.raises(UserError) as error:
        run_stage("baseline", "demo", env, engine=run_units)
    assert error.value.exit_code == 1
    assert re.fullmatch(r"stage baseline, task (1 \(group1\)|2 \(group2\)) on gpu [\d.]+ cpu#[12]: task group[12] has "
                        r"3 class folders in \S+ but 5 classes are configured: [^\n]*\.", str(error.value)), error.value


def experiment_runs(stage, address, tiny_run, demo_root, tmp_path, caplog, **extra):
    """Experiment `stage` run on a copy of tiny_run in this process (one thread, as tiny_run) and on another copy
    with its runs on the cluster: (the sequential run's folder, the spread one's, the parent's log lines of the
    latter)."""
    works = [Path(shutil.copytree(tiny_run, tmp_path / name)) for name in ("sequential", "spread")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_stage(stage, "demo", env_for(demo_root, works[0], **extra))
    finally:
        torch.set_num_threads(threads)
    return *works, on_cluster(stage, address, works[1], demo_root, caplog, **extra)


@ON_THE_CLUSTER
def test_the_selection_comparisons_trainings_spread_and_write_the_sequential_table(cluster, tiny_run, demo_root,
                                                                                    tmp_path, caplog, monkeypatch):
    # the stages before the trainings are finished in tiny_run, and their units run as in `all` (tested above):
    # left out here, they would start a worker each only to skip their task
    monkeypatch.setitem(graph.EXPERIMENTS, "compare_selection",
                        dataclasses.replace(graph.EXPERIMENTS["compare_selection"], stages=()))
    sequential, spread, lines = experiment_runs("compare_selection", cluster[0], tiny_run, demo_root, tmp_path, caplog,
                                                SELECTIONS="similar scratch", SEEDS="1", TASK_IDS="3",
                                                TARGET_TRAIN_PER_CLASS="4")
    assert re.search(ON_TWO_NODES.format("compare_selection", 2), lines), lines
    mine, seq = Layout(spread, "demo"), Layout(sequential, "demo")
    assert mine.comparison_csv.read_bytes() == seq.comparison_csv.read_bytes()
    trained = checksums(spread, "checkpoints_perceiver_io/CPG_compare_selection")
    assert len([p for p in trained if p.endswith("stage.json")]) == 2
    assert trained == checksums(sequential, "checkpoints_perceiver_io/CPG_compare_selection")


@ON_THE_CLUSTER
def test_the_order_comparisons_runs_spread_and_write_the_sequential_rows(cluster, tiny_run, demo_root, tmp_path,
                                                                         caplog):
    sequential, spread, lines = experiment_runs("sequence_compare", cluster[0], tiny_run, demo_root, tmp_path, caplog,
                                                SEEDS="1", TASK_IDS="1")
    assert re.search(ON_TWO_NODES.format("sequence_compare", 3), lines), lines
    mine, seq = Layout(spread, "demo"), Layout(sequential, "demo")
    rows, expected = (pd.read_csv(lay.sequence_csv).drop(columns="seconds") for lay in (mine, seq))
    assert list(rows.run.unique()) == ["similar_seed1", "config_seed1", "random_seed1"]     # in run order
    pd.testing.assert_frame_equal(rows, expected)
    steps = [{path: digest if not path.endswith("stage.json") else without_seconds(work / path)
              for path, digest in checksums(work, "checkpoints_perceiver_io/CPG_sequence").items()}
             for work in (spread, sequential)]
    assert len([p for p in steps[0] if p.endswith("stage.json")]) == 3 and steps[0] == steps[1]


def run_on(address, work, demo_root, **extra):
    """baseline.sh in `work` with the tiny settings, its units on the cluster at `address`."""
    env = {**os.environ, **NODE_SETTINGS, **env_for(demo_root, work, RAY_ADDRESS=address, OMP_NUM_THREADS="1",
                                                    TQDM_DISABLE="1", **extra)}
    return subprocess.Popen(["bash", str(REPO / "run_pickaback" / "baseline.sh"), "demo"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@ON_THE_CLUSTER
def test_a_node_that_dies_fails_its_unit_with_one_sentence_and_a_rerun_continues(cluster, demo_root, tmp_path,
                                                                                  caplog):
    """Last of the module: it kills the cluster's second node. The driver is baseline.sh, as a user runs it."""
    address, raylet = cluster
    proc = run_on(address, tmp_path, demo_root, TASK_IDS="1 2", FINETUNE_EPOCHS="20")
    try:
        training = set()
        for line in proc.stdout:
            if "Train Ep. #" in line:
                training.add(line.split(")")[0])
                if len(training) == 2:                                           # both workers are training
                    break
        workers = process_tree(raylet)[1:]
        os.kill(raylet, signal.SIGKILL)                                          # the node dies: its raylet,
        for pid in workers:                                                      # then its workers at once (they
            os.kill(pid, signal.SIGKILL)                                         # would finish the unit first)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, (out, err)
    assert re.fullmatch(r"error: stage baseline, task [12] \(group[12]\) on gpu [^\n]*: its worker on node "
                        r"[\d.]+ \(\w{8}\) died \([^\n]*\); rerun the same command to continue "
                        r"\(finished tasks are kept\)\.\n", err), err
    lines = on_cluster("baseline", address, tmp_path, demo_root, caplog, TASK_IDS="1 2",     # on the node left
                       FINETUNE_EPOCHS="20", TQDM_DISABLE="1")
    assert re.search(r"baseline: \d unit\(s\) on 1 workers", lines), lines
    for g in ("group1", "group2"):
        assert task_checkpoint(Layout(tmp_path, "demo").baseline(g).root, "-").is_file()
