"""Training curves (TRACKER): every trainer step's per-epoch values, read back with TensorBoard's own event reader
and W&B's offline run file, are the values the log lines print; a resumed step continues its curve; the tracker
never changes a result."""
import glob
import re
import struct
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import curves, env_for
from utils import tracking
from utils.errors import UserError
from utils.layout import Layout
from utils.manifest import file_digest
from utils.pipeline import run_stage
from utils.resume import Resume

TRAIN = re.compile(r"In train\(\)-> Train Ep\. #(\d+) loss: ([\d.]+), accuracy: ([\d.]+), lr: ([\d.e-]+)")
VAL = re.compile(r"In validate\(\)-> Val Ep\. #(\d+) loss: ([\d.]+), accuracy: ([\d.]+), sparsity: ([\d.]+)")


def step_runs(task_dir):
    """The step runs of a task's curves, in the order they were written."""
    runs = [p for p in Path(task_dir).iterdir() if p.is_dir()]
    return sorted(runs, key=lambda p: min(f.name.split(".")[3] + f.name.split(".")[-1].zfill(6)
                                          for f in p.glob("events.out.tfevents.*")))


def logged(log_text):
    """([(epoch, loss, accuracy, lr)] of the train lines, [(epoch, loss, accuracy, sparsity)] of the val lines)."""
    return ([tuple(map(float, m.groups())) for m in TRAIN.finditer(log_text)],
            [tuple(map(float, m.groups())) for m in VAL.finditer(log_text)])


def assert_curves_are_the_log(task_dir, log_path):
    """The curves of a task's steps, one after another, hold exactly the values its log lines print."""
    train, val = [], []
    for run in step_runs(task_dir):
        c = curves(run)
        val += [(e, c["val/loss"][i][1], acc, c["val/sparsity"][i][1]) for i, (e, acc) in enumerate(c["val/accuracy"])]
        train += [(e, c["train/loss"][i][1], acc, c["train/lr"][i][1])
                  for i, (e, acc) in enumerate(c.get("train/accuracy", []))]
    want_train, want_val = logged(Path(log_path).read_text())
    assert want_val and want_train
    for got, want in ((train, want_train), (val, want_val)):
        assert [g[0] for g in got] == [w[0] for w in want]
        for g, w in zip(got, want, strict=True):
            assert g[1] == pytest.approx(w[1], abs=6e-4) and g[2] == pytest.approx(w[2], abs=6e-3)
            assert g[3] == pytest.approx(w[3], rel=1e-6, abs=6e-4)


def test_every_trainer_step_of_the_demo_run_has_its_curve_with_the_logged_values(tiny_run):
    lay = Layout(tiny_run, "demo")
    board = lay.logs / "tensorboard"
    for i in range(1, 9):
        group = f"group{i}"
        assert [p.name for p in step_runs(board / "baseline" / "demo" / group)] == ["baseline"]
        assert_curves_are_the_log(board / "baseline" / "demo" / group, lay.baseline(group).log)
        backbone = board / "wo_backbone" / "demo" / group
        assert [p.name for p in step_runs(backbone)][-1] == "prune_0.5"       # after the finetuning at each width
        assert_curves_are_the_log(backbone, lay.backbone(group).log)
    targets = sorted((board / "w_backbone_MM" / "demo").glob("*/*"))
    assert len(targets) == 8
    for task_dir in targets:
        assert all(p.name.startswith("finetune_x") for p in step_runs(task_dir))
        assert_curves_are_the_log(task_dir, lay.target(task_dir.parent.name, task_dir.name).log)
    # the piggymask's share of earlier weights it keeps: on a second task only
    assert "val/shared_ratio" in curves(step_runs(targets[0])[0])
    assert "val/shared_ratio" not in curves(board / "baseline" / "demo" / "group1" / "baseline")


def test_the_settings_are_the_runs_hyperparameters(tiny_run):
    from tensorboard.plugins.hparams import plugin_data_pb2
    run = tiny_run / "logs_perceiver_io" / "tensorboard" / "wo_backbone" / "demo" / "group2" / "prune_0.5"
    events = EventAccumulator(str(run))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hparams = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
    assert hparams["step"] == "prune_0.5" and hparams["pruning_schedule"] == "0.5" and hparams["epochs"] == 1


def interrupt_once(monkeypatch, at_epoch, kind):
    """The first `kind` step stops with Ctrl-C at the end of epoch `at_epoch`, after the epoch's point was written
    and before its resume state was saved (the worst moment: the state holds the epoch before)."""
    real, fired = Resume.save, []

    def save(resume, phase, epoch, *args):
        if phase["kind"] == kind and epoch == at_epoch and not fired:
            fired.append(epoch)
            raise KeyboardInterrupt
        return real(resume, phase, epoch, *args)
    monkeypatch.setattr(Resume, "save", save)
    return fired


@pytest.mark.parametrize("stage, kind, step", [("baseline", "baseline", "baseline"),
                                               ("wo_backbone", "prune", "prune_0.5")])
def test_a_step_killed_and_resumed_has_one_continuous_curve(demo_root, tmp_path, monkeypatch, one_thread, stage,
                                                            kind, step):
    settings = dict(TASK_IDS="1", FINETUNE_EPOCHS="4", EPOCHS="2", NR_EPOCH_FOR_EACH_PRUNE="4")
    curve_dirs = {}
    for name in ("reference", "resumed"):
        work = tmp_path / name
        if stage != "baseline":
            run_stage("baseline", "demo", env_for(demo_root, work, **settings))
        if name == "resumed":
            fired = interrupt_once(monkeypatch, 3, kind)
            with pytest.raises(KeyboardInterrupt):
                run_stage(stage, "demo", env_for(demo_root, work, **settings))
            assert fired == [3]
            monkeypatch.undo()
        run_stage(stage, "demo", env_for(demo_root, work, **settings))
        folder = "baseline" if stage == "baseline" else "wo_backbone"
        curve_dirs[name] = work / "logs_perceiver_io" / "tensorboard" / folder / "demo" / "group1" / step
    reference, resumed = curves(curve_dirs["reference"]), curves(curve_dirs["resumed"])
    first = 0 if kind == "prune" else 1                                  # a pruning stage starts at its epoch 0
    assert [e for e, _ in resumed["val/accuracy"]] == list(range(first, 5))
    assert [e for e, _ in resumed["train/loss"]] == [1, 2, 3, 4]
    assert len(list(curve_dirs["resumed"].glob("events.out.tfevents.*"))) == 2      # two attempts, one curve
    assert resumed == reference                                          # the same values, each epoch once


def checkpoints_and_records(work):
    root = Path(work) / "checkpoints_perceiver_io"
    files = [p for p in root.rglob("*") if p.is_file() and (p.name.endswith(".pth.tar") or p.name == "record.txt")]
    return {str(p.relative_to(root)): file_digest(p) for p in files}


def test_the_tracker_changes_no_result_and_none_writes_no_curve(tiny_run, demo_root, tmp_path, one_thread):
    settings = dict(TASK_IDS="2 6")                                      # an image and a text task
    for tracker in ("none", "tensorboard"):
        for stage in ("baseline", "wo_backbone"):
            run_stage(stage, "demo", env_for(demo_root, tmp_path / tracker, TRACKER=tracker, **settings))
    assert not (tmp_path / "none" / "logs_perceiver_io" / "tensorboard").exists()
    tracked = checkpoints_and_records(tmp_path / "tensorboard")
    assert len(tracked) == 2 * 4                       # baseline + scratch + pruned checkpoint + record, per task
    assert checkpoints_and_records(tmp_path / "none") == tracked
    reference = checkpoints_and_records(tiny_run)                        # the fixture's run, tracked too
    assert all(reference[k] == v for k, v in tracked.items())


def wandb_records(path):
    """The records of a W&B offline run file (its LevelDB-style log: 7-byte header, 32 KiB blocks, each record's
    chunks with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2
    data, block, pos, parts = Path(path).read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:                                       # a block's tail too short for a header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts, pos = parts + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def test_wandb_runs_offline_with_the_original_project_name_group_and_tags(demo_root, tmp_path, monkeypatch,
                                                                          one_thread, caplog):
    caplog.set_level("INFO")                                              # the task's train.log holds the lines
    pytest.importorskip("wandb", reason="TRACKER=wandb needs the wandb package (requirements.txt installs it)")
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    env = env_for(demo_root, tmp_path, TRACKER="wandb", TASK_IDS="3", FINETUNE_EPOCHS="2")
    run_stage("baseline", "demo", env)
    runs = glob.glob(str(tmp_path / "logs_perceiver_io" / "wandb" / "offline-run-*" / "*.wandb"))
    assert len(runs) == 1                                                 # offline: written here, nothing sent
    records = list(wandb_records(runs[0]))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name, run.run_group, list(run.tags)) == \
        ("mm-pick-a-back", "baseline_group3_perceiver_io", "baseline_perceiver_io", ["group3", "baseline"])
    history = [{i.key or "/".join(i.nested_key): float(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    train, val = logged(Layout(tmp_path, "demo").baseline("group3").log.read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for h, t, v in zip(history, train, val, strict=True):
        assert h["train/accuracy"] == pytest.approx(t[2], abs=6e-3) and h["val/accuracy"] == pytest.approx(v[2],
                                                                                                          abs=6e-3)
    assert not (tmp_path / "logs_perceiver_io" / "tensorboard").exists()
    tensorboard = tmp_path / "tb"                                         # the same task tracked by TensorBoard
    run_stage("baseline", "demo", env_for(demo_root, tensorboard, TASK_IDS="3", FINETUNE_EPOCHS="2"))
    assert checkpoints_and_records(tensorboard) == checkpoints_and_records(tmp_path)


def test_an_unknown_tracker_is_one_sentence_before_any_work(demo_root, tmp_path):
    with pytest.raises(UserError, match=r"TRACKER='tensorbord' must be one of tensorboard, wandb, none"):
        run_stage("baseline", "demo", env_for(demo_root, tmp_path, TRACKER="tensorbord", TASK_IDS="1"))
    assert not any(tmp_path.iterdir())


def test_only_rank_0_writes_curves(monkeypatch, tmp_path):
    runs = tracking.TaskRuns("tensorboard", tmp_path, "baseline/demo/group1", "baseline", "demo", "group1")
    monkeypatch.setattr(tracking, "is_main_process", lambda: False)
    with tracking.curve(runs, "baseline", 1) as curve:
        curve.log(1, {"val/accuracy": 1.0})
    assert not any(tmp_path.iterdir())


def test_wandb_missing_or_failing_is_one_sentence(monkeypatch, tmp_path):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(UserError, match=r"^TRACKER=wandb needs the wandb package: pip install wandb"):
        tracking.tracker_of("wandb")
    monkeypatch.undo()
    wandb = pytest.importorskip("wandb")

    def refuse(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login()")
    monkeypatch.setattr(wandb, "init", refuse)
    monkeypatch.setenv("WANDB_MODE", "online")
    runs = tracking.TaskRuns("wandb", tmp_path, "baseline/demo/group1", "baseline", "demo", "group1")
    with pytest.raises(UserError) as e:
        tracking.curve(runs, "baseline", 1)
    assert str(e.value) == ("W&B could not start the run of baseline/demo/group1/baseline (WANDB_MODE=online): "
                            "api_key not configured (no-tty); unset WANDB_MODE (offline), or use TRACKER=tensorboard.")
