"""No typo may cost finished work: every value is checked before anything is read, trained, deleted or rewritten;
numbers read from files the user may edit are finite and in range; a skip verifies what it skips; a task's record is
removed only once its inputs have passed their checks."""
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, env_for
from utils.checkpoint import read_json
from utils.errors import UserError
from utils.layout import Layout
from utils.manifest import Manifest
from utils.pipeline import SETTINGS, run_stage
from utils.pipeline.settings import ANYTHING


@pytest.fixture
def work(tiny_run, tmp_path):
    return Path(shutil.copytree(tiny_run, tmp_path / "work"))


def snapshot(folder):
    """Every file under `folder` with its size and modification time (logs and locks aside)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*")
            if p.is_file() and not p.name.endswith((".log", ".lock"))}


def layout(work):
    return Layout(work, "demo")


# ---- every setting has a range, checked before anything is touched ---------------------------------------------
def test_every_numeric_setting_has_a_range_that_refuses_nan_and_infinity():
    for cls in SETTINGS.values():
        for f, name in cls.variables():
            if f.metadata["parse"] in (int, float):
                valid = f.metadata["valid"]
                assert valid is not ANYTHING, f"{cls.STAGE} {name} has no range"
                if f.metadata["parse"] is float:
                    assert not any(valid.holds(v) for v in (math.nan, math.inf, -math.inf)), name


BAD_VALUES = [  # (stage, variable, value, words of the range)
    ("wo_backbone", "EPOCHS", "0", ">= 1"), ("wo_backbone", "EPOCHS", "-1", ">= 1"),
    ("wo_backbone", "NR_EPOCH_FOR_EACH_PRUNE", "0", ">= 1"), ("baseline", "INIT_LR", "nan", "finite number > 0"),
    ("baseline", "INIT_LR", "-1", "> 0"), ("find_backbone", "ITERATIONS", "-3", ">= 0"),
    ("find_backbone", "EPSILON", "inf", "finite number > 0"), ("wo_backbone", "TOTAL_NUM_TASKS", "0", ">= 1"),
    ("wo_backbone", "PRUNING_INTERVAL", "0", ">= 1"), ("wo_backbone", "PRUNING_SCHEDULE", "0.5 0.2", "increasing"),
    ("wo_backbone", "PRUNING_SCHEDULE", "1.5", "inside (0, 1)"), ("baseline", "BATCH_SIZE", "0", ">= 1"),
    ("w_backbone_MM", "BATCH_SIZE", "-5", ">= 1"), ("w_backbone_MM", "WIDTH_STEP", "0", "> 0"),
    ("w_backbone_MM", "WIDTH_STEP", "-0.5", "> 0"), ("select_pruning_ratio_of_backbone", "ALLOW_ACC_LOSS", "nan",
                                                       "[0.0, 1.0]"),
    ("find_backbone", "SELECTION", "similiar", "one of similar, original"), ("baseline", "DEVICE", "gpu0", "cuda:N"),
    ("all", "WEIGHT_DECAY", "-1e-4", ">= 0"),
]


def test_a_value_out_of_its_range_is_one_sentence_and_changes_no_file(work, demo_root):
    before = snapshot(work)
    for stage, name, value, words in BAD_VALUES:
        with pytest.raises(UserError) as error:
            run_stage(stage, "demo", env_for(demo_root, work, **{name: value}))
        message = str(error.value)
        assert message.startswith(f"{name}={value!r} must be ") and words in message, message
        assert "run_pickaback/" in message and message.count(": ") == 1, message
        assert snapshot(work) == before, (name, value)


def test_a_maximum_width_below_the_start_is_refused_before_the_targets_records_are_touched(work, demo_root):
    records = sorted(layout(work).checkpoints.rglob("stage.json"))
    with pytest.raises(UserError, match=r"MAX_NETWORK_WIDTH_MULTIPLIER=0.5 must be >= NETWORK_WIDTH_MULTIPLIER=1.0"):
        run_stage("w_backbone_MM", "demo", env_for(demo_root, work, MAX_NETWORK_WIDTH_MULTIPLIER="0.5", FORCE="1"))
    assert sorted(layout(work).checkpoints.rglob("stage.json")) == records


@pytest.mark.parametrize("name, value, words", [("TASK_IDS", "9", "'9' is not one"),
                                                ("TASK_IDS", "1 x", "'x' is not one"),
                                                ("TARGET_ID", "0", "'0' is not one"),
                                                ("FORCE", "maybe", "must be 1")])
def test_task_ids_and_force_are_checked(work, demo_root, name, value, words):
    before = snapshot(work)
    with pytest.raises(UserError) as error:
        run_stage("find_backbone", "demo", env_for(demo_root, work, **{name: value}))
    assert name in str(error.value) and words in str(error.value)
    assert snapshot(work) == before


def test_run_all_checks_every_stages_settings_before_the_first_stage(work, demo_root):
    before = snapshot(work)
    with pytest.raises(UserError, match="ITERATIONS='-3'"):                  # find_backbone's, the 4th stage
        run_stage("all", "demo", env_for(demo_root, work, ITERATIONS="-3", FORCE="1"))
    assert snapshot(work) == before


# ---- numbers read from files the user may edit --------------------------------------------------------------------
@pytest.mark.parametrize("value", ["NaN", "7", "-0.5"])
def test_a_baseline_accuracy_out_of_range_stops_the_chooser_before_it_replaces_anything(work, demo_root, value):
    lay = layout(work)
    accs = read_json(lay.baseline_acc_file)
    lay.baseline_acc_file.write_text(json.dumps({**accs, "group1": value}))
    before = snapshot(work)
    with pytest.raises(UserError) as error:
        run_stage("select_pruning_ratio_of_backbone", "demo", env_for(demo_root, work, FORCE="1"))
    message = str(error.value)
    assert "group1" in message and str(lay.baseline_acc_file) in message and repr(value) in message
    assert "[0, 1]" in message
    assert snapshot(work) == before


@pytest.mark.parametrize("value", ["NaN", "1e9"])
def test_a_record_accuracy_out_of_range_stops_the_chooser_before_it_replaces_anything(work, demo_root, value):
    record = layout(work).backbone("group2").record
    data = read_json(record)
    record.write_text(json.dumps({**data, "0.5": value}))
    before = snapshot(work)
    with pytest.raises(UserError) as error:
        run_stage("select_pruning_ratio_of_backbone", "demo", env_for(demo_root, work, FORCE="1"))
    assert str(record) in str(error.value) and "0.5" in str(error.value) and repr(value) in str(error.value)
    assert snapshot(work) == before


def test_a_score_that_is_not_finite_in_the_search_table_is_named(work, demo_root):
    table = layout(work).table_csv
    frame = pd.read_csv(table)
    frame.loc[3, "sim_euc"] = float("nan")
    frame.to_csv(table, index=False)
    before = snapshot(work)
    with pytest.raises(UserError, match=r"sim_euc on line 5 of .*pickback_demo_table.csv is nan, not a finite number"):
        run_stage("find_backbone", "demo", env_for(demo_root, work, TARGET_ID="1", FORCE="1"))
    assert snapshot(work) == before


def test_the_report_lists_a_score_that_is_not_finite_in_a_stage_csv(work, demo_root):
    from tools.report import write_report
    table = layout(work).table_csv
    frame = pd.read_csv(table)
    frame.loc[0, "sim_euc"] = float("inf")
    frame.to_csv(table, index=False)
    path, _ = write_report("demo", work, demo_root, evaluate=False)         # listed among what is missing
    assert re.search(r"find_backbone.*sim_euc on line 2 of .*pickback_demo_table.csv is inf, not a finite number",
                     path.read_text())


# ---- a skip verifies what it skips ----------------------------------------------------------------------------------
def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_a_truncated_finished_checkpoint_is_redone_by_its_own_stage_with_a_line_naming_it(work, demo_root, caplog,
                                                                                          one_thread):
    lay = layout(work)
    caplog.set_level("INFO")
    baseline = Manifest(lay.baseline("group3").manifest).output("checkpoint")
    placed = Manifest(lay.choice_manifest("group3")).output("checkpoint")
    pick = int(pd.read_csv(lay.result_csv).set_index("target_id").task_id[4])
    kv = Manifest(lay.kv_manifest(f"group{pick}", 4)).output("checkpoint")
    for path in (baseline, placed, kv):
        good = path.read_bytes()
        truncate(path)
        stage = {baseline: "baseline", placed: "select_pruning_ratio_of_backbone", kv: "transfer_kv"}[path]
        caplog.clear()
        run_stage(stage, "demo", env_for(demo_root, work, TASK_IDS="3" if path != kv else "4"))
        assert f"redone: {path} changed or damaged since it was written" in caplog.text, stage
        assert path.read_bytes() == good, stage                               # made again, the same on the CPU


def test_a_damaged_kv_file_is_named_before_the_targets_record_is_removed(work, demo_root):
    lay = layout(work)
    pick = int(pd.read_csv(lay.result_csv).set_index("target_id").task_id[4])
    kv = Manifest(lay.kv_manifest(f"group{pick}", 4)).output("checkpoint")
    record = lay.target(f"group{pick}", "group4").manifest
    truncate(kv)
    with pytest.raises(UserError, match="is not a readable checkpoint"):
        run_stage("w_backbone_MM", "demo", env_for(demo_root, work, TASK_IDS="4", FORCE="1"))
    assert record.is_file()


def test_a_checkpoint_of_another_depth_stops_the_stages_that_read_it_before_any_record_is_removed(work, demo_root,
                                                                                                   tmp_path,
                                                                                                   monkeypatch):
    sections = yaml.safe_load((REPO / "utils" / "dataset_config.yaml").read_text())
    sections["demo"]["model"]["depth"] = 2
    config = tmp_path / "dataset_config.yaml"
    config.write_text(yaml.safe_dump(sections))
    monkeypatch.setenv("MMPAB_CONFIG_FILE", str(config))
    before = snapshot(work)
    for stage in ("select_pruning_ratio_of_backbone", "find_backbone", "transfer_kv", "w_backbone_MM"):
        with pytest.raises(UserError, match=r"was made with another model configuration \(depth 1 in it but 2 in the "
                                            r"config\)"):
            run_stage(stage, "demo", env_for(demo_root, work))
        assert snapshot(work) == before, stage


def test_the_search_is_redone_when_a_targets_data_changes(work, demo_root, tmp_path, caplog):
    data = Path(shutil.copytree(demo_root, tmp_path / "data"))
    env = env_for(data, work, TARGET_ID="1")
    caplog.set_level("INFO")
    run_stage("find_backbone", "demo", env)
    assert "target 1: finished with these settings, skipped" in caplog.text
    image = sorted((data / "demo" / "image" / "test" / "group1").rglob("*.*"))[0]
    image.write_bytes(image.read_bytes() + b"\0")
    caplog.clear()
    run_stage("find_backbone", "demo", env)
    assert "find_backbone target 1: redone: inputs changed (data)" in caplog.text


def test_the_search_is_redone_when_its_rows_were_removed_from_the_result_csv(work, demo_root, caplog):
    result = layout(work).result_csv
    frame = pd.read_csv(result)
    frame[frame.target_id != 2].to_csv(result, index=False)
    caplog.set_level("INFO")
    run_stage("find_backbone", "demo", env_for(demo_root, work, TARGET_ID="2"))
    assert "find_backbone target 2: redone: what it wrote was changed after it finished" in caplog.text
    assert 2 in pd.read_csv(result).target_id.tolist()


def test_a_search_record_that_is_not_an_object_of_targets_is_one_sentence(work, demo_root):
    layout(work).search_manifest.write_text("[1, 2]")
    with pytest.raises(UserError, match="pickaback_demo_stage.json holds a JSON array instead of a JSON object"):
        run_stage("find_backbone", "demo", env_for(demo_root, work, TARGET_ID="1"))


# ---- entry-point flags --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, words", [(["--epochs", "0"], "--epochs '0' must be a whole number >= 1: change the "
                                                                "flag."),
                                          (["--lr", "nan"], "--lr 'nan' must be a finite number > 0"),
                                          (["--workers", "-1"], "argument --workers: '-1' must be a whole number >= 0"),
                                          (["--val_batch_size", "0"], "'0' must be a whole number >= 1")])
def test_an_entry_point_flag_out_of_range_is_one_sentence_before_any_file_is_written(demo_root, tmp_path, capsys,
                                                                                      root_logging, flags, words):
    from packnet_main_normal import main
    from tests.conftest import run_main
    save = tmp_path / "save"
    code = run_main(main, ["--dataset_config", "demo", "--data_root", str(demo_root), "--dataset", "group1",
                           "--save_folder", str(save), "--baseline_acc_file", str(tmp_path / "acc.txt"), *flags])
    assert code in (1, 2) and words in capsys.readouterr().err
    assert not save.exists() and not (tmp_path / "acc.txt").exists()


def test_a_pruning_stage_must_raise_the_sparsity(capsys, root_logging, tmp_path):
    from CPG_MM_main_normal import main
    from tests.conftest import run_main
    code = run_main(main, ["--dataset_config", "demo", "--dataset", "group1", "--mode", "prune", "--save_folder",
                           str(tmp_path), "--initial_sparsity", "0.5", "--target_sparsity", "0.5",
                           "--jsonfile", str(tmp_path / "acc.txt")])
    err = capsys.readouterr().err
    assert code == 1 and "--target_sparsity 0.5 must be above --initial_sparsity 0.5" in err
