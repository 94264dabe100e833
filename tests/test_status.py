"""tools/status.py: where a run stands, read from its files alone, on a finished demo, on one killed during
wo_backbone (running while it runs, resumable once killed) and on an empty folder."""
import re
import json
import os
import shutil
import subprocess
import sys
import time

import pandas as pd

from tests.conftest import REPO, env_for, run_main, run_script, stopped_at
from tools import status as status_tool
from utils.checkpoint import read_json
from utils.layout import Layout
from utils.manifest import Manifest
from utils.pipeline import run_stage
from utils.pipeline.context import Clock, Run
from utils.pipeline.status import run_states

HERE = Layout(".", "demo")


def states(work, demo_root, **extra):
    env = env_for(demo_root, work, **extra)
    return run_states(Run.from_environment("demo", env), env)


def by_task(tasks):
    return {t.task: t for t in tasks}


def tree(folder):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_a_finished_demo_is_finished_everywhere_with_each_tasks_figure(tiny_run, demo_root):
    before = tree(tiny_run)
    found = states(tiny_run, demo_root)
    assert tree(tiny_run) == before                                       # nothing written, nothing locked
    assert list(found) == ["baseline", "wo_backbone", "select_pruning_ratio_of_backbone", "find_backbone",
                           "transfer_kv", "w_backbone_MM"]
    assert all(len(tasks) == 8 and {t.state for t in tasks} == {"finished"} and not any(t.redo for t in tasks)
               for tasks in found.values())
    lay = Layout(tiny_run, "demo")
    accuracies = read_json(lay.baseline_acc_file)
    for i in range(1, 9):
        group = f"group{i}"
        assert by_task(found["baseline"])[f"task {i} ({group})"].detail == f"accuracy {accuracies[group]}"
        ratio = Manifest(lay.choice_manifest(group)).results()["ratio"]
        assert by_task(found["select_pruning_ratio_of_backbone"])[f"task {i} ({group})"].detail == f"ratio {ratio}"
        record = read_json(lay.backbone(group).record)
        assert by_task(found["wo_backbone"])[f"task {i} ({group})"].detail.startswith(f"record {json.dumps(record)}")
    picks = pd.read_csv(lay.result_csv)
    targets = pd.read_csv(lay.target_acc_csv)
    for t, k in zip(picks.target_id, picks.task_id, strict=True):
        assert by_task(found["find_backbone"])[f"target {t} (group{t})"].detail == f"backbone {k} (group{k})"
        row = targets[targets.target == f"group{t}"].iloc[0]
        detail = by_task(found["w_backbone_MM"])[f"target {t} (group{t}) on backbone {k} (group{k})"].detail
        assert detail.startswith(f"accuracy {row.target_acc} (baseline {row.baseline_acc})")


def test_a_changed_variable_names_the_finished_tasks_the_stages_would_redo(tiny_run, demo_root):
    found = states(tiny_run, demo_root, EPOCHS="2")                       # CPG finetuning: backbones and targets
    for stage in ("wo_backbone", "w_backbone_MM"):
        assert all(t.state == "finished" and t.redo == "settings changed: EPOCHS 1 -> 2" for t in found[stage])
    for stage in ("baseline", "select_pruning_ratio_of_backbone", "find_backbone", "transfer_kv"):
        assert not any(t.redo for t in found[stage]), stage
    found = states(tiny_run, demo_root, DEVICE="auto", TASK_IDS="2")     # the device never redoes work
    assert all([t.task for t in tasks] != [] and not any(t.redo for t in tasks) for tasks in found.values())
    assert [t.task for t in found["baseline"]] == ["task 2 (group2)"]


def test_a_run_killed_during_wo_backbone_shows_running_then_resumable(tiny_run, demo_root, tmp_path):
    work = tmp_path / "work"
    for part in (HERE.baseline("group1").root.parent, HERE.logs):         # the baselines are done
        shutil.copytree(tiny_run / part, work / part)
    longer = dict(EPOCHS="3")
    lay = Layout(work, "demo")
    resume = lay.backbone("group2").scratch / "resume.pt"
    env = env_for(demo_root, work, **longer)
    with stopped_at(lambda: run_stage("wo_backbone", "demo", env),           # a run stopped after task 2's first epoch
                    lambda path, phase, epoch: path == resume, tmp_path / "run.log"):
        running = by_task(states(work, demo_root, **longer)["wo_backbone"])   # killed with SIGKILL afterwards
    task2 = running["task 2 (group2)"]
    assert task2.state == "running" and task2.detail.startswith("pid ") and "finetuning at width x1, after epoch 1" \
        in task2.detail and "of 3" in task2.detail
    assert re.match(r"pid \d+ on \S+, on cpu since ", task2.detail), task2.detail      # the node and the device
    found = states(work, demo_root, **longer)
    backbone = by_task(found["wo_backbone"])
    assert backbone["task 1 (group1)"].state == "finished" and not backbone["task 1 (group1)"].redo
    assert backbone["task 2 (group2)"].state == "resumable"
    assert "finetuning at width x1, after epoch" in backbone["task 2 (group2)"].detail
    assert [backbone[f"task {i} (group{i})"].state for i in range(3, 9)] == ["not started"] * 6
    assert {t.state for t in found["baseline"]} == {"finished"}
    assert {t.state for t in found["select_pruning_ratio_of_backbone"]} == {"not started"}
    assert {t.state for t in found["find_backbone"]} == {"not started"}
    for stage in ("transfer_kv", "w_backbone_MM"):
        assert [(t.task, t.state) for t in found[stage]] == [("every target", "not started")]
        assert "no search result" in found[stage][0].detail
    # a marker whose process is gone and no resume state: interrupted before its first epoch was saved
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    marker = Manifest(lay.backbone("group4").manifest).running
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename, "started": time.time()}))
    assert by_task(states(work, demo_root, **longer)["wo_backbone"])["task 4 (group4)"].state == "interrupted"


def test_status_on_an_empty_folder_says_nothing_started(demo_root, tmp_path, monkeypatch, capsys):
    env = env_for(demo_root, tmp_path)
    proc = run_script([sys.executable, str(REPO / "tools" / "status.py"), "demo"], cwd=tmp_path, env=env, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("status of 'demo' in ")
    assert "stage 1/6 baseline: 8 not started" in lines
    assert "stage 6/6 w_backbone_MM: 1 not started" in lines
    assert not any(tmp_path.iterdir())                                    # it wrote nothing
    monkeypatch.setattr(sys, "argv", [str(REPO / "tools" / "status.py"), "--help"])   # as python names the program
    assert run_main(status_tool.main, None) == 0
    assert capsys.readouterr().out.startswith("usage: status.py")


def test_the_clock_estimates_the_time_left_from_the_tasks_worked_on(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    clock = Clock()
    clock.begin_stage("wo_backbone", 2, 6)
    assert clock.line(1, 4) == ("[stage 2/6 wo_backbone, task 1/4: 0 s so far; no task of this stage finished in "
                                "this run yet, nothing to estimate the time left from]")
    now[0] += 120
    clock.finished(100.0)
    clock.finished(140.0)                                                 # two tasks, 2 min each
    assert clock.line(3, 4) == ("[stage 2/6 wo_backbone, task 3/4: 2 min 00 s so far; about 4 min 00 s left in this "
                                "stage, then 4 later stage(s) (from 2 task(s) worked on in this run, 2 min 00 s each)]")
    assert "about 2 min 00 s left" in clock.line(3, 4, workers=2)         # two workers share what is left
    now[0] += 3 * 3600
    clock.end_stage()
    assert clock.summary() == "time per stage: wo_backbone 3 h 02 min; 3 h 02 min in all"
