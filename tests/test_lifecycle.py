"""The task lifecycle and the typed settings: a manifest records the settings object whole, a rerun compares only
what decides the result, says in one line why it redoes a task, and work recorded by an earlier version of the
repository is redone once with a line saying so."""
import json
import shutil

import pytest

from tests.conftest import env_for
from utils.errors import UserError
from utils.layout import Layout
from utils.manifest import Manifest
from utils.pipeline import SETTINGS, run_stage, stage_settings
from utils.pipeline.settings import BaselineSettings, script_defaults


@pytest.fixture
def work(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "work")


def baseline_manifest(work):
    return Manifest(Layout(work, "demo").baseline("group1").manifest)


def test_every_stage_variable_has_its_default_in_its_script_and_nowhere_else():
    for stage, cls in SETTINGS.items():
        written = script_defaults(stage)
        assert {name for _, name in cls.variables()} <= set(written), stage
        assert cls.from_environment({}).record() == cls.parse(written).record()


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
