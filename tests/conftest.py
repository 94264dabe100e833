"""Shared fixtures: a small copy of the demo data and helpers to run entry points in-process or as scripts."""
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TQDM_DISABLE", "1")
# One thread per process, read by torch when it starts and passed to every script a test runs: the tiny models train
# fastest on one, the tests compare runs made with the same thread count, and pytest-xdist's two workers (README
# command 2: -n 2) do not spin against each other on two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def number_event_files_with_seven_digits():
    """TensorBoard names a curve's event files by second, pid and a counter of the process, and reads a run's files in
    name order: two files of one run written in the same second (a step interrupted and resumed in one test) sort in
    writing order only while the counter keeps its number of digits (a file ...100 is read before ...99). Counting from
    10**6 keeps seven digits, whichever tests ran before in this process (with pytest-xdist that changes)."""
    from tensorboard.summary.writer import event_file_writer
    event_file_writer._global_uid = event_file_writer.AtomicCounter(10 ** 6)


number_event_files_with_seven_digits()


def run_main(main, argv):
    """Run an entry point's main(argv) in-process; returns its exit code."""
    try:
        main(argv)
    except SystemExit as e:
        return 0 if e.code is None else e.code
    return 0


def run_script(args, cwd, env=None, check=False):
    """Run a command (e.g. a stage script) with the repository on PYTHONPATH; returns CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "PYTHON": sys.executable, **(env or {})}
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_stage_script(monkeypatch, argv, env):
    """`bash run_pickaback/<stage>.sh <cfg>` in this process: tools/run_stage.py's main (what the script runs) with
    `env` in the environment; returns its exit code (its lines are in capsys). Use with the root_logging fixture."""
    from tools import run_stage
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return run_main(run_stage.main, argv)


def assert_one_sentence(err, rc, *words):
    """The one `error:` line of `err` (no traceback, a failing exit code), containing every one of `words`."""
    assert rc != 0 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for w in words:
        assert str(w) in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """Demo data with fewer samples per class (fast), under its own data root."""
    from tools.make_demo_data import main
    root = tmp_path_factory.mktemp("data")
    main(["--data_root", str(root), "--train_per_class", "16", "--test_per_class", "6"])
    return root


def unreachable_copy(demo_root, dest):
    """A copy of the demo data in which each image task's test set holds one image twice, under two classes: no
    model reaches an accuracy of 1.0 there, so a baseline of 1.0 is a criterion no training meets."""
    import shutil
    root = Path(shutil.copytree(demo_root, dest))
    for group in sorted((root / "demo" / "image" / "test").iterdir()):
        first, second = sorted(p for p in group.iterdir() if p.is_dir())[:2]
        image = sorted(first.iterdir())[0]
        shutil.copy(image, second / f"also_{image.name}")
    return root


@contextlib.contextmanager
def stopped_at(run, when, log_file):
    """Run `run()` in a fork of this process (its interpreter already started: nothing to import again) that stops
    right after it writes a resume state for which `when(path, phase, epoch)` holds; yields its pid while it waits
    there, then kills it with SIGKILL: no cleanup runs, as for a kill at the end of that epoch. Its log lines (INFO)
    go to `log_file`. Fails if the run ends before that point."""
    from utils.resume import Resume
    ready, tell = os.pipe()
    pid = os.fork()
    if pid == 0:                                            # the child never returns into pytest
        try:
            os.close(ready)
            save = Resume.save

            def save_then_stop(self, phase, epoch, *args):
                save(self, phase, epoch, *args)
                if when(self.path, phase, epoch):
                    os.write(tell, b"1")
                    while True:
                        signal.pause()
            Resume.save = save_then_stop
            root = logging.getLogger()
            root.setLevel(logging.INFO)
            root.addHandler(logging.FileHandler(log_file))
            run()
        except BaseException:                               # reported by the parent: the run did not stop
            traceback.print_exc()
        finally:
            os._exit(1)
    os.close(tell)
    try:
        assert os.read(ready, 1) == b"1", "the run ended before the point it was to stop at"
        yield pid
    finally:
        os.close(ready)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def run_killed(run, when, log_file):
    """`run()` in a fork killed with SIGKILL right after the resume state `when` names (stopped_at); returns its log."""
    with stopped_at(run, when, log_file):
        pass
    return Path(log_file).read_text()


@pytest.fixture
def baseline_file(tmp_path):
    def write(accs):
        path = tmp_path / "baseline_acc.txt"
        path.write_text(json.dumps({k: "%.4f" % v for k, v in accs.items()}))
        return path
    return write


def demo_config_file(tmp_path, **changes):
    """A copy of utils/dataset_config.yaml whose demo section has `changes`."""
    import yaml
    sections = yaml.safe_load((REPO / "utils" / "dataset_config.yaml").read_text())
    sections["demo"].update(changes)
    path = tmp_path / "dataset_config.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


# Tiny settings of every stage: one epoch per training step, one pruning stage, a small profile.
TINY = {"FINETUNE_EPOCHS": "1", "EPOCHS": "1", "NR_EPOCH_FOR_EACH_PRUNE": "1", "PRUNING_INTERVAL": "1",
        "PRUNING_SCHEDULE": "0.5", "PROFILE_SIZE": "8", "ITERATIONS": "5", "BATCH_SIZE": "16", "DEVICE": "cpu"}


def env_for(demo_root, work, **extra):
    """The stage settings and folders of a tiny run in `work`, as the environment gives them to the stages."""
    return {**TINY, "MMPAB_DATA_ROOT": str(demo_root), "MMPAB_WORK_DIR": str(work), **extra}


def built_once(tmp_path_factory, name, build):
    """A folder `name` that `build(folder)` fills once per test run. Under pytest-xdist the workers share it: the
    first to ask builds it under a lock in the run's folder (above the workers' own), the others wait for it and read
    it; without xdist it is this process's. The tests only read it (they change copies)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    import fcntl
    import shutil
    run = tmp_path_factory.getbasetemp().parent                  # .../pytest-N, above popen-gw0, popen-gw1
    folder, done = run / name, run / f"{name}.done"
    with open(run / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)                         # released when the file is closed
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)            # what a worker that failed while building left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_run(demo_root, tmp_path_factory):
    """Every stage of the demo config, run once in-process with tiny settings on one thread (a real backbone ->
    target chain per task), once for the whole test run (built_once: the xdist workers share it; the demo data of
    every worker is byte-identical, and the stages' records name no data folder). Tests must not change it: copy it
    first."""
    import torch
    torch.set_num_threads(1)                        # in every worker, whether it builds the run or not

    def build(work):
        from utils.pipeline import run_stage
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.INFO)                 # the tasks' train.log files hold the log lines, as in a real run
        try:
            run_stage("all", "demo", env_for(demo_root, work))
        finally:
            root.setLevel(level)
    return built_once(tmp_path_factory, "tiny_run", build)


def curves(run_dir):
    """{tag: [(epoch, value)]} of one TensorBoard run of the training curves, as TensorBoard shows it (read with its
    own event reader; purged points dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(autouse=True)
def no_closed_log_streams():
    """An entry point run in-process replaces the root logger's handlers with one on the sys.stdout of its test,
    which pytest closes after that test; a later test whose code logs through the root logger (a preparer's
    basicConfig keeps existing handlers) would print logging's error report. Drop such handlers first."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            root.removeHandler(handler)


@pytest.fixture
def root_logging():
    """The entry points (and tools/run_stage.py) replace the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest on one thread (as tiny_run), and do not slow down when the CPU is shared."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The modules whose tests start scripts, worker pools or torchrun (seconds each), longest first: run first, so that
# pytest-xdist's two processes share them out early and finish with the short tests, not one waiting on a long tail.
# pytest-xdist hands each process a first run of consecutive tests (the first quarter of its share: items 0-48 and
# 49-97 of ~400): the first process builds tiny_run (built_once) for its first test, and test_cpg (no tiny_run) comes
# before test_files_and_processes, so that the second process reaches its first tiny_run test (torchrun) after the
# run is built instead of waiting for it.
FIRST = ("test_clients", "test_ray_cluster", "test_parallel", "test_stages", "test_interrupts_and_os_errors",
         "test_cpg", "test_files_and_processes", "test_sequence", "test_report")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rpartition(".")[2], len(FIRST)))


def report_numbers(layout, section):
    """The rows of one section of the report's numbers CSV (logs_perceiver_io/report_<cfg>.csv)."""
    import pandas as pd
    frame = pd.read_csv(layout.report(".csv"), keep_default_na=False)
    return frame[frame.section == section]


def report_value(frame, item, metric):
    """The one value of (item, metric) in rows of the report's numbers CSV."""
    found = frame[(frame["item"] == item) & (frame.metric == metric)].value
    assert len(found) == 1, (item, metric, found)
    return found.iloc[0]


def processes_of_session(sid, zombies=True):
    """The ids of the processes still in session `sid`; with `zombies`, also those that have exited but wait for
    their parent to collect them."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) != sid:
                continue
            if not zombies:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rpartition(")")[2].split()[0] == "Z":
                        continue
        except OSError:                                            # gone meanwhile
            continue
        alive.append(int(pid))
    return alive
