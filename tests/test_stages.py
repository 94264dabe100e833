"""The stage graph (utils.pipeline): every stage in one process, finished work skipped and never lost, inputs
checked before anything is trained, deleted or rewritten, and a run killed half-way that ends like an
uninterrupted one.

One tiny run of every stage on the demo data (1 epoch per step, one pruning stage; conftest's tiny_run) is shared;
tests that change files work on a copy of it.
"""
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import REPO, env_for, run_killed, run_main, run_script, run_stage_script
from tests.test_cpg import RATIO_CASES
from utils.checkpoint import load_checkpoint, read_json
from utils.config import load_dataset_config
from utils.errors import UserError
from utils.layout import Layout
from utils.manifest import Manifest, task_checkpoint
from utils.pipeline import SETTINGS, run_stage, stage_settings
from utils.pipeline.compacting import choose_ratio

HERE = Layout(Path("."), "demo")
BACKBONES = str(HERE.backbone("group1").root.parent)            # every task's CPG backbone folder
TARGETS = str(HERE.target("group1", "group2").root.parent.parent)  # every target's folder


def checksums(root, below=""):
    """{relative path: sha256} of every file under root/below except logs and locks (they are not results)."""
    base = Path(root) / below
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(base.rglob("*"))
            if p.is_file() and not p.name.endswith((".lock", ".log")) and p.name != "train.csv"}


@pytest.fixture
def copy_of(tiny_run, tmp_path):
    """A copy of conftest's tiny_run that a test may change."""
    return Path(shutil.copytree(tiny_run, tmp_path / "work"))


def layout(work):
    return Layout(Path(work), "demo")


def test_every_stage_writes_its_outputs_and_manifests(tiny_run):
    lay = layout(tiny_run)
    assert set(read_json(lay.baseline_acc_file)) == {f"group{i}" for i in range(1, 9)}
    chosen = set()
    for i in range(1, 9):
        group = f"group{i}"
        record = read_json(lay.backbone(group).record)
        assert set(record) == {"0.0", "0.5"}
        # the chooser's rule (test_cpg's cases) on the record's own numbers (ALLOW_ACC_LOSS 0.001; every backbone is
        # at its max width x1.0)
        expected = choose_ratio(record, float(read_json(lay.baseline_acc_file)[group]), 0.001, True) or "0.0"
        assert read_json(lay.choice_manifest(group))["results"]["ratio"] == expected, (group, record)
        chosen.add(expected)
    assert chosen == {"0.0", "0.5"}                    # the tiny run exercises both outcomes of the rule
    result = lay.result_csv.read_text().splitlines()
    assert result[0] == "target_id,task_id" and len(result) == 9
    summary = lay.target_acc_csv.read_text().splitlines()
    assert summary[0] == "target,backbone,width,target_acc,baseline_acc" and len(summary) == 9


def test_rerun_skips_every_finished_task_and_changes_no_file(copy_of, demo_root, caplog):
    before = checksums(copy_of)                        # a copy: the other xdist worker may be reading tiny_run
    caplog.set_level("INFO")
    run_stage("all", "demo", env_for(demo_root, copy_of))
    assert checksums(copy_of) == before
    skipped = [r.message for r in caplog.records if "skipped (FORCE=1 redoes it)" in r.message]
    assert len(skipped) == 8 * 6                       # every task of every stage
    assert not any("Train Ep." in r.message for r in caplog.records)


def test_a_task_depends_only_on_its_own_seed_not_on_the_tasks_before_it(tiny_run, demo_root, tmp_path):
    run_stage("baseline", "demo", env_for(demo_root, tmp_path, TASK_IDS="3"))
    alone = load_checkpoint(task_checkpoint(layout(tmp_path).baseline("group3").root, "-"))
    after_others = load_checkpoint(task_checkpoint(layout(tiny_run).baseline("group3").root, "-"))
    for key, tensor in after_others["model_state_dict"].items():
        assert torch.equal(alone["model_state_dict"][key], tensor), key


def test_changed_settings_redo_the_task_and_the_next_stage_reads_the_new_checkpoint(copy_of, demo_root):
    lay = layout(copy_of)
    folder = lay.baseline("group1").root
    assert [p.name for p in folder.glob("checkpoint-*")] == ["checkpoint-1.pth.tar"]
    run_stage("baseline", "demo", env_for(demo_root, copy_of, TASK_IDS="1", FINETUNE_EPOCHS="2"))
    assert [p.name for p in folder.glob("checkpoint-*")] == ["checkpoint-2.pth.tar"]     # the old one is replaced
    run_stage("baseline", "demo", env_for(demo_root, copy_of, TASK_IDS="1"))             # back to 1 epoch: redone
    assert [p.name for p in folder.glob("checkpoint-*")] == ["checkpoint-1.pth.tar"]
    # a stale higher-numbered checkpoint left in the folder is never read in place of the one the stage wrote
    shutil.copy(folder / "checkpoint-1.pth.tar", folder / "checkpoint-99.pth.tar")
    assert task_checkpoint(folder, "-") == (folder / "checkpoint-1.pth.tar").resolve()
    (folder / "stage.json").unlink()
    with pytest.raises(UserError, match="holds 2 checkpoints"):
        task_checkpoint(folder, "-")


def test_a_changed_training_file_redoes_exactly_that_task(copy_of, demo_root, tmp_path, caplog):
    """Bytes appended to one training image of group2 (same name, same pixels, another size): a rerun of the
    baseline stage trains group2 again and skips the seven other tasks."""
    data = Path(shutil.copytree(demo_root, tmp_path / "data"))
    image = sorted(load_dataset_config("demo", data).task_folder("group2", "train").rglob("*.png"))[0]
    with open(image, "ab") as f:
        f.write(b"\0" * 8)
    baselines = str(HERE.baseline("group1").root.parent)
    before = checksums(copy_of, baselines)
    caplog.set_level("INFO")
    run_stage("baseline", "demo", env_for(data, copy_of))
    messages = [r.getMessage() for r in caplog.records]
    skipped = {m.split(":")[0] for m in messages if m.endswith(": finished with these settings, skipped (FORCE=1 "
                                                               "redoes it)")}
    assert skipped == {f"baseline task {i} (group{i})" for i in (1, 3, 4, 5, 6, 7, 8)}
    assert any(m.startswith("== baseline: demo task 2 ") for m in messages)
    assert sum("In train()-> Train Ep." in m for m in messages) == 1          # one task, one epoch trained
    changed = {p for p, digest in checksums(copy_of, baselines).items() if before.get(p) != digest}
    assert changed and all("/group2/" in p for p in changed)                 # only group2's files were rewritten
    assert str(Path(baselines) / "group2" / "stage.json") in changed


def test_chooser_checks_the_record_before_replacing_its_choice(copy_of, demo_root, capsys, root_logging):
    lay = layout(copy_of)
    gradual_prune = lay.backbone("group1").gradual_prune
    (gradual_prune / "checkpoint-1_kv_transfer_9.pth.tar").write_bytes(b"k/v file of an earlier choice")
    before = checksums(gradual_prune.parent)
    lay.backbone("group1").record.write_bytes(b"")
    with pytest.raises(UserError, match="record file .*record.txt is empty") as error:
        run_stage("select_pruning_ratio_of_backbone", "demo", env_for(demo_root, copy_of, FORCE="1"))
    assert "select_pruning_ratio_of_backbone, task 1 (group1)" in str(error.value)
    lay.backbone("group1").record.write_text(json.dumps(read_json(lay.backbone("group1").manifest)["results"]
                                               ["record"]))
    assert checksums(gradual_prune.parent) == before                           # nothing was deleted or replaced
    # the one-task tool (its main, in this process) refuses the same way
    from tools.choose_appropriate_pruning_ratio_for_next_task_notrmfiles import main as tool
    lay.backbone("group1").record.write_bytes(b"")
    capsys.readouterr()
    rc = run_main(tool, ["--dataset", "group1", "--pruning_ratio_to_acc_record_file",
                         str(lay.backbone("group1").record), "--baseline_acc_file", str(lay.baseline_acc_file)])
    err = capsys.readouterr().err
    assert rc == 1 and "is empty" in err and "Traceback" not in err
    assert (gradual_prune / "checkpoint-1_kv_transfer_9.pth.tar").is_file()


def test_the_chooser_stage_chooses_as_the_ratio_rules_cases_say(copy_of, demo_root):
    lay = layout(copy_of)
    cases = [case for case in RATIO_CASES if set(case[0]) == {"0.0", "0.5"}]      # the tiny backbones' ratios
    baselines = read_json(lay.baseline_acc_file)
    for n, (record, baseline, at_max_width, _) in enumerate(cases, 1):
        lay.backbone(f"group{n}").record.write_text(json.dumps(record))
        baselines[f"group{n}"] = "%.4f" % baseline
        backbone = lay.backbone(f"group{n}").manifest              # every tiny backbone is at x1.0
        recorded = read_json(backbone)
        recorded["settings"]["max_network_width_multiplier"] = 1.0 if at_max_width else 2.0
        backbone.write_text(json.dumps(recorded))
    lay.baseline_acc_file.write_text(json.dumps(baselines))
    run_stage("select_pruning_ratio_of_backbone", "demo",
              env_for(demo_root, copy_of, TASK_IDS=" ".join(str(n) for n in range(1, len(cases) + 1))))
    for n, (*_, chosen) in enumerate(cases, 1):
        group = f"group{n}"
        assert read_json(lay.choice_manifest(group))["results"]["ratio"] == (chosen or "0.0"), group
        backbone = Manifest(lay.backbone(group).manifest).output(chosen or "0.0")
        placed = lay.backbone(group).gradual_prune / backbone.name
        assert placed.read_bytes() == backbone.read_bytes(), group


@pytest.mark.parametrize("stage, record", [("wo_backbone", str(HERE.backbone("group1").gradual_prune)),
                                           ("w_backbone_MM", TARGETS)])
def test_a_missing_baseline_stops_the_stage_before_any_record_is_touched(copy_of, demo_root, stage, record):
    before = checksums(copy_of, record)
    layout(copy_of).baseline_acc_file.rename(copy_of / "moved.txt")
    with pytest.raises(UserError, match="provide the baseline file") as error:
        run_stage(stage, "demo", env_for(demo_root, copy_of, FORCE="1"))
    assert error.value.exit_code == 3 and f"stage {stage}" in str(error.value)
    assert checksums(copy_of, record) == before


def test_target_stage_checks_every_row_before_training_any(copy_of, demo_root):
    before = checksums(copy_of, TARGETS)
    result = layout(copy_of).result_csv
    result.write_text(result.read_text() + "9,1\n")
    with pytest.raises(UserError, match="names task 9, but config 'demo' has tasks 1..8"):
        run_stage("w_backbone_MM", "demo", env_for(demo_root, copy_of, FORCE="1"))
    assert checksums(copy_of, TARGETS) == before


def test_search_writes_neither_csv_when_one_is_malformed(copy_of, demo_root):
    table, result = layout(copy_of).table_csv, layout(copy_of).result_csv
    before = table.read_bytes()
    result.write_text("target_id,task_id\n1,two\n")
    with pytest.raises(UserError, match="pickaback_demo_result.csv does not hold target_id,task_id rows"):
        run_stage("find_backbone", "demo", env_for(demo_root, copy_of, FORCE="1", TARGET_ID="1"))
    assert table.read_bytes() == before and result.read_text() == "target_id,task_id\n1,two\n"


def test_settings_come_from_the_script_and_the_environment():
    assert stage_settings("wo_backbone", {}).epochs == 100                          # the script's default
    s = stage_settings("wo_backbone", {"EPOCHS": "7", "PRUNING_SCHEDULE": "0.2 0.4"})
    assert s.epochs == 7 and s.pruning_schedule == (0.2, 0.4) and s.batch_size == 16
    with pytest.raises(UserError, match=r"EPOCHS='ten' must be a whole number"):
        stage_settings("w_backbone_MM", {"EPOCHS": "ten"})


def test_every_stage_script_starts_tools_run_stage_with_its_own_name(tmp_path):
    """The bash side of every stage script, without Python (PYTHON: a stub printing its PYTHONPATH and arguments):
    `bash run_pickaback/<stage>.sh demo -x` runs `$PYTHON tools/run_stage.py <stage> demo -x` with the checkout first
    on PYTHONPATH. Their Python side (tools/run_stage.py's main) is run in-process by the tests of each stage;
    baseline.sh and find_backbone.sh are also run whole (test_interrupts_and_os_errors, test_files_and_processes,
    the test below)."""
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\necho "$PYTHONPATH" "$@"\n')
    stub.chmod(0o755)
    scripts = sorted(p for p in (REPO / "run_pickaback").glob("*.sh") if p.name != "common.sh"
                     and "common.sh" in p.read_text())
    assert {p.stem for p in scripts} == {*SETTINGS, "run_all"}
    for script in scripts:
        proc = run_script(["bash", str(script), "demo", "-x"], cwd=tmp_path, env={"PYTHON": str(stub)}, check=True)
        path, *args = proc.stdout.split()
        assert path.split(":")[0] == str(REPO) and args == [str(REPO / "tools" / "run_stage.py"), script.stem, "demo",
                                                              "-x"], (script, proc.stdout)


def test_stage_scripts_run_alone_with_the_original_variables(copy_of, demo_root, monkeypatch, capsys, root_logging):
    """find_backbone.sh called directly, whole, with the original's TARGET_ID; then transfer_kv.sh's Python side
    (tools/run_stage.py's main, in this process; every script's bash side: the test above)."""
    env = env_for(demo_root, copy_of, FORCE="1", TARGET_ID="2,6")
    proc = run_script(["bash", str(REPO / "run_pickaback" / "find_backbone.sh"), "demo"], cwd=copy_of, env=env,
                      check=True)
    assert "Selected backbone for target 6 = (euc)" in proc.stdout
    monkeypatch.chdir(copy_of)
    capsys.readouterr()
    assert run_stage_script(monkeypatch, ["transfer_kv", "demo"],
                            env_for(demo_root, copy_of, TASK_IDS="2 6", FORCE="1")) == 0, capsys.readouterr()
    assert capsys.readouterr().out.count("wrote ") == 2


def test_run_all_killed_during_the_backbone_stage_ends_like_an_uninterrupted_run(tiny_run, demo_root, tmp_path,
                                                                                  monkeypatch, capsys, root_logging,
                                                                                  one_thread):
    work = tmp_path / "work"
    for part in (HERE.baseline("group1").root.parent, HERE.logs):
        shutil.copytree(tiny_run / part, work / part)
    env = env_for(demo_root, work)
    third = layout(work).backbone("group3").root
    run_killed(lambda: run_stage("all", "demo", env),                # in the middle of the backbone stage, task 3
               lambda path, phase, epoch: third in path.parents, tmp_path / "killed.log")
    assert not (third / "stage.json").exists() and (layout(work).backbone("group2").manifest).exists()

    # the rerun: `bash run_pickaback/run_all.sh demo` (its Python side, tools/run_stage.py's main, in this process on
    # one thread, as tiny_run; the scripts' bash side is run in test_stage_scripts_run_alone_with_the_original_...)
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert run_stage_script(monkeypatch, ["run_all", "demo"], env) == 0, capsys.readouterr()
    log = capsys.readouterr().out
    assert "wo_backbone task 2 (group2): finished with these settings, skipped" in log
    assert "== wo_backbone: demo task 3" in log and "wo_backbone task 3 (group3): finished" not in log
    assert checksums(work, BACKBONES) == checksums(tiny_run, BACKBONES)
    assert checksums(work, TARGETS) == checksums(tiny_run, TARGETS)
    assert layout(work).result_csv.read_text() == layout(tiny_run).result_csv.read_text()
    report = layout(work).report(".md")                               # the run ends with the report (tools/report.py)
    assert log.splitlines()[-1] == f"report: {report}" and "| w_backbone_MM | done |" in report.read_text()


def test_a_stage_script_without_baselines_exits_3_with_one_sentence(demo_root, tmp_path, monkeypatch, capsys,
                                                                     root_logging):
    assert run_stage_script(monkeypatch, ["wo_backbone", "demo"], env_for(demo_root, tmp_path, TASK_IDS="1")) == 3
    err = capsys.readouterr().err
    assert err.strip().startswith("error: stage wo_backbone, task 1 (group1): baseline accuracy file")
    assert "Traceback" not in err


def test_entry_point_exit_codes_are_kept(demo_root, tmp_path):
    from CPG_MM_main_normal import main as cpg_main
    assert run_main(cpg_main, ["--dataset_config", "demo", "--data_root", str(demo_root), "--dataset", "group1",
                               "--epochs", "1", "--save_folder", str(tmp_path), "--jsonfile",
                               str(tmp_path / "none.txt")]) == 3


def test_selection_rules_are_compared_apart_from_the_default_run(copy_of, demo_root, caplog):
    lay = layout(copy_of)
    default = {**checksums(copy_of, TARGETS), "csv": lay.target_acc_csv.read_text(),
               "result": lay.result_csv.read_text()}
    # an image and a text target whose candidates train to different accuracies (at x1.0: no widening), so that
    # picking the best of them is a real choice
    env = env_for(demo_root, copy_of, SELECTIONS="similar random scratch oracle", SEEDS="1",
                  TARGET_TRAIN_PER_CLASS="4", TASK_IDS="3 8", MAX_NETWORK_WIDTH_MULTIPLIER="1.0")
    run_stage("compare_selection", "demo", env)
    assert {**checksums(copy_of, TARGETS), "csv": lay.target_acc_csv.read_text(),
            "result": lay.result_csv.read_text()} == default
    rows = pd.read_csv(lay.comparison_csv, keep_default_na=False)
    assert len(rows) == 4 * 2 and set(rows.rule) == {"similar", "random", "scratch", "oracle"}
    picks = pd.read_csv(lay.result_csv)
    pairs = zip(picks.target_id, picks.task_id, strict=True)
    for t, k in [(t, k) for t, k in pairs if t in (3, 8)]:                          # similar = the pick
        row = rows[(rows.rule == "similar") & (rows.target == f"group{t}")].iloc[0]
        assert row.backbone == f"group{k}"
    assert (rows[rows.rule == "scratch"].backbone == "").all()
    # one training per (seed, backbone, target), shared by the rules: 7 candidates + scratch per target
    trained = list((lay.checkpoints / "CPG_compare_selection").rglob("stage.json"))
    assert len(trained) == 2 * 8
    for target, group in rows.groupby("target"):
        # each training's own record (its stage.json), read apart from the comparison table
        seed_dir = lay.comparison(1, "scratch", target).root.parent.parent
        acc = {folder.name: Manifest(folder / target / "stage.json").results()["target_acc"]
               for folder in seed_dir.iterdir() if (folder / target / "stage.json").is_file()}
        candidates = {f"group{k}" for k in range(1, 9)} - {target}
        assert set(acc) == candidates | {"scratch"}
        assert len({acc[k] for k in candidates}) > 1, acc            # the premise: not every candidate ties
        best = max(acc[k] for k in candidates)
        best_ones = {k for k in candidates if acc[k] == best}
        oracle = group[group.rule == "oracle"].iloc[0]              # the best of every candidate's training
        assert oracle.target_acc == pytest.approx(best, abs=1e-9) and oracle.backbone in best_ones
        assert set(oracle.best_backbones.split(";")) == best_ones
        for rule in ("similar", "random"):                         # one training each: its own accuracy
            row = group[group.rule == rule].iloc[0]
            assert row.target_acc == pytest.approx(acc[row.backbone], abs=1e-9), rule
        assert group[group.rule == "scratch"].target_acc.iloc[0] == pytest.approx(acc["scratch"], abs=1e-9)
    caplog.set_level("INFO")
    caplog.clear()
    run_stage("compare_selection", "demo", env)                         # a rerun trains nothing
    assert not any("Train Ep." in r.message for r in caplog.records)


def test_killed_inside_a_task_twice_resumes_to_bit_identical_outputs(demo_root, tmp_path, caplog):
    """SIGKILL during the finetuning of a task, then during one of its pruning steps (each after the first of three
    epochs): each rerun continues from the last epoch's resume state and the task ends exactly as an uninterrupted
    run."""
    longer = dict(TASK_IDS="1", EPOCHS="3", NR_EPOCH_FOR_EACH_PRUNE="3", PRUNING_SCHEDULE="0.3 0.6")
    reference, work = tmp_path / "reference", tmp_path / "work"
    torch.set_num_threads(1)
    run_stage("baseline", "demo", env_for(demo_root, reference, TASK_IDS="1"))
    run_stage("wo_backbone", "demo", env_for(demo_root, reference, **longer))
    for part in (HERE.baseline("group1").root, HERE.logs):
        shutil.copytree(reference / part, work / part)
    lay = layout(work)
    finetuning = lay.backbone("group1").scratch / "resume.pt"            # each step's resume state, in its own folder
    pruning = lay.backbone("group1").prune_stage(0.6) / "resume.pt"
    env = env_for(demo_root, work, **longer)

    def wo_backbone():
        run_stage("wo_backbone", "demo", env)

    run_killed(wo_backbone, lambda path, phase, epoch: path == finetuning and epoch == 1, tmp_path / "1.log")
    out = run_killed(wo_backbone, lambda path, phase, epoch: path == pruning and epoch == 1, tmp_path / "2.log")
    assert "resuming {'kind': 'finetune'" in out
    caplog.set_level("INFO")
    run_stage("wo_backbone", "demo", env)
    assert "resuming {'kind': 'prune', 'initial': 0.3, 'target': 0.6}" in caplog.text
    leftovers = [p.name for p in lay.backbone("group1").root.rglob("*") if p.name in ("resume.pt", "progress.json")]
    assert not leftovers                                         # removed once the task is finished
    backbone = str(HERE.backbone("group1").root)
    assert checksums(work, backbone) == checksums(reference, backbone)


@pytest.mark.parametrize("stage", ["transfer_kv", "w_backbone_MM"])
def test_task_ids_naming_a_target_the_result_csv_lacks_is_one_sentence(copy_of, demo_root, stage):
    lay = layout(copy_of)
    rows = lay.result_csv.read_text().splitlines()
    lay.result_csv.write_text("\n".join(r for r in rows if not r.startswith("3,")) + "\n")
    before = checksums(copy_of)
    with pytest.raises(UserError, match=r"has no row for target\(s\) 3: run run_pickaback/find_backbone.sh demo"):
        run_stage(stage, "demo", env_for(demo_root, copy_of, TASK_IDS="3"))
    assert checksums(copy_of) == before
