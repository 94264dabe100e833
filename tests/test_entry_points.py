"""The entry points are thin adapters over the stages' per-task functions: the same settings object from their
flags, the same stage.json, and the same resume state, so a task half-trained by a stage script is continued by the
entry point and the other way round, ending bit-identical to an uninterrupted run."""
import hashlib
import json
import shutil

import pytest
import torch

from CPG_MM_main_normal import main as cpg_main
from packnet_main_normal import main as baseline_main
from tests.conftest import env_for, run_main
from utils import trainer
from utils.layout import Layout
from utils.manifest import Manifest, task_checkpoint
from utils.pipeline import run_stage


class KilledError(Exception):
    """Stands for the kill: raised in the middle of a training step, after a resume state was written."""


def interrupt_at(monkeypatch, epoch):
    """Stop the next training step while it validates `epoch`: the resume state then holds epoch - 1."""
    validate = trainer.Trainer.validate

    def stopping(self, at, *args, **kwargs):
        if at == epoch:
            monkeypatch.setattr(trainer.Trainer, "validate", validate)
            raise KilledError
        return validate(self, at, *args, **kwargs)
    monkeypatch.setattr(trainer.Trainer, "validate", stopping)


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def reference(demo_root, tmp_path_factory):
    """An uninterrupted baseline and CPG backbone of task 1 (3 epochs each, no pruning)."""
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("reference")
    env = env_for(demo_root, work, TASK_IDS="1", FINETUNE_EPOCHS="3", EPOCHS="3")
    run_stage("baseline", "demo", env)
    run_stage("wo_backbone", "demo", env)
    return work


def test_a_baseline_interrupted_in_the_stage_is_finished_by_the_entry_point(reference, demo_root, tmp_path,
                                                                            monkeypatch, capsys):
    torch.set_num_threads(1)
    env = env_for(demo_root, tmp_path, TASK_IDS="1", FINETUNE_EPOCHS="3")
    lay, ref = Layout(tmp_path, "demo"), Layout(reference, "demo")
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KilledError):
        run_stage("baseline", "demo", env)
    assert lay.baseline("group1").resume.is_file()
    capsys.readouterr()
    monkeypatch.setenv("MMPAB_WORK_DIR", str(tmp_path))
    run_main(baseline_main, ["--dataset_config", "demo", "--data_root", str(demo_root), "--dataset", "group1",
                             "--epochs", "3", "--batch_size", "16", "--device", "cpu",
                             "--save_folder", str(lay.baseline("group1").root),
                             "--logfile", str(lay.baseline_acc_file)])
    assert "resuming {'kind': 'baseline'} after epoch 1" in capsys.readouterr().out   # (the entry point's log)
    done = task_checkpoint(lay.baseline("group1").root, "-")
    assert sha(done) == sha(task_checkpoint(ref.baseline("group1").root, "-"))
    assert json.loads(lay.baseline_acc_file.read_text()) == json.loads(ref.baseline_acc_file.read_text())
    run_stage("baseline", "demo", env)                        # the entry point's stage.json is the stage's own
    assert "baseline task 1 (group1): finished with these settings, skipped" in capsys.readouterr().out


def test_a_cpg_finetune_interrupted_in_the_entry_point_is_finished_by_the_stage(reference, demo_root, tmp_path,
                                                                                monkeypatch, capsys):
    torch.set_num_threads(1)
    lay, ref = Layout(tmp_path, "demo"), Layout(reference, "demo")
    for part in (ref.baseline("group1").root, ref.logs):
        shutil.copytree(part, tmp_path / part.relative_to(reference))
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KilledError):
        cpg_main(["--mode", "finetune", "--dataset_config", "demo", "--data_root", str(demo_root), "--dataset",
                  "group1", "--epochs", "3", "--batch_size", "16", "--device", "cpu",
                  "--save_folder", str(lay.backbone("group1").scratch), "--jsonfile", str(lay.baseline_acc_file),
                  "--pruning_ratio_to_acc_record_file", str(lay.backbone("group1").record),
                  "--log_path", str(lay.backbone("group1").log)])
    assert (lay.backbone("group1").scratch / "resume.pt").is_file()
    capsys.readouterr()
    run_stage("wo_backbone", "demo", env_for(demo_root, tmp_path, TASK_IDS="1", EPOCHS="3"))
    assert "resuming {'kind': 'finetune', 'width': 1.0} after epoch 1" in capsys.readouterr().out
    finished = Manifest(lay.backbone("group1").manifest)
    reference_manifest = Manifest(ref.backbone("group1").manifest)
    assert sha(finished.output("0.0")) == sha(reference_manifest.output("0.0"))
    assert finished.results() == reference_manifest.results()
    assert not (lay.backbone("group1").scratch / "resume.pt").exists()
