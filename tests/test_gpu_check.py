"""tools/gpu_check.py without a GPU: the one-sentence refusal, --help, the device choice, the projection (from given
step times, over the tasks of prepared data or over assumed counts it names), a rehearsal of the whole story with
the measurements faked, the stage checks' environment and how a failed check is reported."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import REPO, assert_one_sentence, run_script
from tools import benchmark_attention, gpu_check, gpu_check_runs, gpu_check_stages
from tools import gpu_check_projection as projection
from tools.gpu_check_projection import StepTimes, project, workload
from utils.config import load_dataset_config
from utils.errors import UserError

# two pruning stages, widths 1.0 -> 1.5 -> 2.0 in both CPG stages, no AMP
ENV = {"FINETUNE_EPOCHS": "2", "EPOCHS": "3", "NR_EPOCH_FOR_EACH_PRUNE": "1", "PRUNING_SCHEDULE": "0.5 0.9",
       "NETWORK_WIDTH_MULTIPLIER": "1.0", "MAX_NETWORK_WIDTH_MULTIPLIER": "2.0", "WIDTH_STEP": "0.5",
       "PROFILE_SIZE": "8", "ITERATIONS": "5", "CANDIDATES": "all", "AMP": "0", "RECIPE": "original"}
FP32 = StepTimes(baseline={32: 0.01}, cpg={16: 0.02}, evaluate=0.001, forward2=0.05)
TRAINING_ONLY = StepTimes(baseline={32: 0.01}, cpg={16: 0.02}, evaluate=0.0)    # no evaluation, no search


def settings(**changes):
    return projection.settings_of({**ENV, **changes})


def prepare(root, per_class):
    """Demo-config data under `root`, made of empty files: {task id: (train, test) samples per class}."""
    cfg = load_dataset_config("demo", root, check_folders=False)
    for task_id, sizes in per_class.items():
        group = cfg.task_name(task_id)
        extension = ".txt" if cfg.modality(group) == "text" else ".png"
        for split, n in zip(("train", "test"), sizes, strict=True):
            for c in range(cfg.num_classes):
                folder = cfg.task_folder(group, split) / f"class{c}"
                folder.mkdir(parents=True)
                for i in range(n):
                    (folder / f"{i}{extension}").touch()
    return cfg


@pytest.fixture
def demo(tmp_path):
    """The demo config over prepared data whose task t has 2t training and 1 test sample per class (3 classes)."""
    return prepare(tmp_path, {t: (2 * t, 1) for t in range(1, 9)})


def times_of(work, fp32=FP32, bf16=None):
    return {(t.shape, amp): st for t in work.tasks for amp, st in ((False, fp32), (True, bf16 or fp32))}


def scaled(p, factor):
    return tuple(factor * s for s in p)


# ---- the command line ------------------------------------------------------------------------------------------
def test_without_cuda_one_sentence_and_non_zero_exit():
    proc = run_script(["bash", "tools/gpu_check.sh"], cwd=REPO, env={"CUDA_VISIBLE_DEVICES": ""})
    line = assert_one_sentence(proc.stderr, proc.returncode, "no CUDA GPU is visible", "--device cpu")
    assert proc.stderr.strip() == line and proc.stdout == ""


def test_help_lists_the_options_without_importing_torch():
    proc = run_script([sys.executable, "tools/gpu_check.py", "--help"], cwd=REPO, check=True)
    for option in ("--quick", "--skip-stages", "--device", "--configs", "--out", "projected wall time"):
        assert option in proc.stdout, option
    probe = ("import sys; from tools import gpu_check; gpu_check.parse_args(['--quick']); "
             "print('torch' in sys.modules)")
    assert run_script([sys.executable, "-c", probe], cwd=REPO, check=True).stdout.strip() == "False"


def test_bad_option_values_are_refused():
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--rounds", "0"])
    args = gpu_check.parse_args(["--quick"])
    assert (args.rounds, args.steps, args.device) == (1, 5, "cuda")


def test_device_choice_is_the_pipelines():
    assert gpu_check.select("cpu").type == "cpu"
    with pytest.raises(UserError, match="not a device name"):               # utils.runtime.select_device's sentence
        gpu_check.select("gpu")


# ---- the projection ------------------------------------------------------------------------------------------
def test_task_counts_come_from_the_prepared_data(demo):
    work = workload(demo, range(1, 9))
    assert [(t.train, t.test) for t in work.tasks] == [(6 * t, 3) for t in range(1, 9)]
    assert [t.modality for t in work.tasks] == ["image"] * 4 + ["text"] * 4
    assert "counted in the prepared data" in work.source and str(demo.data_root) in work.source
    assert [t.task_id for t in workload(demo, [2, 5]).tasks] == [2, 5]


def test_without_prepared_data_the_assumed_counts_are_named(tmp_path, capsys):
    cub = workload(load_dataset_config("cub", tmp_path, check_folders=False), range(1, 55))
    assert {(t.train, t.test) for t in cub.tasks} == {(240, 60)}
    assert {t.shape.label for t in cub.tasks} == {"224x224 images", "128 tokens x 384 text"}
    assert cub.source.startswith("assumed: 48 train / 12 test per class x 5 classes")
    mscoco = workload(load_dataset_config("mscoco", tmp_path, check_folders=False), range(1, 16))
    assert {(t.train, t.test) for t in mscoco.tasks} == {(4 * 1234, 4 * 294)}
    projection.print_projection({"cub": cub}, projection.columns(ENV, 30), times_of(cub), 0.0, 1, 30)
    out = capsys.readouterr().out
    assert "cub: all 54 tasks; train/test samples per task 240/60 (assumed: 48 train / 12 test per class" in out
    with pytest.raises(UserError, match="no prepared data"):              # no data, no assumed counts
        workload(load_dataset_config("digits", tmp_path, check_folders=False), [1])


def test_the_projection_grows_with_the_tasks_and_the_samples(tmp_path):
    same = prepare(tmp_path / "same", {t: (4, 2) for t in range(1, 5)})        # four image tasks of one size
    times = times_of(workload(same, [1]))
    two, four = (project(workload(same, range(1, n + 1)), settings(), times) for n in (2, 4))
    assert four.seconds == pytest.approx(scaled(two.seconds, 2)) and four.epochs == scaled(two.epochs, 2)
    bigger = prepare(tmp_path / "bigger", {t: (8, 2) for t in range(1, 5)})
    times = {key: TRAINING_ONLY for key in times}
    small, large = (project(workload(cfg, [1, 2]), settings(), times) for cfg in (same, bigger))
    assert large.seconds == pytest.approx(scaled(small.seconds, 2))   # twice the training samples, twice the time
    assert large.epochs == small.epochs


def test_the_projection_follows_the_epochs_and_the_growth_loop(demo):
    work = workload(demo, range(1, 9))
    times = times_of(work, TRAINING_ONLY)
    once, twice = (project(work, settings(EPOCHS=e), times) for e in ("3", "6"))
    assert twice.stages["w_backbone_MM"] == pytest.approx(scaled(once.stages["w_backbone_MM"], 2))
    assert twice.stages["baseline"] == once.stages["baseline"]                   # FINETUNE_EPOCHS unchanged
    longer = project(work, settings(FINETUNE_EPOCHS="4"), times)
    assert longer.stages["baseline"] == pytest.approx(scaled(once.stages["baseline"], 2))
    typical, worst = once.stages["w_backbone_MM"]
    assert worst == pytest.approx(3 * typical)                                   # widths 1.0, 1.5, 2.0
    narrow = project(work, settings(MAX_NETWORK_WIDTH_MULTIPLIER="1.0"), times)
    assert narrow.stages["w_backbone_MM"][0] == narrow.stages["w_backbone_MM"][1] == pytest.approx(typical)
    assert once.epochs == (8 * (2 + 3 + 2 + 3), 8 * (2 + 9 + 2 + 9))
    fewer_prunes = project(work, settings(PRUNING_SCHEDULE="0.5"), times)
    assert fewer_prunes.stages["wo_backbone"][0] < once.stages["wo_backbone"][0]


def test_widths_come_from_the_growth_loop():
    s = settings(MAX_NETWORK_WIDTH_MULTIPLIER="1.25", WIDTH_STEP="0.1")["w_backbone_MM"]
    assert projection.tried_widths(s, below_baseline=True) == [1.0, 1.1, 1.2, 1.25]
    assert projection.tried_widths(s, below_baseline=False) == [1.0]


def test_measured_times_drive_the_projection_and_amp_picks_bf16(demo):
    work = workload(demo, range(1, 9))
    half = StepTimes({32: 0.005}, {16: 0.01}, evaluate=0.0005, forward2=0.025)
    fp32 = project(work, settings(), times_of(work, FP32, half))
    assert project(work, settings(AMP="1"), times_of(work, FP32, half)).seconds == pytest.approx(
        scaled(fp32.seconds, 0.5))
    slower = StepTimes({32: 0.02}, {16: 0.04}, evaluate=0.002, forward2=0.1)
    assert project(work, settings(), times_of(work, slower)).seconds == pytest.approx(scaled(fp32.seconds, 2))
    with pytest.raises(KeyError):                                      # no bf16 figures: the table says n/a
        project(work, settings(AMP="1"), {k: v for k, v in times_of(work).items() if not k[1]})


def test_workers_share_the_tasks_but_never_beat_the_longest(demo, tmp_path):
    equal = prepare(tmp_path / "equal", {1: (4, 2), 2: (4, 2)})
    work = workload(equal, [1, 2])
    one, two = (project(work, settings(), times_of(work), workers=w) for w in (1, 2))
    assert two.seconds == pytest.approx(scaled(one.seconds, 0.5))
    uneven = workload(demo, [1, 4])                                    # 6 and 24 training samples
    alone = project(workload(demo, [4]), settings(), times_of(uneven))
    assert project(uneven, settings(), times_of(uneven), workers=2).stages["baseline"] == alone.stages["baseline"]


def test_search_counts_the_candidates_the_pipeline_would_compare(demo):
    work = workload(demo, range(1, 9))
    searched = {c: project(work, settings(CANDIDATES=c), times_of(work)).stages["find_backbone"][0]
                for c in ("all", "same")}
    assert searched["same"] < searched["all"]                          # 3 candidates of the same modality, not 7


def test_the_columns_set_amp_recipe_and_the_fast_epochs():
    columns = projection.columns({**ENV, "EPOCHS": "50", "AMP": "1"}, 30)
    assert list(columns) == ["default", "AMP=1", "RECIPE=fast", "AMP=1 + RECIPE=fast"]
    default, both = columns["default"]["w_backbone_MM"], columns["AMP=1 + RECIPE=fast"]["w_backbone_MM"]
    assert (default.amp, default.recipe, default.epochs) == (False, "original", 50)
    assert (both.amp, both.recipe, both.epochs, columns["RECIPE=fast"]["baseline"].finetune_epochs) == (
        True, "fast", 30, 30)


def test_durations_are_the_pipelines():
    from utils.pipeline.context import duration
    assert projection.duration_range(30, 30) == duration(30) == "30 s"
    assert projection.duration_range(3600 * 30, 86400 * 4) == "30 h 00 min to 4 d 0 h"


# ---- the story, with the measurements faked ------------------------------------------------------------------
def fake_measure(size, device, rounds, steps, amp, *, eval_batch=None, **kwargs):
    per_s = {"baseline trainer": 100.0, "CPG target trainer": 50.0} | ({"evaluation": 1000.0} if eval_batch else {})
    return {"samples_per_s": per_s, "flops_per_sample": 1e6, "peak_memory": None, "forward2_s": 0.01}


@pytest.fixture
def released(monkeypatch):
    """The checks' release_memory (gc.collect, and CUDA's cache), counted instead of run: a full collection in this
    process, which holds every module the suite imported, takes ~0.3 s a check."""
    calls = []
    monkeypatch.setattr(gpu_check_runs, "release_memory", lambda: calls.append(1))
    return calls


def test_a_rehearsal_measures_each_shape_then_projects_the_selected_tasks(demo, tmp_path, monkeypatch, capsys,
                                                                          released):
    monkeypatch.setattr(gpu_check_runs, "measure", fake_measure)
    monkeypatch.setattr(gpu_check_runs, "matmul_rate", lambda *a: 1e10)
    monkeypatch.setattr(benchmark_attention, "run_child", lambda mode, args: {"step_s": 1.0, "peak": 1})
    monkeypatch.setenv("MMPAB_DATA_ROOT", str(demo.data_root))
    monkeypatch.setenv("MMPAB_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("TASK_IDS", "1,2,5")
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))   # main sets it for its processes
    argv = ["--device", "cpu", "--configs", "demo", "--quick", "--skip-stages", "--out", str(tmp_path / "out")]
    assert gpu_check.main(argv) == 0
    out = capsys.readouterr().out
    checks = [ln for ln in out.splitlines() if ln.startswith(("train ", "resume", "attention cub", "stages "))]
    assert [ln.split()[-1] for ln in checks] == ["ok"] * 13 + ["(--skip-stages)"]
    assert len(released) == 13                                                  # after each check
    assert sum(ln.startswith("train demo text") for ln in checks) == 4           # the text tasks' own shape
    assert "demo: tasks 1, 2, 5 (TASK_IDS); train/test samples per task 6/3, 12/3, 30/3 (counted" in out
    assert "demo    3 (2 image, 1 text)" in out


# ---- running checks ------------------------------------------------------------------------------------------
def test_stage_environment(tmp_path):
    ids = gpu_check_stages.image_task_ids(load_dataset_config("demo", tmp_path, check_folders=False))
    assert ids == [1, 2, 3, 4]
    env = gpu_check_stages.stage_env({"NPROC": "4", "GPUS": "0 1", "EPOCHS": "100", "PYTHONPATH": "elsewhere"},
                                     tmp_path / "data", tmp_path / "work", "cuda:0", ids, NPROC="2")
    assert env["NPROC"] == "2" and "GPUS" not in env and env["EPOCHS"] == gpu_check_stages.TINY["EPOCHS"]
    assert env["TASK_IDS"] == "1 2 3 4" and env["CANDIDATES"] == "same" and env["DEVICE"] == "cuda:0"
    assert env["PYTHONPATH"].split(":") == [str(REPO), "elsewhere"]
    assert env["MMPAB_WORK_DIR"] == str(tmp_path / "work")


def test_a_failed_check_is_one_line_naming_its_log(tmp_path, capsys, released):
    checks = gpu_check_runs.Checks(tmp_path / "logs")
    assert checks.run("fine", lambda: ("1.0 samples/s", 42)) == 42

    def broken():
        raise ValueError("boom\nmore lines")
    assert checks.run("train x fp32 b16", broken) is None
    checks.skip("stages NPROC=2", "one GPU visible")
    assert len(released) == 2                                  # after the check that failed too
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fine") and lines[0].endswith(" ok")
    assert lines[1].endswith(f"failed (ValueError: boom; log: {tmp_path / 'logs' / 'train_x_fp32_b16.log'})")
    assert "Traceback" in (tmp_path / "logs" / "train_x_fp32_b16.log").read_text()
    assert lines[2].endswith("skipped (one GPU visible)")
    assert checks.failures == 1 and checks.status == ["ok", "failed", "skipped"]


def test_a_failed_stage_run_names_its_error_line(tmp_path, monkeypatch):
    def fake_run(command, **kwargs):
        return SimpleNamespace(returncode=3, stdout="training...\n", stderr="error: stage wo_backbone, task 1: bad.\n")
    monkeypatch.setattr(gpu_check_stages.subprocess, "run", fake_run)
    with pytest.raises(gpu_check_runs.CheckError) as e:
        gpu_check_stages.stage_check({}, tmp_path, [1, 2], 10)
    assert e.value.reason == "exit 3: error: stage wo_backbone, task 1: bad." and "training..." in e.value.output

    def slow(command, **kwargs):
        raise subprocess.TimeoutExpired(command, 10, output=b"half way")
    monkeypatch.setattr(gpu_check_stages.subprocess, "run", slow)
    with pytest.raises(gpu_check_runs.CheckError, match="within 10 s") as e:
        gpu_check_stages.stage_check({}, tmp_path, [1, 2], 10)
    assert e.value.output == "half way"
