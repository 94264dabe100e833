"""Files other people can read, logs that read well in files, and tasks on two processes (torchrun, NPROC=2)
matching one process with the same global batch, a user error in them printed once."""
import os
import shutil
import stat
from pathlib import Path

import torch

from tests.conftest import REPO, assert_one_sentence, curves, env_for, run_script
from utils.checkpoint import atomic_write, load_checkpoint
from utils.config import load_dataset_config
from utils.layout import Layout
from utils.manifest import task_checkpoint
from utils.pipeline import run_stage


def test_written_files_get_the_permissions_of_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "record.txt", lambda f: f.write(b"{}"))
        os.umask(0o002)
        atomic_write(tmp_path / "shared.txt", lambda f: f.write(b"{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "record.txt").stat().st_mode) == 0o644      # not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o664


def test_progress_in_a_file_is_one_line_per_epoch_not_a_redrawn_bar(demo_root, tmp_path, capfd, monkeypatch,
                                                                     caplog):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)             # as a user's run: output to a file, not a terminal
    caplog.set_level("INFO")
    run_stage("baseline", "demo", env_for(demo_root, tmp_path, TASK_IDS="1", FINETUNE_EPOCHS="3"))
    out, err = capfd.readouterr()
    assert "\r" not in out and "\r" not in err                    # no bar redrawn into the file
    log = Layout(tmp_path, "demo").baseline("group1").log.read_text()
    assert log.count("In train()-> Train Ep. #") == 3


def test_two_processes_under_torchrun_match_one_process_and_a_user_error_is_printed_once(tiny_run, demo_root,
                                                                                         tmp_path):
    """NPROC=2 runs the stage under torchrun (gloo on CPU): each rank takes half of every global batch of 16, and
    only rank 0 writes. One launch for both properties (each start of the ranks costs seconds): tasks 1 and 5 train,
    then task 8, whose data has a fourth class folder, fails in both ranks with a user error that is printed once, as
    one sentence, without the launcher's summary."""
    data = Path(shutil.copytree(demo_root, tmp_path / "data"))
    for split in ("train", "test"):
        group8 = load_dataset_config("demo", data).task_folder("group8", split)
        shutil.copytree(group8 / "top", group8 / "bottom")
    work = tmp_path / "work"
    work.mkdir()
    env = {"OMP_NUM_THREADS": "1", "NPROC": "2", **env_for(data, work, TASK_IDS="1 5 8")}
    proc = run_script(["bash", str(REPO / "run_pickaback" / "baseline.sh"), "demo"], cwd=work, env=env)
    both = proc.stdout + proc.stderr
    sentence = "task group8 has 4 class"
    assert both.count(sentence) == 1, both
    assert_one_sentence(proc.stderr, proc.returncode, "stage baseline, task 8 (group8)", sentence)
    assert proc.returncode == 1 and "ChildFailedError" not in both and "Traceback" not in both
    for group in ("group1", "group5"):
        two = load_checkpoint(task_checkpoint(Layout(work, "demo").baseline(group).root, "-"))
        one = load_checkpoint(task_checkpoint(Layout(tiny_run, "demo").baseline(group).root, "-"))
        for key, tensor in one["model_state_dict"].items():
            assert torch.allclose(two["model_state_dict"][key].float(), tensor.float(), atol=1e-5), key
    # only rank 0 wrote: one log line per epoch in the task's train.log, not two
    log = Layout(work, "demo").baseline("group1").log.read_text()
    assert log.count("In train()-> Train Ep. #1 ") == 1
    for group in ("group1", "group5"):                             # and one training curve per step, by rank 0
        step = Layout(work, "demo").logs / "tensorboard" / "baseline" / "demo" / group / "baseline"
        assert len(list(step.glob("events.out.tfevents.*"))) == 1
        assert [e for e, _ in curves(step)["val/accuracy"]] == [1]
