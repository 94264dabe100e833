"""Quiet changes to finished work, each now said or avoided: a file one stage removes because another stage is redone
is named in the log, a redone task's train.csv starts afresh (an interrupted attempt's rows stay when it resumes),
and tools/status.py finds the inputs the stages compare (the config's model section among them) changed.

The stage runs here are tiny (one epoch per step on the small demo data) and in-process."""
import json
import logging
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml

import tools.run_stage
from tests.conftest import REPO, assert_one_sentence, demo_config_file, env_for, run_main
from tools.run_stage import main as run_stage_main
from utils.checkpoint import remove_stale_checkpoints
from utils.errors import UserError
from utils.layout import Layout, TaskFolder
from utils.pipeline import run_stage, stage_settings
from utils.pipeline.choice import place_choice
from utils.pipeline.compacting import remove_stale_stages
from utils.pipeline.context import Run
from utils.pipeline.cpg_steps import FinetuneStep, finetune_with_growth
from utils.pipeline.runlock import HELD, holding
from utils.pipeline.sequence import sequence_step
from utils.pipeline.status import report, run_states
from utils.pipeline.target import train_target
from utils.trainer import Outcome

pytestmark = pytest.mark.usefixtures("one_thread", "root_logging")   # (tools/run_stage.py replaces the handlers)

ACCURACIES = {"group1": "0.5000", "group2": "0.5000", "group5": "0.5000"}


@pytest.fixture
def work(tmp_path):
    lay = Layout(tmp_path / "work", "demo")
    lay.logs.mkdir(parents=True)
    lay.baseline_acc_file.write_text(json.dumps(ACCURACIES))
    return lay


def contents(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.name.endswith(".log")}


def lines(caplog, words):
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


def touch(path, content=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ---- files removed because a stage is redone -----------------------------------------------------------------------
def test_a_redone_choice_names_the_kv_transfer_files_it_removes(tmp_path, caplog):
    folder = tmp_path / "gradual_prune"
    old = [touch(folder / "checkpoint-1.pth.tar"), touch(folder / "checkpoint-1_kv_transfer_2.pth.tar")]
    kept = [touch(folder / "record.txt"), touch(folder / "kv_transfer_2.json")]
    source = touch(tmp_path / "0.5" / "checkpoint-2.pth.tar", b"chosen")
    with caplog.at_level(logging.INFO):
        placed = place_choice(source, folder)
    assert placed.read_bytes() == b"chosen" and not any(p.exists() for p in old) and all(p.exists() for p in kept)
    assert lines(caplog, "removed") == [f"removed the earlier choice and the k/v transfer files built on it from "
                                        f"{folder}: checkpoint-1.pth.tar, checkpoint-1_kv_transfer_2.pth.tar "
                                        f"(transfer_kv makes them again from the new choice)"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        place_choice(source, folder)                                 # nothing more to remove: no line
    assert lines(caplog, "removed") == []


def test_pruning_stages_and_checkpoints_of_an_earlier_run_are_named_when_removed(tmp_path, caplog):
    folder = TaskFolder(tmp_path / "group1")
    new = touch(folder.prune_stage(0.5) / "checkpoint-1.pth.tar")
    stale = touch(folder.prune_stage(0.7) / "checkpoint-1.pth.tar")
    old_epochs = touch(folder.scratch / "checkpoint-1.pth.tar")
    written = touch(folder.scratch / "checkpoint-2.pth.tar")
    with caplog.at_level(logging.INFO):
        remove_stale_stages(folder, {"0.0": written, "0.5": new})
        remove_stale_checkpoints(written)
    assert new.exists() and written.exists() and not stale.parent.exists() and not old_epochs.exists()
    assert lines(caplog, "removed") == [
        f"removed the pruning stages of an earlier run that this run did not reach from {folder.gradual_prune}: "
        f"0.7/checkpoint-1.pth.tar",
        f"removed the checkpoint(s) of an earlier run beside checkpoint-2.pth.tar in {folder.scratch}: "
        f"checkpoint-1.pth.tar"]


def test_redoing_the_choice_stage_names_the_kv_transfer_file_in_the_tasks_log(demo_root, work, caplog):
    env = env_for(demo_root, work.work_dir, TASK_IDS="1", TRACKER="none")
    run_stage("wo_backbone", "demo", env)
    run_stage("select_pruning_ratio_of_backbone", "demo", env)
    folder = work.backbone("group1")
    kv = touch(work.kv_transfer_file(next(folder.gradual_prune.glob("checkpoint-*.pth.tar")), 2))
    with caplog.at_level(logging.INFO):
        run_stage("select_pruning_ratio_of_backbone", "demo", {**env, "FORCE": "1"})
    assert not kv.exists()
    line = f"from {folder.gradual_prune}: {kv.name} (transfer_kv makes them again from the new choice)"
    assert len(lines(caplog, line)) == 1 and line in folder.log.read_text()


# ---- a redone task's train.csv --------------------------------------------------------------------------------
def test_a_redone_backbone_task_starts_its_train_csv_afresh(demo_root, work, caplog):
    env = env_for(demo_root, work.work_dir, TASK_IDS="1", TRACKER="none")
    run_stage("wo_backbone", "demo", env)
    csv = work.backbone("group1").csv
    first = csv.read_text()
    assert first and "epoch" not in first                          # the original's rows, no header
    with caplog.at_level(logging.INFO):
        run_stage("wo_backbone", "demo", {**env, "FORCE": "1"})
    assert csv.read_text() == first                               # not appended to: the same rows once
    assert lines(caplog, f"removed {csv}") == [f"removed {csv}, the rows of an earlier attempt: the task starts over"]


def test_a_redone_target_and_sequence_step_start_their_train_csv_afresh(demo_root, work):
    run = Run.from_environment("demo", env_for(demo_root, work.work_dir, TRACKER="none"))
    target, step = TaskFolder(work.work_dir / "target"), TaskFolder(work.work_dir / "step")
    s = stage_settings("w_backbone_MM", env_for(demo_root, work.work_dir))
    q = stage_settings("sequence", env_for(demo_root, work.work_dir))
    for force in (False, True):
        run.force = force
        train_target(run, s, "group2", None, 0.5, target, "w_backbone_MM target 2")
        sequence_step(run, q, step, [2], None, 0.5, 2)
        if not force:
            first = target.csv.read_text(), step.csv.read_text()
    assert (target.csv.read_text(), step.csv.read_text()) == first and all(first)


@pytest.mark.parametrize("saved", [None, {"phase": {"kind": "finetune", "width": 1.0}}])
def test_only_a_resumed_attempt_appends_to_the_rows_it_began(tmp_path, saved):
    """An interrupted attempt that resumes keeps its rows; one that starts over (no resume state of the same task:
    redone, or interrupted before its first epoch was saved) starts the file afresh."""
    csv = touch(tmp_path / "train.csv", b"1,0.5,0.5\n")

    def attempt(net, data, step, width, baseline, csv_path, resume, curves):
        with open(csv_path, "a") as f:
            f.write("2,0.9,0.9\n")
        return Outcome.DONE, 0.9, width

    step = FinetuneStep.of(stage_settings("w_backbone_MM", {}))
    data = SimpleNamespace(train_loader=SimpleNamespace(generator=torch.Generator()))
    finetune_with_growth(lambda: None, data, step, 1.0, 0.5, 0.5, csv, SimpleNamespace(load=lambda: saved),
                         finetune=attempt)
    assert csv.read_text() == ("2,0.9,0.9\n" if saved is None else "1,0.5,0.5\n2,0.9,0.9\n")


# ---- status compares the inputs as the stages do ---------------------------------------------------------------
def test_status_finds_a_finished_task_redone_after_the_model_section_changes(demo_root, work, monkeypatch, caplog):
    env = env_for(demo_root, work.work_dir, TASK_IDS="1", TRACKER="none")
    run_stage("baseline", "demo", env)
    run = Run.from_environment("demo", env)
    assert run_states(run, env)["baseline"][0].redo == ""
    model = yaml.safe_load((REPO / "utils" / "dataset_config.yaml").read_text())["demo"]["model"]
    monkeypatch.setenv("MMPAB_CONFIG_FILE", str(demo_config_file(work.work_dir, model={**model, "depth": 2})))
    run = Run.from_environment("demo", env)
    state = run_states(run, env)["baseline"][0]
    assert (state.state, state.redo) == ("finished", "inputs changed: model")
    assert "task 1 (group1)  finished     accuracy" in report(run, {"baseline": [state]})
    assert "; would be redone: inputs changed: model" in report(run, {"baseline": [state]})
    with caplog.at_level(logging.INFO):                               # and the stage agrees
        run_stage("baseline", "demo", env)
    assert lines(caplog, "baseline task 1 (group1): redone: inputs changed (data)")


def test_status_finds_a_changed_baseline_accuracy_as_the_stage_does(demo_root, work):
    env = env_for(demo_root, work.work_dir, TASK_IDS="1", TRACKER="none")
    run_stage("wo_backbone", "demo", env)
    run = Run.from_environment("demo", env)
    assert run_states(run, env)["wo_backbone"][0].redo == ""
    work.baseline_acc_file.write_text(json.dumps({**ACCURACIES, "group1": "0.6000"}))
    assert run_states(run, env)["wo_backbone"][0].redo == "inputs changed: baseline"


# ---- one run at a time on a folder ---------------------------------------------------------------------------------
HOLD = """import sys, time
from utils.pipeline.runlock import holding
with holding(sys.argv[1], "wo_backbone"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def python(code, *args, env=None):
    """A Python process of this repository running `code`, its environment without a run's hold but for `env`'s."""
    env = {**{k: v for k, v in os.environ.items() if k != HELD}, **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, text=True,
                            env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_second_run_on_a_held_folder_names_the_holder_and_stops(demo_root, work, monkeypatch, capsys):
    holder = python(HOLD, work.run_lock, 60)
    try:
        assert holder.stdout.readline() == "held\n"
        before = contents(work.work_dir)
        env = env_for(demo_root, work.work_dir, TASK_IDS="1")
        with pytest.raises(UserError) as e:
            run_stage("wo_backbone", "demo", env)
        message = str(e.value)
        assert message.startswith(f"another run of this config works on {work.work_dir}: pid {holder.pid} on "
                                  f"{socket.gethostname()}, running wo_backbone since ")
        assert f"holds {work.run_lock}; wait for it to end or stop it, then rerun" in message and "\n" not in message
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert run_main(run_stage_main, ["run_all", "demo"]) == 1                   # the script: exit 1
        assert_one_sentence(capsys.readouterr().err, 1, f"pid {holder.pid}", "running wo_backbone since")
        run = Run.from_environment("demo", env)                                # status reads it, takes nothing
        assert f"\na run holds this folder: pid {holder.pid} on {socket.gethostname()} since " in report(run, {})
        assert contents(work.work_dir) == before
    finally:
        holder.kill()
        holder.wait()
    assert work.run_lock.is_file() and "a run holds" not in report(run, {})   # a dead process holds nothing
    with holding(work.run_lock, "baseline"):
        assert json.loads(work.run_lock.read_text())["pid"] == os.getpid()
    assert not work.run_lock.exists()                                         # a run leaves no lock file behind


def test_the_processes_of_one_run_share_its_hold(work):
    """GPUS workers and torchrun ranks inherit the hold through the environment; another process does not."""
    child = """import os, sys
from utils.errors import UserError
from utils.pipeline.runlock import HELD, holding
with holding(sys.argv[1], "worker"):
    print("inherited", flush=True)
os.environ.pop(HELD)
try:
    with holding(sys.argv[1], "another run"):
        print("taken")
except UserError as e:
    print(e)
"""
    with holding(work.run_lock, "baseline"):
        out, _ = python(child, work.run_lock, env={HELD: os.environ[HELD]}).communicate(timeout=60)
    assert out.splitlines()[0] == "inherited"
    assert f"pid {os.getpid()} on {socket.gethostname()}, running baseline since" in out.splitlines()[1]


def test_nproc_holds_the_lock_while_the_ranks_run(demo_root, work, monkeypatch):
    seen = []

    def launch(nproc, command):
        seen.append((os.environ.get(HELD), json.loads(work.run_lock.read_text())["pid"]))
        return 0

    monkeypatch.setattr(tools.run_stage, "launch", launch)
    for k, v in env_for(demo_root, work.work_dir, NPROC="2").items():
        monkeypatch.setenv(k, v)
    assert run_main(run_stage_main, ["baseline", "demo"]) == 0
    assert seen == [(str(work.run_lock.resolve()), os.getpid())] and not work.run_lock.exists()
