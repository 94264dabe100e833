"""Operating system errors (a full disk, a read-only folder, an I/O error), log files that cannot be written, Ctrl-C,
NPROC and user errors under torchrun, and progress bars in redirected output: each ends in one line, without a
traceback."""
import ast
import errno
import fcntl
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import REPO, assert_one_sentence, env_for, run_main
from utils import distributed, errors
from utils.checkpoint import atomic_write
from utils.errors import INTERRUPTED, PARENT_REPORTS, UserError, report_user_errors
from utils.layout import Layout
from utils.pipeline import lifecycle, run_stage
from utils.runtime import LogFile, setup_logging


def raising(error):
    @report_user_errors
    def main(argv=None):
        raise error
    return main


def script_env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "PYTHON": sys.executable, **extra}


@pytest.fixture
def read_only(monkeypatch):
    """read_only(folder): nothing can be created in `folder` (chmod 0o555). Root ignores permissions, so as root
    creating a file or folder in it fails as it would for a user: EACCES from mkdir, os.open and logging's open."""
    folders = []

    def make(folder):
        folder.mkdir(parents=True, exist_ok=True)
        folders.append(folder.resolve())
        if os.geteuid() != 0:
            folder.chmod(0o555)
        return folder

    def denied(path):
        path = Path(os.fsdecode(path))
        if path.parent.resolve() in folders and not path.exists():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    if os.geteuid() == 0:
        real_mkdir, real_open = os.mkdir, os.open

        def mkdir(path, *args, **kwargs):
            denied(path)
            return real_mkdir(path, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                denied(path)
            return real_open(path, flags, *args, **kwargs)

        def log_open(path, *args, **kwargs):
            denied(path)
            return open(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(logging, "open", log_open, raising=False)   # FileHandler opens through it
    yield make
    for folder in folders:
        folder.chmod(0o755)


# ---- 1. an OSError is one sentence naming the path(s) and the reason ---------------------------------------------
@pytest.mark.parametrize("error, words", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/w/logs"), ["cannot use /data/w/logs",
                                                                          "(Permission denied)", "MMPAB_WORK_DIR"]),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/a.tmp", None, "/mnt/ro/a"),
     ["/mnt/ro/a.tmp and /mnt/ro/a", "(Read-only file system)", "writable folder"]),
    (OSError(errno.ENOSPC, "No space left on device"), ["No space left on device (the error names no file)",
                                                        "free space"]),
])
def test_an_os_error_in_an_entry_point_is_one_sentence_naming_its_paths(capsys, error, words):
    rc = run_main(raising(error), [])
    captured = capsys.readouterr()
    line = assert_one_sentence(captured.err, rc, *words)
    assert rc == 1 and line.endswith("and rerun.") and captured.out == ""


def test_writing_into_a_read_only_folder_is_one_sentence_and_changes_nothing(tmp_path, read_only):
    folder = read_only(tmp_path / "ro")
    for path, reason in [(folder / "record.txt", "(Permission denied)"),               # mkstemp in the folder
                         (folder / "sub" / "record.txt", f"({folder / 'sub'}: Permission denied)")]:   # its mkdir
        with pytest.raises(UserError) as e:
            atomic_write(path, lambda f: f.write(b"{}"))
        assert str(e.value).startswith(f"cannot write {path} {reason}: "), str(e.value)
        assert str(e.value).endswith(f"; {path} was not changed.")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("where", ["write", "replace"])
def test_an_os_error_hidden_in_the_context_of_a_write_names_the_path(tmp_path, monkeypatch, where):
    """torch.save turns the OSError of a failed write into a RuntimeError: the OSError is in its context."""
    path = tmp_path / "checkpoint-1.pth.tar"
    path.write_bytes(b"old")

    def write(f):
        if where == "write":
            try:
                raise OSError(errno.EIO, "Input/output error")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # noqa: B904 (as torch)
        f.write(b"new")

    def replace(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", src, None, dst)

    if where == "replace":
        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(UserError) as e:
        atomic_write(path, write)
    reason = "Input/output error" if where == "write" else "Read-only file system"
    assert str(e.value).startswith(f"cannot write {path} ({reason}): ")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_an_os_error_in_a_gpus_worker_comes_back_as_one_sentence(capsys):
    from utils.engines.ray_units import run_one

    def run_unit(env):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/w/checkpoints")

    outcome = run_one(run_unit, {"TASK_IDS": "1"})
    assert "Traceback" not in capsys.readouterr().out + capsys.readouterr().err
    assert not outcome.ok and outcome.exit_code == 1
    assert outcome.error.startswith("cannot use /data/w/checkpoints (Permission denied)")


# ---- 2. log files ------------------------------------------------------------------------------------------------
class BrokenDisk:
    """A log file's stream on a disk that fails every write with an I/O error."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        raise OSError(errno.EIO, "Input/output error")

    def __getattr__(self, name):
        return getattr(self.stream, name)


def failing_log_files(monkeypatch, kind):
    """Every LogFile opened from now on fails its writes: a full disk (/dev/full) or an I/O error."""
    real_open = LogFile._open

    def full(self):
        return open("/dev/full", "a", encoding=self.encoding)

    monkeypatch.setattr(LogFile, "_open", full if kind == "no space" else lambda self: BrokenDisk(real_open(self)))
    return "No space left on device" if kind == "no space" else "Input/output error"


@pytest.mark.parametrize("kind", ["no space", "i/o error"])
@pytest.mark.parametrize("where", ["setup_logging", "task_log"])
def test_a_log_file_that_cannot_be_written_is_one_sentence_not_a_logging_error(tmp_path, monkeypatch, capfd,
                                                                               root_logging, kind, where):
    reason = failing_log_files(monkeypatch, kind)
    path = tmp_path / "logs" / "train.log"
    log = logging.getLogger("root")
    setup_logging(path if where == "setup_logging" else None)
    with pytest.raises(UserError) as e:
        if where == "setup_logging":
            log.info("epoch 1")
        else:
            with lifecycle.task_log(path):
                log.info("epoch 1")
    assert str(e.value).startswith(f"cannot write the log file {path} ({reason}): ")
    log.info("after the failure: no second error")
    for handler in logging.getLogger().handlers:
        handler.close()                                             # the rest of the failed write: no error
    out, err = capfd.readouterr()
    assert "Logging error" not in out + err and "Traceback" not in out + err


def test_a_stage_whose_log_file_fills_the_disk_stops_with_one_sentence(demo_root, tmp_path, monkeypatch, capsys,
                                                                       root_logging):
    from tools.run_stage import main
    failing_log_files(monkeypatch, "no space")
    for name, value in env_for(demo_root, tmp_path, TASK_IDS="1").items():
        monkeypatch.setenv(name, value)
    rc = run_main(main, ["baseline", "demo"])
    log = Layout(tmp_path, "demo").baseline("group1").log
    assert_one_sentence(capsys.readouterr().err, rc, "stage baseline, task 1 (group1): cannot write the log file", log,
               "(No space left on device)", "free space")
    assert rc == 1


def test_a_log_file_in_a_read_only_folder_is_one_sentence(data_root_ro_args, capsys, root_logging):
    from pickaback_perceiverIO import main
    folder, args = data_root_ro_args
    rc = run_main(main, [*args, "--log_path", str(folder / "search.log")])
    assert_one_sentence(capsys.readouterr().err, rc,
                        f"cannot open the log file {folder / 'search.log'} (Permission denied)")
    rc = run_main(main, [*args, "--log_path", str(folder / "sub" / "search.log")])  # its folder cannot be made
    assert_one_sentence(capsys.readouterr().err, rc, f"cannot use {folder / 'sub'} (Permission denied)")


@pytest.fixture
def data_root_ro_args(demo_root, tmp_path, read_only):
    folder = read_only(tmp_path / "ro")
    return folder, ["--dataset_config", "demo", "--target_id", "2", "--out_dir", str(tmp_path), "--checkpoint_root",
                    str(tmp_path / "none"), "--data_root", str(demo_root), "--device", "cpu"]


def test_a_read_only_task_folder_stops_the_stage_with_one_sentence(demo_root, tmp_path, read_only):
    folder = read_only(Layout(tmp_path, "demo").baseline("group1").root)
    with pytest.raises(UserError) as e:
        run_stage("baseline", "demo", env_for(demo_root, tmp_path, TASK_IDS="1"))
    assert str(e.value).startswith(f"stage baseline, task 1 (group1): cannot open the log file {folder / 'train.log'}"
                                   f" (Permission denied): ")


# ---- 3. Ctrl-C ---------------------------------------------------------------------------------------------------
@pytest.fixture
def sigint_handler():
    """The entry point ignores a second Ctrl-C while it exits: this process's handler is put back afterwards."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def test_ctrl_c_in_an_entry_point_is_one_line_and_exit_130(capsys, monkeypatch, sigint_handler):
    monkeypatch.delenv(PARENT_REPORTS, raising=False)
    assert run_main(raising(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == INTERRUPTED + "\n"
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    monkeypatch.setenv(PARENT_REPORTS, "interrupts")                  # a GPUS worker: its parent says it
    assert run_main(raising(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == ""


def interrupt_when_training(command, env, cwd, started="Train Ep. #", sessions=None):
    """Start `command` in its own process group, press Ctrl-C (SIGINT to the whole group, as a terminal does) once
    its output shows `started`; returns (exit code, output, stderr). Its output goes through a pipe of one page (4096
    bytes) read here a byte at a time up to that line: from the moment it prints that line, the process writes at
    most 4096 bytes more (a dozen epochs' two log lines) before it waits for this test, however loaded the machine.
    `sessions` (a list) gets its session id."""
    ready, out_end = os.pipe()
    fcntl.fcntl(out_end, fcntl.F_SETPIPE_SZ, 4096)
    try:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out_end, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    finally:
        os.close(out_end)
    if sessions is not None:
        sessions.append(proc.pid)
    lines, line = [], b""
    try:
        while (byte := os.read(ready, 1)) and started.encode() not in line:    # the pipe alone holds what follows
            line += byte
            if byte == b"\n":
                lines.append(line.decode())
                line = b""
        os.killpg(proc.pid, signal.SIGINT)
        with os.fdopen(ready, "rb") as rest:
            out = line.decode() + rest.read().decode()
            ready = None
        err = proc.communicate(timeout=120)[1]
    finally:
        if ready is not None:
            os.close(ready)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, "".join(lines) + out, err


def test_ctrl_c_during_a_stage_is_one_line_and_exit_130_and_the_rerun_finishes(demo_root, tmp_path, one_thread):
    # more epochs than the stage can log into the pipe (interrupt_when_training) after its first epoch's line: it is
    # still training when the Ctrl-C comes, however loaded the machine
    settings = env_for(demo_root, tmp_path, TASK_IDS="1", FINETUNE_EPOCHS="30")
    rc, out, err = interrupt_when_training(["bash", str(REPO / "run_pickaback" / "baseline.sh"), "demo"],
                                           script_env(**settings), tmp_path)
    assert "Train Ep. #" in out and "Train Ep. #30 " not in out                # interrupted while training
    assert rc == 130 and err == INTERRUPTED + "\n", (rc, err)
    checkpoint = Layout(tmp_path, "demo").baseline("group1").root / "checkpoint-30.pth.tar"
    assert not checkpoint.exists()
    run_stage("baseline", "demo", settings)                    # the rerun (in this process: no second start-up)
    assert checkpoint.is_file()


# ---- 4. NPROC and torchrun ---------------------------------------------------------------------------------------
# (a user error in the ranks under a real torchrun, printed once: test_files_and_processes, in the launch that
# compares two processes with one)
@pytest.fixture
def no_launch(monkeypatch):
    """tools/run_stage.py's torchrun launch, recorded instead of run."""
    import tools.run_stage
    launched = []
    monkeypatch.setattr(tools.run_stage, "launch", lambda nproc, command: launched.append(nproc) or 0)
    return launched


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_nproc_must_be_a_whole_number_of_at_least_1(monkeypatch, capsys, no_launch, value):
    from tools.run_stage import main
    monkeypatch.setenv("NPROC", value)
    rc = run_main(main, ["baseline", "demo"])
    assert_one_sentence(capsys.readouterr().err, rc, f"NPROC='{value}'", "whole number of at least 1", "environment")
    assert rc == 1 and no_launch == []


@pytest.mark.parametrize("stage", ["baseline", "run_all"])
def test_batch_size_must_split_over_nproc_before_torchrun_starts(monkeypatch, capsys, no_launch, stage):
    from tools.run_stage import main
    monkeypatch.setenv("NPROC", "2")
    monkeypatch.setenv("BATCH_SIZE", "33")
    rc = run_main(main, [stage, "demo"])
    assert_one_sentence(capsys.readouterr().err, rc, "BATCH_SIZE=33 of stage baseline", "not a multiple of NPROC=2")
    assert rc == 1 and no_launch == []
    assert run_main(main, ["find_backbone", "demo"]) == 0 and no_launch == [2]    # it has no batch size


def failure(rank, exitcode, message=None, exit_code=None, timestamp=100):
    """A torchelastic ProcessFailure of rank `rank`, with the error its error file holds (utils.errors.fail)."""
    data = {} if message is None else {"message": message, "timestamp": timestamp, "exit_code": exit_code}
    return SimpleNamespace(local_rank=rank, exitcode=exitcode, error_file_data=data, timestamp=timestamp,
                           message=message or "To enable traceback see: ...")


def test_the_launcher_raises_the_recorded_error_once_with_its_exit_code():
    with pytest.raises(UserError) as e:                               # rank 0's, with its exit code (3)
        distributed.failed_ranks({1: failure(1, 3, "rank 1's", 3, 99), 0: failure(0, 3, "rank 0's", 3)})
    assert (str(e.value), e.value.exit_code) == ("rank 0's", 3)
    with pytest.raises(UserError) as e:                               # rank 0 stopped before it recorded
        distributed.failed_ranks({0: failure(0, -15), 1: failure(1, 1, "rank 1's", 1)})
    assert (str(e.value), e.value.exit_code) == ("rank 1's", 1)
    with pytest.raises(KeyboardInterrupt):                            # Ctrl-C: the ranks exited quietly
        distributed.failed_ranks({0: failure(0, 130), 1: failure(1, -2)})
    assert distributed.failed_ranks({0: failure(0, -15), 1: failure(1, 1)}) == 1   # a crash printed its traceback


@pytest.mark.parametrize("rank, reports, printed", [("1", "all", False), ("0", "all", False), ("1", None, False),
                                                     ("0", None, True)])
def test_a_rank_records_its_error_for_the_launcher(tmp_path, monkeypatch, capsys, rank, reports, printed):
    """Under utils.distributed.launch ("all") the launcher prints; under a plain torchrun rank 0 does."""
    import json
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    if reports:
        monkeypatch.setenv(PARENT_REPORTS, reports)
    else:
        monkeypatch.delenv(PARENT_REPORTS, raising=False)
    assert run_main(raising(UserError("baseline file missing.", exit_code=3)), []) == 3
    assert capsys.readouterr().err == ("error: baseline file missing.\n" if printed else "")
    assert json.loads((tmp_path / "error.json").read_text())["exit_code"] == 3
    assert errors.launched_rank() == rank


# ---- 5. progress bars only on a terminal -------------------------------------------------------------------------
def test_every_progress_bar_draws_only_on_a_terminal():
    """tqdm(..., disable=None): tqdm draws only when its output is a terminal."""
    missing = []
    for path in REPO.rglob("*.py"):
        if {"tests", ".git", ".venv", "venv"} & set(path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "tqdm":
                disable = [k.value for k in node.keywords if k.arg == "disable"]
                if not (disable and isinstance(disable[0], ast.Constant) and disable[0].value is None):
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert missing == []


@pytest.fixture
def tqdm_as_users_run(monkeypatch):
    """tqdm as in a user's run without TQDM_DISABLE: tqdm reads TQDM_* when it is imported (which the tests' own
    TQDM_DISABLE=1 preceded), so its constructor without those defaults is put back too."""
    import tqdm.std
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    init = tqdm.std.tqdm.__dict__["__init__"]
    monkeypatch.setattr(tqdm.std.tqdm, "__init__", getattr(init, "func", init))


def test_the_backbone_search_draws_no_bar_into_redirected_output(monkeypatch, capfd, tqdm_as_users_run):
    from utils_pickaback import candidates as search
    monkeypatch.setattr(search, "profile", lambda model, t, data, settings: t)
    monkeypatch.setattr(search, "score_candidate", lambda profile, candidate: {
        "ddv_cos": 0.5, "ddv_euc": 0.5, "sim_cos": 0.5, "sim_euc": 0.5})
    monkeypatch.setattr(search, "InferenceModel", lambda net, task, *args, **kwargs: SimpleNamespace(task=task))
    targets = [search.Target(t, t, test_data=lambda: None) for t in (2, 3)]
    rows = search.search(targets, [search.Candidate(k, k) for k in (1, 3)], settings=None,
                         networks=search.Networks(open=lambda k, device: SimpleNamespace(history=[k])),
                         compares=lambda target, candidate: candidate.holder != target.task_id)
    assert len(rows) == 3
    out, err = capfd.readouterr()
    for bar in ("profiling targets", "scoring candidates", "\r"):
        assert bar not in out + err


def test_making_the_demo_data_draws_no_bar_into_redirected_output(tmp_path, capfd, tqdm_as_users_run):
    from tools.make_demo_data import main
    assert run_main(main, ["--data_root", str(tmp_path), "--train_per_class", "2", "--test_per_class", "1"]) == 0
    out, err = capfd.readouterr()
    assert "demo tasks" not in out + err and "\r" not in out + err

