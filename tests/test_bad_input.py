"""Bad input ends in one sentence naming the file or value and the fix, a non-zero exit, no traceback, and no
changed file: corrupt images and captions, broken or foreign checkpoints, mistyped config values and records,
result CSVs of another config, a full disk, a broken baseline accuracy file.

Each test works on its own copy of the demo data or on files it writes; the demo data are never changed."""
import errno
import io
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from CPG_MM_main_normal import main as cpg_main
from models.build import Network
from packnet_main_normal import main as baseline_main
from pickaback_perceiverIO import main as search_main
from tests.conftest import assert_one_sentence, demo_config_file, env_for, run_main
from utils import checkpoint
from utils import data as data_mod
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.config import load_dataset_config
from utils.data import model_config
from utils.errors import UserError
from utils.images import unreadable_images
from utils.layout import Layout
from utils.manifest import Manifest
from utils.pipeline import run_stage
from utils_pickaback.results import RESULT_COLUMNS, TABLE_COLUMNS, read_rows, write_results

TINY = dict(num_freq_bands=2, max_freq=4.0, depth=1, num_latents=4, latent_dim=16, cross_heads=1,
            cross_dim_head=8, latent_heads=1, latent_dim_head=8, ff_mult=1, text_dim=24, max_text_length=8)


pytestmark = pytest.mark.usefixtures("root_logging")       # (the entry points replace the root handlers)


@pytest.fixture
def data_root(demo_root, tmp_path):
    """A copy of the demo data that a test may break."""
    root = tmp_path / "data"
    shutil.copytree(demo_root / "demo", root / "demo")
    return root


def contents(root):
    return {p: p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def assert_unchanged(before):
    """Every file that existed before is still there with the same bytes (new log files may appear)."""
    assert {p: p.read_bytes() for p in before if p.is_file()} == before


def existing_work(tmp_path):
    """A work folder with a baseline accuracy file and an earlier checkpoint, to check that nothing is rewritten."""
    work = tmp_path / "work"
    (work / "save").mkdir(parents=True)
    (work / "save" / "checkpoint-1.pth.tar").write_bytes(b"earlier checkpoint")
    (work / "acc.txt").write_text('{"group1": "0.5000", "group2": "0.5000", "group5": "0.5000"}')
    return work


def baseline_args(data_root, work, group):
    return ["--dataset_config", "demo", "--dataset", group, "--epochs", "1", "--batch_size", "16",
            "--save_folder", str(work / "save"), "--logfile", str(work / "acc.txt"), "--log_path",
            str(work / "log" / "train.log"), "--data_root", str(data_root), "--device", "cpu"]


def assert_baseline_stops(data_root, tmp_path, capsys, group, *words):
    """The baseline entry point on `group` stops with one sentence containing `words` and rewrites nothing."""
    work = existing_work(tmp_path)
    before = contents(work)
    rc = run_main(baseline_main, baseline_args(data_root, work, group))
    assert_one_sentence(capsys.readouterr().err, rc, *words)
    assert_unchanged(before)


# ---- 1. corrupt images -------------------------------------------------------------------------------------------
def test_a_corrupt_image_is_named_before_training(data_root, tmp_path, capsys):
    bad = data_root / "demo" / "image" / "train" / "group1" / "blue" / "blue_003.png"
    bad.write_bytes(b"\x89PNG garbage, not an image")
    assert_baseline_stops(data_root, tmp_path, capsys, "group1", bad, "cannot be read", "skip_corrupt_images: true")


def test_skip_corrupt_images_leaves_them_out_with_a_warning(data_root, tmp_path, monkeypatch, caplog):
    folder = data_root / "demo" / "image" / "train" / "group1"
    count = len(list(folder.rglob("*.png")))
    bad = folder / "red" / "red_001.png"
    bad.write_bytes(b"garbage")
    monkeypatch.setenv("MMPAB_CONFIG_FILE", str(demo_config_file(tmp_path, skip_corrupt_images=True)))
    cfg = load_dataset_config("demo", data_root)
    with caplog.at_level(logging.WARNING):
        task = data_mod.image_task(cfg, "group1", "train")
    assert len(task) == count - 1 and str(bad) not in [p for p, _ in task.samples]
    assert any(str(bad) in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)
    assert task[0]["x"].shape[0] == 3


def test_an_image_that_fails_to_decode_is_named_when_the_cache_is_built(data_root, tmp_path, monkeypatch):
    """A truncated JPEG passes the cheap check (its header is intact) and fails to decode: the cache build names it
    in a UserError, or leaves it out with skip_corrupt_images: true."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (32, 32), os.urandom(32 * 32 * 3)).save(buf, "JPEG")
    bad = data_root / "demo" / "image" / "train" / "group1" / "blue" / "zz_truncated.jpg"
    bad.write_bytes(buf.getvalue()[:len(buf.getvalue()) * 2 // 3])
    assert unreadable_images([str(bad)]) == {}                            # its header verifies
    with pytest.raises(UserError, match="cannot be read") as e:
        data_mod.image_task(load_dataset_config("demo", data_root), "group1", "train")
    assert str(bad) in str(e.value) and "skip_corrupt_images: true" in str(e.value)
    monkeypatch.setenv("MMPAB_CONFIG_FILE", str(demo_config_file(tmp_path, skip_corrupt_images=True)))
    task = data_mod.image_task(load_dataset_config("demo", data_root), "group1", "train")
    assert str(bad) not in [p for p, _ in task.samples] and len(task) == len(task.images) == len(task.samples)


# ---- 2. captions -------------------------------------------------------------------------------------------------
def test_a_caption_that_is_not_utf8_is_named(data_root, tmp_path, capsys):
    bad = data_root / "demo" / "text" / "train" / "group5" / "blue" / "blue_002.txt"
    bad.write_bytes(b"a blue \xff\xfe shape")
    assert_baseline_stops(data_root, tmp_path, capsys, "group5", bad, "is not UTF-8")


def test_an_empty_caption_is_a_warning_naming_it(data_root, monkeypatch, caplog):
    empty = data_root / "demo" / "text" / "train" / "group5" / "red" / "red_001.txt"
    empty.write_text("  \n")
    monkeypatch.setattr(data_mod, "embed_texts", lambda texts, *a, **k: (torch.zeros(len(texts), 16, 384),
                                                                        torch.ones(len(texts), 16, dtype=torch.bool)))
    with caplog.at_level(logging.WARNING):
        data_mod.text_task(load_dataset_config("demo", data_root), "group5", "train")
    assert any(str(empty) in r.getMessage() and "empty" in r.getMessage() for r in caplog.records)


# ---- 3./4. unreadable checkpoints and checkpoints with pickled code ---------------------------------------------
UNPICKLED = []


class Payload:
    """An object of a class of its own: a weights-only load must refuse it without running its code."""

    def __setstate__(self, state):
        UNPICKLED.append(state)


@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
def test_an_unreadable_checkpoint_is_named(tmp_path, data_root, capsys, kind):
    path = tmp_path / "checkpoint-1.pth.tar"
    save_checkpoint({"a": torch.ones(100)}, path)
    whole = path.read_bytes()
    path.write_bytes({"truncated": whole[:len(whole) // 2], "empty": b"", "text": b"not a checkpoint\n"}[kind])
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert str(e.value) == (f"{path} is not a readable checkpoint (truncated or not a torch file): rerun the stage "
                            f"that writes it.")
    rc = run_main(cpg_main, ["--mode", "inference", "--dataset_config", "demo", "--dataset", "group1",
                             "--load_checkpoint", str(path), "--data_root", str(data_root), "--device", "cpu"])
    assert_one_sentence(capsys.readouterr().err, rc, path, "not a readable checkpoint")


def test_a_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "checkpoint-1.pth.tar"
    torch.save({"model_state_dict": Payload(), "epoch": 1}, path)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert str(path) in message and "pickled code or objects" in message and "Payload" in message
    assert "not executed" in message and "written by this repository" in message
    assert "weights_only" not in message and "\n" not in message and UNPICKLED == []


# ---- 5. checkpoints of another model configuration ---------------------------------------------------------------
def test_a_checkpoint_whose_weights_do_not_fit_its_model_config_lists_the_shapes(tmp_path):
    net = Network.new(dict(TINY))
    net.start_task("group1", "image", 3)
    ckpt = net.state(epoch=1, dataset_config="demo", text_encoder="e")
    ckpt["model_config"] = {**TINY, "latent_dim": 32}
    path = tmp_path / "checkpoint-1.pth.tar"
    save_checkpoint(ckpt, path)
    with pytest.raises(UserError) as e:
        Network.load(path)
    message = str(e.value)
    assert message.startswith(f"{path} was made with another model configuration")
    assert "latents (4, 16) in the checkpoint but (4, 32) here" in message and "more" in message
    assert "utils/dataset_config.yaml" in message and "\n" not in message
    with pytest.raises(UserError, match="lacks model_state_dict"):
        Network.from_checkpoint({"state_dict": {}}, source=path)


def test_a_start_checkpoint_of_another_model_configuration_names_the_keys(data_root, tmp_path, capsys):
    expected = model_config(load_dataset_config("demo", data_root))
    net = Network.new({**expected, "depth": 2, "latent_dim": 32})
    net.start_task("group1", "image", 3)
    start = tmp_path / "backbone.pth.tar"
    save_checkpoint(net.state(epoch=1, dataset_config="demo", text_encoder="e"), start)
    work = existing_work(tmp_path)
    before = contents(work)
    rc = run_main(cpg_main, ["--mode", "finetune", "--dataset_config", "demo", "--dataset", "group2", "--epochs",
                             "1", "--save_folder", str(work / "save"), "--jsonfile", str(work / "acc.txt"),
                             "--load_checkpoint", str(start), "--data_root", str(data_root), "--device", "cpu",
                             "--log_path", str(work / "log" / "train.log")])
    err = capsys.readouterr().err
    assert_one_sentence(err, rc, start, "another model configuration", "depth 2 in it but 1 in the config",
                        "latent_dim 32 in it but 64 in the config")
    assert_unchanged(before)


# ---- 6. mistyped config values and records -----------------------------------------------------------------------
@pytest.mark.parametrize("changes, words", [
    ({"num_classes": "three"}, "num_classes: 'three'"),
    ({"num_groups": "8"}, "num_groups: '8'"),
    ({"mean": ["a", "b", "c"]}, "mean: ['a', 'b', 'c']"),
    ({"resize": "8x8"}, "resize: '8x8'"),
    ({"model": {"depth": "x"}}, "model depth: 'x'"),
    ({"model": {"max_freq": "high"}}, "model max_freq: 'high'"),
    ({"skip_corrupt_images": "yes please"}, "skip_corrupt_images: 'yes please'"),
])
def test_a_mistyped_config_value_names_the_key(data_root, tmp_path, monkeypatch, capsys, changes, words):
    path = demo_config_file(tmp_path, **changes)
    with pytest.raises(UserError) as e:
        load_dataset_config("demo", data_root, config_file=path)
    assert str(e.value).startswith(f"{path}: config 'demo' has {words}:") and "\n" not in str(e.value)
    monkeypatch.setenv("MMPAB_CONFIG_FILE", str(path))
    assert_baseline_stops(data_root, tmp_path, capsys, "group1", path, words)


def backbone_with_record(work, record):
    """Task 1's finished CPG backbone (a manifest naming a checkpoint and `record`) and an earlier choice."""
    lay = Layout(work, "demo")
    lay.logs.mkdir(parents=True)
    lay.baseline_acc_file.write_text('{"group1": "0.5000"}')
    scratch = lay.backbone("group1").scratch / "checkpoint-1.pth.tar"
    scratch.parent.mkdir(parents=True)
    scratch.write_bytes(b"backbone")
    lay.backbone("group1").gradual_prune.mkdir()
    lay.backbone("group1").record.write_text(json.dumps(record))
    Manifest(lay.backbone("group1").manifest).write({"settings": {"max_network_width_multiplier": 1.0}},
                                                    {"0.0": scratch, "record": lay.backbone("group1").record})
    chosen = lay.backbone("group1").gradual_prune / "checkpoint-1.pth.tar"
    chosen.write_bytes(b"earlier choice")
    Manifest(lay.choice_manifest("group1")).write({"stage": "earlier", "settings": {}}, {"checkpoint": chosen})
    return lay


def test_a_record_with_a_non_numeric_accuracy_stops_the_chooser(demo_root, tmp_path):
    work = tmp_path / "work"
    lay = backbone_with_record(work, {"0.0": 0.9, "0.5": "n/a"})
    before = contents(work)
    with pytest.raises(UserError) as e:
        run_stage("select_pruning_ratio_of_backbone", "demo", env_for(demo_root, work, TASK_IDS="1"))
    assert f"the accuracy of sparsity 0.5 in {lay.backbone('group1').record} is 'n/a', not a finite number in " \
           f"[0, 1]" in str(e.value)
    assert_unchanged(before)


# ---- 7. result CSVs naming tasks the config does not have --------------------------------------------------------
def test_a_result_csv_naming_an_unknown_task_is_rejected(data_root, tmp_path, capsys):
    lay = Layout(tmp_path, "demo")
    lay.result_csv.write_text("target_id,task_id\n1,2\n9,1\n")
    lay.table_csv.write_text("target_id,task_id,ddv_cos,ddv_euc,sim_cos,sim_euc\n1,2,0.1,0.1,0.9,0.9\n")
    before = contents(tmp_path)
    assert len(read_rows(lay.result_csv, RESULT_COLUMNS)) == 2                 # without the config's task count
    with pytest.raises(UserError, match="names task id 9, but the config has tasks 1..8"):
        read_rows(lay.result_csv, RESULT_COLUMNS, num_tasks=8)
    table_row = {"target_id": 2, "task_id": 1, "ddv_cos": 0.2, "ddv_euc": 0.2, "sim_cos": 0.8, "sim_euc": 0.8}
    with pytest.raises(UserError, match=str(lay.result_csv)):
        write_results(lay.result_csv, lay.table_csv, [table_row], {2: 1}, num_tasks=8)
    rc = run_main(search_main, ["--dataset_config", "demo", "--target_id", "2", "--out_dir", str(tmp_path),
                                "--checkpoint_root", str(tmp_path / "none"), "--data_root", str(data_root),
                                "--device", "cpu"])
    assert_one_sentence(capsys.readouterr().err, rc, lay.result_csv, "names task id 9", "1..8")
    assert_unchanged(before)
    assert read_rows(lay.table_csv, TABLE_COLUMNS, num_tasks=8).shape == (1, 6)


# ---- 8. disk full while saving -----------------------------------------------------------------------------------
def no_space_message(path):
    return f"no space left on {path.parent} while writing {path.name}: free space and rerun; {path} was not changed."


def fsync_full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


def fdopen_full(fd, mode, real_fdopen=os.fdopen):
    """/dev/full fails every write with ENOSPC; torch.save turns that OSError into a RuntimeError."""
    os.close(fd)
    return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode)


@pytest.mark.parametrize("name, full", [("fsync", fsync_full), ("fdopen", fdopen_full)])
def test_disk_full_while_saving_keeps_the_old_file_and_says_so(tmp_path, monkeypatch, name, full):
    path = tmp_path / "checkpoint-1.pth.tar"
    save_checkpoint({"a": torch.ones(2)}, path)
    old = path.read_bytes()
    monkeypatch.setattr(checkpoint.os, name, full)
    with pytest.raises(UserError) as e:
        save_checkpoint({"a": torch.zeros(10000)}, path)
    assert str(e.value) == no_space_message(path)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == [path.name]


# ---- 9. a broken baseline accuracy file is met before training ---------------------------------------------------
def test_baseline_stage_checks_the_accuracy_file_before_training(demo_root, tmp_path):
    work = tmp_path / "work"
    lay = Layout(work, "demo")
    lay.logs.mkdir(parents=True)
    lay.baseline_acc_file.write_text('{"group1": "0.5')
    before = contents(work)
    with pytest.raises(UserError) as e:
        run_stage("baseline", "demo", env_for(demo_root, work, TASK_IDS="1"))
    assert f"{lay.baseline_acc_file} is not valid JSON" in str(e.value)
    assert_unchanged(before)
    assert not list(work.rglob("*.pth.tar"))


@pytest.mark.parametrize("entry", ["packnet_main_normal", "CPG_MM_main_normal"])
def test_entry_points_check_the_accuracy_file_before_training(data_root, tmp_path, capsys, entry):
    work = existing_work(tmp_path)
    (work / "acc.txt").write_text("group1: 0.5")
    before = contents(work)
    if entry == "packnet_main_normal":
        rc = run_main(baseline_main, baseline_args(data_root, work, "group1"))
    else:
        rc = run_main(cpg_main, ["--mode", "finetune", "--dataset_config", "demo", "--dataset", "group1", "--epochs",
                                 "1", "--save_folder", str(work / "save"), "--jsonfile", str(work / "acc.txt"),
                                 "--data_root", str(data_root), "--device", "cpu", "--log_path",
                                 str(work / "log" / "train.log")])
    assert_one_sentence(capsys.readouterr().err, rc, work / "acc.txt", "is not valid JSON")
    assert_unchanged(before)
    assert [p.name for p in (work / "save").iterdir()] == ["checkpoint-1.pth.tar"]
