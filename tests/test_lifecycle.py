"""The task lifecycle and the typed settings: a manifest records the settings object whole, a rerun compares only
what decides the result, says in one line why it redoes a task, and work recorded by an earlier version of the
repository is redone once with a line saying so; a default changed at the top of a stage script reaches the stage's
settings, every --help that shows it and the entry points' settings (Python repeats none)."""
import json
import re
import shutil

import pytest

import CPG_MM_main_normal
import packnet_main_normal
import pickaback_perceiverIO
import transfer_kv_perceiver_io
from tests.conftest import env_for, run_main
from tools import choose_appropriate_pruning_ratio_for_next_task_notrmfiles as chooser
from tools import run_stage as run_stage_tool
from utils.errors import UserError
from utils.layout import Layout
from utils.manifest import Manifest
from utils.pipeline import SETTINGS, run_stage, stage_settings
from utils.pipeline import settings as settings_module
from utils.pipeline.cli import settings_from
from utils.pipeline.settings import (BackboneSettings, BaselineSettings, ChoiceSettings, SearchSettings,
                                     TransferSettings, script_defaults)


@pytest.fixture
def work(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "work")


def baseline_manifest(work):
    return Manifest(Layout(work, "demo").baseline("group1").manifest)


# A changed value of every stage variable (ARCH has one allowed value): the defaults test writes these into a copy of
# the scripts; a variable missing here fails the test, so a new one is covered too.
CHANGED = {"FINETUNE_EPOCHS": "7", "EPOCHS": "7", "NUM_CLASSES": "3", "INIT_LR": "0.03", "LR_MASK": "0.0003",
           "WEIGHT_DECAY": "0.0005", "BATCH_SIZE": "8", "NETWORK_WIDTH_MULTIPLIER": "1.5",
           "MAX_NETWORK_WIDTH_MULTIPLIER": "3.0", "WIDTH_STEP": "0.25", "PRUNING_LR": "0.002",
           "NR_EPOCH_FOR_EACH_PRUNE": "3", "PRUNING_FREQUENCY": "7", "PRUNING_INTERVAL": "2",
           "PRUNING_SCHEDULE": "0.3 0.6", "TOTAL_NUM_TASKS": "9", "SEED": "5", "DEVICE": "cpu", "AMP": "1",
           "RECIPE": "fast", "ALLOW_ACC_LOSS": "0.02", "TARGET_ID": "2", "CANDIDATES": "cross", "SELECTION": "original",
           "PROFILE_SIZE": "12", "EPSILON": "0.2", "ITERATIONS": "9", "CSV_PATH": "picked.csv",
           "RESULT_CSV": "picked.csv", "ORDER": "random", "FIRST": "2", "START": "similar", "REINIT_FREE": "0",
           "SEEDS": "4 5", "SELECTIONS": "similar scratch", "TARGET_TRAIN_PER_CLASS": "3", "NUM_CLIENTS": "3",
           "TRAIN_PER_CLASS": "4",
           "EXCHANGE": "profile", "ENGINE": "local", "SUPERLINK": "127.0.0.1:9093"}


# The entry points, the settings whose defaults their --help shows, and the variables they have no flag for (CPG's
# prune mode sets the pruning stage's rate and epochs with --lr and --epochs).
ENTRY_POINTS = [(packnet_main_normal, BaselineSettings, ()),
                (CPG_MM_main_normal, BackboneSettings,
                 ("PRUNING_SCHEDULE", "WIDTH_STEP", "PRUNING_LR", "NR_EPOCH_FOR_EACH_PRUNE")),
                (chooser, ChoiceSettings, ()), (pickaback_perceiverIO, SearchSettings, ()),
                (transfer_kv_perceiver_io, TransferSettings, ())]


class SettingsBuiltError(Exception):
    """Raised with the settings an entry point built, before it reads or trains anything."""


@pytest.fixture
def changed_scripts(tmp_path, monkeypatch):
    """A copy of run_pickaback/ in which every stage variable's default is CHANGED, read instead of the original;
    returns the original's {stage: {variable: default}}."""
    original = {stage: script_defaults(stage) for stage in SETTINGS}
    copy = shutil.copytree(settings_module.SCRIPTS, tmp_path / "run_pickaback")
    for stage, cls in SETTINGS.items():
        script = copy / f"{stage}.sh"
        text = script.read_text()
        for _, name in cls.variables():
            if name != "ARCH":
                text, n = re.subn(rf'^{name}="\$\{{{name}:-[^}}]*\}}"', f'{name}="${{{name}:-{CHANGED[name]}}}"',
                                  text, flags=re.M)
                assert n == 1, (stage, name)
        script.write_text(text)
    monkeypatch.setattr(settings_module, "SCRIPTS", copy)
    return original


def test_every_stage_variable_is_set_at_the_top_of_its_script():
    for stage, cls in SETTINGS.items():
        assert {name for _, name in cls.variables()} <= set(script_defaults(stage)), stage


def test_a_default_changed_in_its_script_changes_the_stage_settings(changed_scripts):
    original_defaults = changed_scripts
    for stage, cls in SETTINGS.items():
        original, changed = cls.parse(original_defaults[stage]), stage_settings(stage, {})
        for f, name in cls.variables():
            if name != "ARCH":
                assert getattr(changed, f.name) == f.metadata["parse"](CHANGED[name]) != getattr(original, f.name), \
                    (stage, name)


def test_a_default_changed_in_its_script_changes_every_help_that_shows_it(changed_scripts, capsys, root_logging):
    original_defaults = changed_scripts
    assert run_main(run_stage_tool.main, ["--help"]) == 0
    lines = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    for stage, cls in SETTINGS.items():
        for _, name in cls.variables():
            value = original_defaults[stage][name] if name == "ARCH" else CHANGED[name]
            assert f"{name}={value!r}" in lines[stage], (stage, name)
    for entry, cls, skipped in ENTRY_POINTS:
        assert run_main(entry.main, ["--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        for f, name in cls.variables():
            if f.metadata["flags"] and name not in skipped:
                value = original_defaults[cls.STAGE][name] if name == "ARCH" else CHANGED[name]
                assert f"(default {name}={value!r})" in text, (entry.__name__, name)


@pytest.mark.parametrize("entry, argv, stage", [
    (packnet_main_normal, ["--dataset", "group1", "--save_folder", "f", "--logfile", "acc.txt"], "baseline"),
    (CPG_MM_main_normal, ["--dataset", "group1"], "wo_backbone"),
    (CPG_MM_main_normal, ["--dataset", "group1", "--mode", "prune", "--target_sparsity", "0.5"], "wo_backbone"),
    (CPG_MM_main_normal, ["--dataset", "group1", "--load_checkpoint", "backbone.pth.tar"], "w_backbone_MM"),
    (chooser, ["--dataset", "group1", "--pruning_ratio_to_acc_record_file", "r.txt", "--baseline_acc_file", "b.txt"],
     "select_pruning_ratio_of_backbone"),
    (pickaback_perceiverIO, [], "find_backbone"),
    (transfer_kv_perceiver_io, [], "transfer_kv"),
])
def test_a_default_changed_in_its_script_changes_the_entry_points_settings(changed_scripts, monkeypatch, root_logging,
                                                                          entry, argv, stage):
    def built(*args, **kwargs):
        raise SettingsBuiltError(settings_from(*args, **kwargs))
    monkeypatch.setattr(entry, "settings_from", built)
    with pytest.raises(SettingsBuiltError) as settings:
        entry.main(argv)
    assert settings.value.args[0] == stage_settings(stage, {})


def test_the_manifest_records_the_settings_object_whole(work):
    recorded = baseline_manifest(work).read()
    assert recorded["stage"] == "baseline"
    assert recorded["settings"] == stage_settings("baseline", env_for("-", work)).record()
    assert {"device", "amp", "recipe", "arch"} <= set(recorded["settings"])
    assert set(recorded["inputs"]) == {"data"}


def test_the_device_is_recorded_but_does_not_redo_finished_work(work, demo_root, caplog):
    caplog.set_level("INFO")
    run_stage("baseline", "demo", env_for(demo_root, work, TASK_IDS="1", DEVICE="auto"))
    assert "baseline task 1 (group1): finished with these settings, skipped" in caplog.text


def test_a_changed_setting_redoes_the_task_and_says_which(work, demo_root, caplog):
    caplog.set_level("INFO")
    run_stage("baseline", "demo", env_for(demo_root, work, TASK_IDS="1", INIT_LR="0.02"))
    assert "baseline task 1 (group1): redone: settings changed (INIT_LR 0.01 -> 0.02)" in caplog.text
    assert baseline_manifest(work).read()["settings"]["init_lr"] == 0.02


def test_work_recorded_by_the_previous_version_is_redone_once_with_one_line(work, demo_root, caplog):
    manifest = baseline_manifest(work)
    old = manifest.read()
    # the previous version's stage.json: its hand-kept settings and the inputs in one dict, no format
    legacy = {"settings": {"stage": "baseline", **old["inputs"], "finetune_epochs": 1}, "outputs": old["outputs"],
              "results": old["results"]}
    manifest.path.write_text(json.dumps(legacy))
    caplog.set_level("INFO")
    env = env_for(demo_root, work, TASK_IDS="1")
    run_stage("baseline", "demo", env)
    lines = [r.message for r in caplog.records if "redone" in r.message]
    assert lines == ["baseline task 1 (group1): redone: recorded by an earlier version of this repository "
                     "(stage.json without format 2)"]
    caplog.clear()
    run_stage("baseline", "demo", env)
    assert "finished with these settings, skipped" in caplog.text


def test_a_value_that_does_not_read_as_its_type_is_one_sentence():
    with pytest.raises(UserError, match=r"EPOCHS='ten' must be a whole number"):
        stage_settings("wo_backbone", {"EPOCHS": "ten"})
    with pytest.raises(UserError, match="AMP='maybe'"):
        BaselineSettings.from_environment({"AMP": "maybe"})
