"""Past one machine (RAY_ADDRESS): a stage's units run on an existing Ray cluster, here two nodes started on the
loopback address of this machine (one CPU each, so one worker per node), and give the sequential run's outputs bit
for bit; a node that dies mid-stage fails its unit with one sentence naming the node, and a rerun continues; an
address that does not answer is one sentence. A plain run (no GPUS, no RAY_ADDRESS) imports nothing of Ray."""
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

import pytest

from tests.conftest import REPO, env_for
from tests.test_parallel import assert_same_checkpoint, manifest
from utils.engines.units import run_units
from utils.errors import UserError
from utils.layout import Layout
from utils.manifest import task_checkpoint
from utils.pipeline import run_stage

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
    while (alive := processes_of_session(proc.pid)) and time.time() < deadline:
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)
    proc.wait(timeout=10)


def processes_of_session(sid):
    return [pid for pid, stat in processes() if os.getsid(pid) == sid and stat[2] != "Z"]


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


def run_on(address, work, demo_root, **extra):
    """baseline.sh in `work` with the tiny settings, its units on the cluster at `address`."""
    env = {**os.environ, **NODE_SETTINGS, **env_for(demo_root, work, RAY_ADDRESS=address, OMP_NUM_THREADS="1",
                                                    TQDM_DISABLE="1", **extra)}
    return subprocess.Popen(["bash", str(REPO / "run_pickaback" / "baseline.sh"), "demo"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_a_two_node_cluster_gives_the_sequential_results_and_a_rerun_continues_after_a_node_dies(cluster, tiny_run,
                                                                                                demo_root, tmp_path):
    """One test, so that one cluster serves both halves under pytest-xdist; it kills the second node."""
    address, raylet = cluster
    ids = [1, 5]                                                                 # an image and a text task
    first = run_on(address, tmp_path, demo_root, TASK_IDS="1 5")
    out, err = first.communicate(timeout=180)
    assert first.returncode == 0, (out, err)
    assert re.search(r"baseline: 2 unit\(s\) on 2 workers \(gpu ([\d.]+) cpu#1 = cpu on node \1 \(\w{8}\), "
                     r"gpu \1 cpu#2 = cpu on node \1 \(\w{8}\)\)", out), (out, err)
    mine, seq = Layout(tmp_path, "demo"), Layout(tiny_run, "demo")
    for g in (f"group{i}" for i in ids):
        assert_same_checkpoint(task_checkpoint(mine.baseline(g).root, "-"), task_checkpoint(seq.baseline(g).root, "-"))
        assert manifest(mine.baseline(g).root) == manifest(seq.baseline(g).root)
    assert not list(tmp_path.glob(".mmpab-node-*"))                              # the shared-folder check's markers

    # a node that dies mid-stage: one sentence naming it, and a rerun continues on the node left
    dies = tmp_path / "dies"
    dies.mkdir()
    proc = run_on(address, dies, demo_root, TASK_IDS="1 2", FINETUNE_EPOCHS="20")
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
    rerun = run_on(address, dies, demo_root, TASK_IDS="1 2", FINETUNE_EPOCHS="20")          # on the node left
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, (out, err)
    for g in ("group1", "group2"):
        assert task_checkpoint(Layout(dies, "demo").baseline(g).root, "-").is_file()
