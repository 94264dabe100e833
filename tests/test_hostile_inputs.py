"""What a hostile rerun feeds the stages ends in one sentence naming the file or link, before anything is trained,
removed or rewritten: JSON files of another shape (valid JSON, not an object), CSVs the project updates with a
malformed row, data links that lead back into their own tree (which the loaders would read again, or without end),
and a GPU named on a machine without CUDA (one warning line).

Each test works on its own copy of the demo data or on files it writes; nothing here trains."""
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import assert_one_sentence, env_for, run_main
from tools.run_stage import main as run_stage_main
from utils.checkpoint import read_json, update_csv, update_json
from utils.data import text_samples
from utils.errors import UserError
from utils.images import image_samples
from utils.layout import Layout
from utils.manifest import Manifest, SearchManifest
from utils.pipeline import executor, run_stage
from utils.pipeline.context import Run

pytestmark = pytest.mark.usefixtures("root_logging")       # (tools/run_stage.py replaces the root handlers)

NOT_OBJECTS = {"[]": "a JSON array", "null": "JSON null", "5": "a JSON number", '"x"': "a JSON string"}
ACCURACIES = '{"group1": "0.5000", "group2": "0.5000", "group5": "0.5000"}'


@pytest.fixture
def data_root(demo_root, tmp_path):
    """A copy of the demo data that a test may break."""
    root = tmp_path / "data"
    shutil.copytree(demo_root / "demo", root / "demo")
    return root


@pytest.fixture
def work(tmp_path):
    """A work folder with a baseline accuracy file."""
    lay = Layout(tmp_path / "work", "demo")
    lay.logs.mkdir(parents=True)
    lay.baseline_acc_file.write_text(ACCURACIES)
    return lay


def contents(root):
    return {p: p.read_bytes() for p in Path(root).rglob("*") if p.is_file() and not p.name.endswith(".log")}


def stops(stage, data_root, work, words, **env):
    """`stage` stops with one UserError sentence containing `words`, and writes or changes no file of the work folder
    (logs aside)."""
    before = contents(work.work_dir)
    with pytest.raises(UserError) as e:
        run_stage(stage, "demo", env_for(data_root, work.work_dir, **env))
    assert "\n" not in str(e.value) and all(str(w) in str(e.value) for w in words), str(e.value)
    assert contents(work.work_dir) == before


def stage_record(path, outputs):
    """A finished task's stage record naming `outputs` ({name: path}), as the stages write it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": {"max_network_width_multiplier": 1.0},
                                "outputs": {k: os.path.relpath(v, path.parent) for k, v in outputs.items()}}))


# ---- JSON files of another shape ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", NOT_OBJECTS)
def test_a_json_file_that_is_not_an_object_is_named_by_every_reader(tmp_path, text):
    path = tmp_path / "acc.txt"
    path.write_text(text)
    message = f"{path} holds {NOT_OBJECTS[text]} instead of a JSON object: fix or delete the file."
    for read in (read_json, lambda p: update_json(p, {"group1": "0.5000"})):
        with pytest.raises(UserError) as e:
            read(path)
        assert str(e.value) == message
    assert path.read_text() == text
    assert read_json(tmp_path / "none", default={}) == {} and read_json(tmp_path) is None    # no file: the default


@pytest.mark.parametrize("stage", ["baseline", "run_all"])
@pytest.mark.parametrize("text", NOT_OBJECTS)
def test_a_baseline_file_of_another_shape_stops_the_stage_before_task_1_is_touched(data_root, work, monkeypatch,
                                                                                 capsys, stage, text):
    work.baseline_acc_file.write_text(text)
    finished = work.baseline("group1").manifest                 # what a retrained task 1 would lose
    stage_record(finished, {})
    before = contents(work.work_dir)
    for k, v in env_for(data_root, work.work_dir).items():
        monkeypatch.setenv(k, v)
    rc = run_main(run_stage_main, [stage, "demo"])
    assert_one_sentence(capsys.readouterr().err, rc, work.baseline_acc_file, NOT_OBJECTS[text])
    assert contents(work.work_dir) == before


@pytest.mark.parametrize("text", NOT_OBJECTS)
def test_a_stage_record_of_another_shape_is_named_before_the_task_is_redone(data_root, work, text):
    record = work.baseline("group1").manifest
    record.parent.mkdir(parents=True)
    record.write_text(text)
    stops("baseline", data_root, work, [record, NOT_OBJECTS[text]], TASK_IDS="1")


@pytest.mark.parametrize("text", NOT_OBJECTS)
def test_a_record_txt_of_another_shape_stops_the_chooser(data_root, work, text):
    scratch = work.backbone("group1").scratch / "checkpoint-1.pth.tar"
    scratch.parent.mkdir(parents=True)
    scratch.write_bytes(b"backbone")
    work.backbone("group1").record.parent.mkdir(parents=True)
    work.backbone("group1").record.write_text(text)
    stage_record(work.backbone("group1").manifest, {"0.0": scratch, "record": work.backbone("group1").record})
    stops("select_pruning_ratio_of_backbone", data_root, work, [work.backbone("group1").record, NOT_OBJECTS[text]],
          TASK_IDS="1")
    assert scratch.read_bytes() == b"backbone"


@pytest.mark.parametrize("text", NOT_OBJECTS)
@pytest.mark.parametrize("stage", ["transfer_kv", "w_backbone_MM"])
def test_a_choice_or_kv_transfer_record_of_another_shape_is_named(data_root, work, stage, text):
    """transfer_kv reads the backbone's choice.json; w_backbone_MM the k/v transfer record of its pair."""
    work.result_csv.write_text("target_id,task_id\n2,1\n")
    bad = work.choice_manifest("group1") if stage == "transfer_kv" else work.kv_manifest("group1", 2)
    bad.parent.mkdir(parents=True)
    bad.write_text(text)
    stops(stage, data_root, work, [bad, NOT_OBJECTS[text]], TASK_IDS="2")


INNER_SHAPES = ['{"settings": 1, "outputs": [1]}', '{"settings": {}, "outputs": {"checkpoint": 1}}',
                '{"settings": {}, "outputs": {}, "files": {"checkpoint": 5}}', '{"settings": {}, "outputs": {}, '
                '"results": []}']


@pytest.mark.parametrize("text", INNER_SHAPES)
def test_a_stage_record_whose_parts_have_another_shape_is_named(data_root, work, text):
    record = work.baseline("group1").manifest
    record.parent.mkdir(parents=True)
    record.write_text(text)
    for read in (Manifest(record).outputs, Manifest(record).results, lambda: Manifest(record).damaged_outputs()):
        with pytest.raises(UserError, match=f"{record} is not a stage record"):
            read()
    stops("baseline", data_root, work, [record, "is not a stage record", "values of another kind"], TASK_IDS="1")


@pytest.mark.parametrize("text", [*NOT_OBJECTS, '{"1": 5}', *(f'{{"1": {inner}}}' for inner in INNER_SHAPES)])
def test_the_search_record_of_another_shape_is_named_and_kept(tmp_path, text):
    path = tmp_path / "pickaback_demo_stage.json"
    path.write_text(text)
    with pytest.raises(UserError, match=str(path)):
        SearchManifest(path, 1).read()
    if text in NOT_OBJECTS:                        # writing another target's entry would replace the whole file
        with pytest.raises(UserError, match=str(path)):
            SearchManifest(path, 2).write({"stage": "find_backbone", "settings": {}}, {})
    assert path.read_text() == text


# ---- CSVs the project updates --------------------------------------------------------------------------------------
TARGET_COLUMNS = ["target", "backbone", "width", "target_acc", "baseline_acc"]
BROKEN_CSVS = {  # name: (content, words of the sentence)
    "an extra field": ("target,backbone,width,target_acc,baseline_acc\ngroup2,group1,1.0,0.9,0.8\n"
                       "group3,group1,1.0,0.9,0.8,oops\n", "Expected 5 fields in line 3, saw 6"),
    "an extra field in every row": ("target,backbone,width,target_acc,baseline_acc\ngroup2,group1,1.0,0.9,0.8,x\n",
                                    "has a row with more fields than its header"),
    "other columns": ("target,acc\ngroup2,0.9\n", "has the columns target,acc instead of target,backbone"),
    "a torn quote": ('target,backbone,width,target_acc,baseline_acc\n"group2,group1\n', "not a readable CSV"),
    "not UTF-8": (b"target,backbone,width,target_acc,baseline_acc\n\xff,group1,1.0,0.9,0.8\n", "not UTF-8"),
    "nothing": ("", "is empty"),
}


@pytest.mark.parametrize("csv", ["w_backbone", "sequence"])
@pytest.mark.parametrize("kind", BROKEN_CSVS)
def test_a_malformed_csv_the_project_updates_is_named_and_left_as_it_is(tmp_path, csv, kind):
    content, words = BROKEN_CSVS[kind]
    lay = Layout(tmp_path, "demo")
    path = lay.target_acc_csv if csv == "w_backbone" else lay.sequence_csv
    path.parent.mkdir(parents=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    row = {"target": "group2", "backbone": "group1", "width": 1.0, "target_acc": 0.9, "baseline_acc": 0.8}
    with pytest.raises(UserError) as e:
        update_csv(path, [row], lambda t: t.target == "group2", TARGET_COLUMNS)
    assert str(e.value).startswith(str(path)) and words in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).endswith(f"correct the file or move it away, then rerun; {path} was not changed.")
    assert path.read_bytes() == (content.encode() if isinstance(content, str) else content)
    assert [p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")] == [path.name]


@pytest.mark.parametrize("stage", ["w_backbone_MM", "sequence"])
def test_a_malformed_csv_stops_its_stage_before_any_training(data_root, work, stage):
    """The stage would train first and fail on the CSV afterwards: it is checked with the other inputs."""
    work.result_csv.write_text("target_id,task_id\n2,1\n")
    path = work.target_acc_csv if stage == "w_backbone_MM" else work.sequence_csv
    path.write_text(BROKEN_CSVS["an extra field"][0])
    stops(stage, data_root, work, [f"stage {stage}, ", path, "Expected 5 fields in line 3, saw 6"], TASK_IDS="2")


def test_a_well_formed_csv_is_still_updated(tmp_path):
    path = tmp_path / "w_backbone_demo_acc.csv"
    path.write_text("target,backbone,width,target_acc,baseline_acc\ngroup2,group1,1.0,0.5,0.8\ngroup3,,1.0,0.7,0.6\n")
    row = {"target": "group2", "backbone": "group1", "width": 1.5, "target_acc": 0.9, "baseline_acc": 0.8}
    update_csv(path, [row], lambda t: (t.target == "group2") & (t.backbone == "group1"), TARGET_COLUMNS)
    assert path.read_text() == ("target,backbone,width,target_acc,baseline_acc\ngroup3,,1.0,0.7,0.6\n"
                                "group2,group1,1.5,0.9,0.8\n")


# ---- data links --------------------------------------------------------------------------------------------------
def image_folder(data_root, group="group1"):
    return data_root / "demo" / "image" / "train" / group


LOOPS = {  # name: (the link, relative to the task's train folder; what it points to)
    "a folder link to its own folder": ("blue/loopdir", "."),
    "a class folder linking the task folder": ("loopclass", "."),
    "a link to a sibling class": ("blue/more_red", "../red"),
    "a file linking itself": ("blue/self.png", "self.png"),
    "a link to a folder above the tree": ("blue/up", "../../.."),
}


@pytest.mark.parametrize("loop", LOOPS)
def test_a_data_link_that_loops_is_refused_by_the_loader_and_the_fingerprint(data_root, tmp_path, loop):
    name, target = LOOPS[loop]
    link = image_folder(data_root) / name
    link.symlink_to(target)
    run = Run.from_environment("demo", env_for(data_root, tmp_path / "work"))
    for read in (lambda: image_samples(image_folder(data_root)), lambda: run.data_settings("group1")):
        with pytest.raises(UserError) as e:
            read()
        assert str(e.value).startswith(f"the link {link} leads ") and "\n" not in str(e.value)
        assert "delete" in str(e.value)
    run.data_settings("group2")                                           # another task's data is not concerned


def test_a_link_that_loops_in_a_text_task_is_refused(data_root):
    folder = data_root / "demo" / "text" / "train" / "group5"
    (folder / "blue" / "loopdir").symlink_to(".")
    with pytest.raises(UserError, match=f"the link {folder / 'blue' / 'loopdir'} leads back into"):
        text_samples(folder)


def test_a_rerun_with_a_loop_in_a_finished_tasks_data_stops_before_training(data_root, work, monkeypatch, capsys):
    """The loop of the report: the fingerprint used to skip the link (task "finished") while FORCE=1 trained on
    41 times the images. Now both name it, and nothing is trained or removed."""
    link = image_folder(data_root) / "blue" / "loopdir"
    link.symlink_to(".")
    stage_record(work.baseline("group1").manifest, {})
    before = contents(work.work_dir)
    for k, v in env_for(data_root, work.work_dir, TASK_IDS="1", FORCE="1").items():
        monkeypatch.setenv(k, v)
    rc = run_main(run_stage_main, ["baseline", "demo"])
    assert_one_sentence(capsys.readouterr().err, rc, f"error: stage baseline, task 1 (group1): the link {link}",
                        "leads back into")
    assert contents(work.work_dir) == before


def test_links_that_lead_out_of_the_tree_are_followed_and_fingerprinted_as_copies(data_root, tmp_path):
    """Data kept elsewhere (the original linked MSCOCO's images into its folders): a linked class folder and a
    linked file count as the files they lead to, so the fingerprint is that of a copy."""
    run = Run.from_environment("demo", env_for(data_root, tmp_path / "work"))
    folder = image_folder(data_root)
    copy_settings, copy_samples = run.data_settings("group1"), image_samples(folder)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(folder / "blue", elsewhere / "blue")
    (folder / "blue").symlink_to(elsewhere / "blue")
    red = sorted((folder / "red").iterdir())[0]
    shutil.move(red, elsewhere / red.name)
    red.symlink_to(elsewhere / red.name)
    assert run.data_settings("group1") == copy_settings
    assert image_samples(folder) == copy_samples


# ---- GPUS on a machine without CUDA ------------------------------------------------------------------------------
@pytest.mark.parametrize("gpus, warned", [("cuda:0", True), ("7", True), ("cpu 1", True), ("cpu cpu", False),
                                          ("", False)])
def test_a_gpu_named_without_cuda_is_one_warning_line(monkeypatch, caplog, gpus, warned):
    monkeypatch.setattr(executor.torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        entries = executor.gpu_entries({"GPUS": gpus})
    assert [executor.entry_device(e) for e in entries] == ["cpu"] * len(entries)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines == ([f"GPUS={gpus!r} names a GPU, but no CUDA GPU is available on this machine: running on the "
                      f"CPU instead"] if warned else [])
