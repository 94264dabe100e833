"""tools/gpu_check.py without a GPU: the one-sentence refusal, --help, the projection's arithmetic, the published
dataset sizes, the stage checks' environment and how a failed check is reported."""
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import REPO, assert_one_sentence, run_script
from tools import gpu_check
from tools.gpu_check import Shape, StepTimes, TaskSize, project

IMAGE = Shape("image", (64,), (("depth", 3),))
TEXT = Shape("text", (128, 384), (("depth", 3),))
# one epoch or step of everything, two pruning stages, widths 1.0 -> 1.5 -> 2.0 in both CPG stages
ENV = {"FINETUNE_EPOCHS": "2", "EPOCHS": "3", "NR_EPOCH_FOR_EACH_PRUNE": "1", "PRUNING_SCHEDULE": "0.5 0.9",
       "NETWORK_WIDTH_MULTIPLIER": "1.0", "MAX_NETWORK_WIDTH_MULTIPLIER": "2.0", "WIDTH_STEP": "0.5",
       "PROFILE_SIZE": "8", "ITERATIONS": "5", "CANDIDATES": "all", "AMP": "0", "RECIPE": "original"}
# one batch size per table: per_sample() returns it whatever BATCH_SIZE the scripts set
FP32 = StepTimes(baseline={32: 0.01}, cpg={16: 0.02}, evaluate=0.001, forward2=0.05)
TASKS = [TaskSize("a", "image", IMAGE, 100, 10), TaskSize("b", "image", IMAGE, 200, 20)]


def settings(**changes):
    return gpu_check.settings_of({**ENV, **changes})


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


def test_projection_of_given_step_times_and_settings():
    p = project(TASKS, settings(), {(IMAGE, False): FP32}, save_s=0.5)
    # task a: a baseline epoch is 100 x 0.01 + 10 x 0.001 + 0.5 (resume state) = 1.51 s, 2 epochs + a checkpoint;
    # a CPG epoch 100 x 0.02 + 0.01 + 0.5 = 2.51 s, 3 of them + a checkpoint per width; each pruning stage one
    # evaluation, one epoch and a checkpoint; the search 2 x 8 + 8 (one candidate) profile samples + 5 trials
    a = {"baseline": 2 * 1.51 + 0.5, "width": 3 * 2.51 + 0.5, "pruning": 2 * (2.51 + 0.01 + 0.5),
         "search": 24 * 0.001 + 5 * 0.05}
    b = {"baseline": 2 * 2.52 + 0.5, "width": 3 * 4.52 + 0.5, "pruning": 2 * (4.52 + 0.02 + 0.5),
         "search": 24 * 0.001 + 5 * 0.05}
    for case, widths in ((0, 1), (1, 3)):
        assert p.stages["baseline"][case] == pytest.approx(a["baseline"] + b["baseline"])
        assert p.stages["wo_backbone"][case] == pytest.approx(widths * (a["width"] + b["width"]) + a["pruning"] +
                                                              b["pruning"])
        assert p.stages["find_backbone"][case] == pytest.approx(a["search"] + b["search"])
        assert p.stages["w_backbone_MM"][case] == pytest.approx(widths * (a["width"] + b["width"]))
        assert p.seconds[case] == pytest.approx(sum(p.stages[stage][case] for stage in p.stages))
    assert p.epochs == (2 * (2 + 3 + 2 + 3), 2 * (2 + 9 + 2 + 9))
    assert p.seconds == pytest.approx((69.908, 158.268))


def test_doubling_epochs_doubles_the_training_part():
    times = {(IMAGE, False): StepTimes({32: 0.01}, {16: 0.02}, evaluate=0.0)}
    once, twice = (project(TASKS, settings(EPOCHS=e), times) for e in ("3", "6"))
    assert twice.stages["w_backbone_MM"] == pytest.approx(tuple(2 * s for s in once.stages["w_backbone_MM"]))
    assert twice.stages["baseline"] == once.stages["baseline"]                   # FINETUNE_EPOCHS unchanged
    pruning = 2 * (100 + 200) * 0.02                                             # the pruning stages stay
    assert twice.stages["wo_backbone"][0] - pruning == pytest.approx(2 * (once.stages["wo_backbone"][0] - pruning))
    longer = project(TASKS, settings(FINETUNE_EPOCHS="4"), times)
    assert longer.stages["baseline"] == pytest.approx(tuple(2 * s for s in once.stages["baseline"]))


def test_amp_uses_the_bf16_step_times():
    half = StepTimes({32: 0.005}, {16: 0.01}, evaluate=0.0005, forward2=0.025)
    times = {(IMAGE, False): FP32, (IMAGE, True): half}
    fp32, bf16 = project(TASKS, settings(), times), project(TASKS, settings(AMP="1"), times)
    assert bf16.seconds == pytest.approx(tuple(s / 2 for s in fp32.seconds))
    assert bf16.epochs == fp32.epochs
    with pytest.raises(KeyError):                                      # no bf16 figures: the table says n/a
        project(TASKS, settings(AMP="1"), {(IMAGE, False): FP32})


def test_workers_share_the_tasks_but_never_beat_the_longest():
    equal = [TaskSize("a", "image", IMAGE, 100, 10), TaskSize("b", "image", IMAGE, 100, 10)]
    times = {(IMAGE, False): FP32}
    one, two = project(equal, settings(), times), project(equal, settings(), times, workers=2)
    assert two.seconds == pytest.approx(tuple(s / 2 for s in one.seconds))
    uneven = [TaskSize("a", "image", IMAGE, 1000, 10), TaskSize("b", "image", IMAGE, 10, 10)]
    alone = project(uneven[:1], settings(), times)
    assert project(uneven, settings(), times, workers=2).stages["baseline"] == alone.stages["baseline"]


def test_candidates_and_text_tasks_use_their_own_times():
    tasks = [TaskSize("a", "image", IMAGE, 100, 10), TaskSize("t", "text", TEXT, 100, 10)]
    text = StepTimes({32: 0.001}, {16: 0.002}, evaluate=0.0001, forward2=0.01)
    times = {(IMAGE, False): FP32, (TEXT, False): text}
    p = project(tasks, settings(), times)
    image_only = project(tasks[:1], settings(), times)
    assert p.stages["baseline"][0] == pytest.approx(image_only.stages["baseline"][0] + 2 * (100 * 0.001 + 0.001))
    assert project(tasks, settings(CANDIDATES="same"), times).stages["find_backbone"][0] == pytest.approx(
        2 * 8 * 0.001 + 5 * 0.05 + 2 * 8 * 0.0001 + 5 * 0.01)                 # no candidate of the same modality


def test_width_attempts_and_nearest_batch():
    s = settings()
    assert gpu_check.width_attempts(s["wo_backbone"]) == gpu_check.width_attempts(s["w_backbone_MM"]) == 3
    assert gpu_check.width_attempts(settings(MAX_NETWORK_WIDTH_MULTIPLIER="1.0")["wo_backbone"]) == 1
    assert gpu_check.width_attempts(settings(MAX_NETWORK_WIDTH_MULTIPLIER="1.2")["wo_backbone"]) == 2
    table = {16: 1.0, 32: 2.0}
    assert [gpu_check.per_sample(table, b) for b in (8, 16, 20, 30, 64)] == [1.0, 1.0, 1.0, 2.0, 2.0]


def test_variants_set_amp_recipe_and_the_fast_epochs():
    columns = dict(gpu_check.variants({"EPOCHS": "50", "AMP": "1"}, 30))
    assert list(columns) == ["default", "AMP=1", "RECIPE=fast", "AMP=1 + RECIPE=fast"]
    assert columns["default"]["AMP"] == "0" and columns["default"]["EPOCHS"] == "50"
    assert columns["AMP=1 + RECIPE=fast"] == {"EPOCHS": "30", "AMP": "1", "RECIPE": "fast", "FINETUNE_EPOCHS": "30"}


def test_durations():
    assert gpu_check.duration(45) == "45 s"
    assert gpu_check.duration(90 * 60) == "90 min"
    assert gpu_check.duration(5 * 3600) == "5.0 h"
    assert gpu_check.duration(3 * 86400) == "3.0 days"
    assert gpu_check.duration_range(3600 * 30, 86400 * 4) == "1.2-4.0 days"
    assert gpu_check.duration_range(600, 600) == "10 min"
    assert gpu_check.duration_range(30, 100) == "30-100 s"


def test_published_sizes_of_the_real_configs(tmp_path):
    from tools.prepare_oxford import GROUPS
    from utils.config import load_dataset_config
    assert sorted(gpu_check.OXFORD_IMAGES) == sorted(c for g in GROUPS for c in g)
    sizes = {}
    for name in gpu_check.REAL_CONFIGS:                               # no prepared data under tmp_path
        tasks, source = gpu_check.task_sizes(load_dataset_config(name, tmp_path, check_folders=False))
        sizes[name] = tasks
        assert "counted" not in source
    assert len(sizes["cub"]) == 54 and {(t.train, t.test) for t in sizes["cub"]} == {(240, 60)}
    assert {t.shape.label for t in sizes["cub"]} == {"224x224 images", "128 tokens x 384 text"}
    oxford = {t.group: (t.train, t.test) for t in sizes["oxford"]}
    train = sum(n - math.ceil(0.2 * n) for n in (258, 96, 112, 109))             # group1: classes 51, 72, 82, 60
    assert oxford["group1"] == oxford["group7"] == (train, 575 - train) == (458, 117)
    assert sum(t.train + t.test for t in sizes["oxford"]) == 2 * sum(gpu_check.OXFORD_IMAGES.values())
    assert len(sizes["mscoco"]) == 15 and {t.modality for t in sizes["mscoco"]} == {"image"}
    assert {(t.train, t.test) for t in sizes["mscoco"]} == {(4936, 1176)}


def test_sizes_are_counted_where_the_data_is_prepared(demo_root):
    from utils.config import load_dataset_config
    tasks, source = gpu_check.task_sizes(load_dataset_config("demo", demo_root, check_folders=False))
    assert "counted" in source and {(t.train, t.test) for t in tasks} == {(48, 18)}
    with pytest.raises(gpu_check.UserError, match="no prepared data"):
        gpu_check.task_sizes(load_dataset_config("digits", demo_root, check_folders=False))


def test_stage_environment(tmp_path):
    from utils.config import load_dataset_config
    ids = gpu_check.image_task_ids(load_dataset_config("demo", tmp_path, check_folders=False))
    assert ids == [1, 2, 3, 4]
    env = gpu_check.stage_env({"NPROC": "4", "GPUS": "0 1", "EPOCHS": "100", "PYTHONPATH": "elsewhere"},
                              tmp_path / "data", tmp_path / "work", "cuda:0", ids, NPROC="2")
    assert env["NPROC"] == "2" and "GPUS" not in env and env["EPOCHS"] == gpu_check.TINY["EPOCHS"]
    assert env["TASK_IDS"] == "1 2 3 4" and env["CANDIDATES"] == "same" and env["DEVICE"] == "cuda:0"
    assert env["PYTHONPATH"].split(":") == [str(REPO), "elsewhere"]
    assert env["MMPAB_WORK_DIR"] == str(tmp_path / "work")


def test_a_failed_check_is_one_line_naming_its_log(tmp_path, capsys):
    checks = gpu_check.Checks(tmp_path / "logs")
    assert checks.run("fine", lambda: ("1.0 samples/s", 42)) == 42

    def broken():
        raise ValueError("boom\nmore lines")
    assert checks.run("train x fp32 b16", broken) is None
    checks.skip("stages NPROC=2", "one GPU visible")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fine") and lines[0].endswith(" ok")
    assert lines[1].endswith(f"failed (ValueError: boom; log: {tmp_path / 'logs' / 'train_x_fp32_b16.log'})")
    assert "Traceback" in (tmp_path / "logs" / "train_x_fp32_b16.log").read_text()
    assert lines[2].endswith("skipped (one GPU visible)")
    assert checks.failures == 1 and checks.status == ["ok", "failed", "skipped"]


def test_a_failed_stage_run_names_its_error_line(tmp_path, monkeypatch):
    def fake_run(command, **kwargs):
        return SimpleNamespace(returncode=3, stdout="training...\n", stderr="error: stage wo_backbone, task 1: bad.\n")
    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    with pytest.raises(gpu_check.CheckError) as e:
        gpu_check.stage_check({}, tmp_path, [1, 2], 10)
    assert e.value.reason == "exit 3: error: stage wo_backbone, task 1: bad." and "training..." in e.value.output

    def slow(command, **kwargs):
        raise subprocess.TimeoutExpired(command, 10, output=b"half way")
    monkeypatch.setattr(gpu_check.subprocess, "run", slow)
    with pytest.raises(gpu_check.CheckError, match="within 10 s") as e:
        gpu_check.stage_check({}, tmp_path, [1, 2], 10)
    assert e.value.output == "half way"
