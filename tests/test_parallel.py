"""Several GPUS (GPUS="0 1 ..."; here GPUS="cpu cpu"): the independent tasks of a stage run at the same time in
Ray workers on a local Ray instance, one per entry, and every output is bit-identical to the sequential run's
(conftest's tiny_run) when both use the same number of threads (here one: OMP_NUM_THREADS=1). With other thread
counts the CPU sums in another order and results agree within float rounding only (README)."""
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, curves, env_for, processes_of_session, run_main, run_stage_script
from tests.test_interrupts_and_os_errors import interrupt_when_training, script_env
from utils.checkpoint import read_json
from utils.engines.units import run_units
from utils.errors import INTERRUPTED, UserError
from utils.layout import Layout
from utils.manifest import task_checkpoint
from utils.pipeline.executor import entry_device, gpu_entries
from utils.pipeline import run_stage

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - "
LINE = re.compile(r"^(?:\(gpu (cpu#[12]) pid=\d+\) )?(.*)$")          # a worker's lines, as Ray prints them
UNIT = re.compile(r"\[gpu (cpu#[12])\] \w+ (.+): (started|done in \d+ s)$")


@pytest.fixture
def run_parallel_stage(monkeypatch, capsys, root_logging):
    """run(stage, work, demo_root, **settings): `bash run_pickaback/<stage>.sh demo` with GPUS="cpu cpu", its parent
    (tools/run_stage.py's main) in this process (no second start-up; every script's bash side is run in
    test_stages), its two workers as processes; returns what it printed (the parent's lines and the workers')."""
    def run(stage, work, demo_root, **extra):
        env = env_for(demo_root, work, GPUS="cpu cpu", OMP_NUM_THREADS="1", **extra)     # one thread, as tiny_run
        monkeypatch.chdir(work)
        capsys.readouterr()
        assert run_stage_script(monkeypatch, [stage, "demo"], env) == 0, capsys.readouterr()
        return capsys.readouterr().out
    return run


def assert_ran_in_parallel(stdout, units):
    """Every line is whole (the parent's or one worker's, prefixed), both workers ran units, and two units were in
    progress at the same time on different workers (the parent's started/done lines)."""
    spans, workers = {}, set()
    for line in stdout.splitlines():
        worker, text = LINE.match(line).groups()
        assert (worker or re.match(STAMP, text)) and not text.startswith("(gpu ") and not re.search(STAMP, text[1:]), \
            f"not one whole line of the parent or of one worker: {line!r}"
        workers.add(worker)
        if (u := UNIT.search(line)) and not worker:
            at = datetime.strptime(text[:23], "%Y-%m-%d %H:%M:%S,%f")
            spans.setdefault((u.group(1), u.group(2)), []).append(at)
    assert workers == {None, "cpu#1", "cpu#2"}
    assert len(spans) == units and all(len(times) == 2 for times in spans.values())       # each unit started, done
    assert {worker for worker, _ in spans} == {"cpu#1", "cpu#2"}
    assert any(a[0] != b[0] and sa[0] < sb[1] and sb[0] < sa[1]
               for a, sa in spans.items() for b, sb in spans.items())


def assert_same_checkpoint(path, reference):
    mine, theirs = (torch.load(p, weights_only=True) for p in (path, reference))
    assert mine.keys() == theirs.keys()
    for key, tensor in theirs["model_state_dict"].items():
        assert torch.equal(mine["model_state_dict"][key], tensor), key


def manifest(folder):
    data = read_json(Path(folder) / "stage.json")
    return data["settings"], data["outputs"], data["results"]


def test_a_ctrl_c_is_one_line_and_leaves_no_process_and_the_rerun_runs_the_tasks_at_once_to_the_sequential_results(
        tiny_run, demo_root, tmp_path, run_parallel_stage):
    """baseline.sh with GPUS="cpu cpu", as a user runs it: the Ctrl-C reaches the parent, Ray and both workers (one
    process group); the workers exit quietly and Ray stops, leaving no process behind. The rerun (its parent in this
    process) runs the tasks two at a time and gives the sequential run's files."""
    work, ids = tmp_path / "work", [1, 2, 5, 6]                                  # two image, two text tasks
    work.mkdir()
    settings = env_for(demo_root, work, TASK_IDS=" ".join(map(str, ids)), GPUS="cpu cpu", OMP_NUM_THREADS="1")
    sessions = []
    rc, out, err = interrupt_when_training(["bash", str(REPO / "run_pickaback" / "baseline.sh"), "demo"],
                                           script_env(**settings), work, started="(gpu cpu", sessions=sessions)
    assert rc == 130 and err == INTERRUPTED + "\n", (rc, err)
    assert "Traceback" not in out and "KeyboardInterrupt" not in out and "interrupted" not in out, out
    deadline = time.time() + 10                                 # Ray's last processes end within seconds
    while (left := processes_of_session(sessions[0])) and time.time() < deadline:
        time.sleep(0.2)
    assert left == [], [(pid, Path(f"/proc/{pid}/cmdline").read_bytes()[:200]) for pid in left]

    mine, seq = Layout(work, "demo"), Layout(tiny_run, "demo")
    groups = [f"group{i}" for i in ids]
    left_to_do = [g for g in groups if not list(mine.baseline(g).root.glob("checkpoint-*.pth.tar"))]
    assert len(left_to_do) >= 2                                          # interrupted before its first tasks ended
    out = run_parallel_stage("baseline", work, demo_root, TASK_IDS=" ".join(map(str, ids)))
    assert_ran_in_parallel(out, len(left_to_do))
    assert read_json(mine.baseline_acc_file) == {g: read_json(seq.baseline_acc_file)[g] for g in groups}
    for g in groups:
        assert_same_checkpoint(task_checkpoint(mine.baseline(g).root, "-"), task_checkpoint(seq.baseline(g).root, "-"))
        assert manifest(mine.baseline(g).root) == manifest(seq.baseline(g).root)
    for g in left_to_do:                        # each worker wrote the curves of the tasks it ran: the sequential
        step = Path("tensorboard") / "baseline" / "demo" / g / "baseline"                     # run's values
        assert curves(mine.logs / step) == curves(seq.logs / step) != {}


def test_a_worker_handed_no_run_of_the_experiment_is_one_sentence(demo_root, tmp_path):
    sentence = (r"^MMPAB_UNIT='order_seed9' names no run of sequence_compare with these settings: leave MMPAB_UNIT "
                r"unset \(it is set only for a parallel worker\)\.$")
    with pytest.raises(UserError, match=sentence):
        run_stage("sequence_compare", "demo", env_for(demo_root, tmp_path, SEEDS="1", MMPAB_UNIT="order_seed9"))


def without_seconds(manifest):
    """A sequence step's record without its wall time."""
    record = read_json(manifest)
    del record["results"]["seconds"]
    return record


def test_a_gpus_entry_that_is_neither_an_index_nor_cpu_exits_1_with_one_sentence_naming_it(demo_root, tmp_path,
                                                                                          monkeypatch, capsys,
                                                                                          root_logging):
    from tools.run_stage import main
    for name, value in env_for(demo_root, tmp_path / "work", GPUS="0 x", TASK_IDS="1").items():
        monkeypatch.setenv(name, value)
    assert run_main(main, ["baseline", "demo"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: GPUS='0 x': 'x' is neither a GPU index nor cpu") and err.endswith(".")
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "work").exists()                                  # checked before anything is written


def test_gpus_entries_are_cpu_or_gpu_indices_and_an_index_is_the_cpu_without_cuda():
    assert gpu_entries({"GPUS": "cpu 7"}) == ["cpu", "7"]
    assert gpu_entries({"GPUS": "0,1 cuda:2"}) == ["0", "1", "cuda:2"]
    assert gpu_entries({}) == []
    assert entry_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert entry_device("7") == entry_device("cuda:7") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="GPU 7 is treated as the CPU only without CUDA")
def test_one_gpus_entry_without_cuda_runs_the_stage_on_the_cpu(demo_root, tmp_path):
    """GPUS="7" (one entry: it only picks the device) on a machine without CUDA: the stage trains on the CPU, even
    with DEVICE=cuda:7, which alone would be refused."""
    run_stage("baseline", "demo", env_for(demo_root, tmp_path, GPUS="7", DEVICE="cuda:7", TASK_IDS="1"))
    assert task_checkpoint(Layout(tmp_path, "demo").baseline("group1").root, "-").is_file()
    with pytest.raises(UserError, match="no CUDA GPU is available"):
        run_stage("baseline", "demo", env_for(demo_root, tmp_path, DEVICE="cuda:7", TASK_IDS="2"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: a GPU index beyond the device count")
def test_a_gpus_index_beyond_the_device_count_is_one_sentence():
    count = torch.cuda.device_count()
    with pytest.raises(UserError, match=rf"GPUS names GPU {count}, but this machine has {count} GPU\(s\)"):
        entry_device(str(count))


@pytest.mark.parametrize("value", ["x", "0", "-1"])
def test_gpus_per_unit_that_is_not_a_positive_number_is_one_sentence_before_any_work(demo_root, tmp_path, value):
    env = env_for(demo_root, tmp_path, RAY_ADDRESS="127.0.0.1:1", GPUS_PER_UNIT=value, TASK_IDS="1")
    with pytest.raises(UserError, match=rf"^GPUS_PER_UNIT='{value}' is not a positive number of GPUs: give e\.g\. 1, "
                                        r"2 or 0\.5\.$"):
        run_stage("baseline", "demo", env, engine=run_units)
    assert not (tmp_path / "checkpoints_perceiver_io").exists()


def test_units_to_spread_without_an_engine_are_one_sentence(demo_root, tmp_path):
    """run_stage called directly (not through the commands) with GPUS="cpu cpu": one sentence, before any work."""
    with pytest.raises(UserError, match=r"^stage baseline: GPUS with two or more entries or RAY_ADDRESS needs Ray, "
                                        r"which the commands \(run_pickaback/\*\.sh, tools/run_stage\.py\) bring"):
        run_stage("baseline", "demo", env_for(demo_root, tmp_path, GPUS="cpu cpu", TASK_IDS="1 2"))
    assert not Layout(tmp_path, "demo").baseline("group1").root.exists()
