"""The GPU check's stage checks: every stage (tools/run_stage.py all demo) on a small image-only demo run in its own
process, with DEVICE=<--device>, with AMP=1 RECIPE=fast, with NPROC=2 and with GPUS over every GPU. A run passes when
it exits 0 having written every target's row.
"""
import contextlib
import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from tools.gpu_check_runs import CheckError, bf16_supported, slug
from tools.make_demo_data import main as make_demo
from utils.config import REPO_ROOT, load_dataset_config

TINY = {"FINETUNE_EPOCHS": "2", "EPOCHS": "1", "NR_EPOCH_FOR_EACH_PRUNE": "1", "PRUNING_INTERVAL": "1",
        "PRUNING_SCHEDULE": "0.5 0.9", "PROFILE_SIZE": "8", "ITERATIONS": "5", "BATCH_SIZE": "16",
        "CANDIDATES": "same", "AMP": "0", "RECIPE": "original", "FORCE": "0", "TARGET_ID": "all"}


def python_path(env):
    """PYTHONPATH of `env` with the checkout first, so that processes started here import its modules."""
    return os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))


def image_task_ids(cfg):
    return [t for t, g in enumerate(cfg.groups, 1) if cfg.modality(g) == "image"]


def stage_env(env, data_root, work, device, task_ids, **extra):
    """The environment of a stage check: `env` without its own choices of processes and GPUs (NPROC, GPUS), of
    another config file or of a tracker (the default, tensorboard, writes local files only), the tiny settings, the
    data and working folders, DEVICE, the image tasks (TASK_IDS) and `extra`."""
    base = {k: v for k, v in env.items() if k not in ("NPROC", "GPUS", "MMPAB_CONFIG_FILE", "TRACKER")}
    return {**base, **TINY, "PYTHONPATH": python_path(env), "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
            "MMPAB_DATA_ROOT": str(data_root), "MMPAB_WORK_DIR": str(work), "DEVICE": str(device),
            "TASK_IDS": " ".join(map(str, task_ids)), **extra}


def make_stage_data(root):
    """The demo data, 16 training and 6 test samples per class (as the tests'), under `root`; (figure, True)."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        make_demo(["--data_root", str(root), "--train_per_class", "16", "--test_per_class", "6"])
    return f"{time.perf_counter() - start:9.1f} s (demo data, 16 train / 6 test per class, in {root})", True


def stage_check(env, work, tasks, timeout):
    """Every stage (tools/run_stage.py all demo) in its own process with `env`; (figure, seconds)."""
    command = [sys.executable, str(REPO_ROOT / "tools" / "run_stage.py"), "all", "demo"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        output = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                         for x in (e.stdout, e.stderr))
        raise CheckError(f"it did not finish within {timeout} s (--stage-timeout)", output) from None
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        lines = [ln for ln in output.splitlines() if ln.strip()]
        said = next((ln for ln in reversed(lines) if ln.startswith("error: ")), lines[-1] if lines else "no output")
        raise CheckError(f"exit {proc.returncode}: {said[:200]}", output)
    table = Path(work) / "logs_perceiver_io" / "w_backbone_demo_acc.csv"
    rows = list(csv.DictReader(table.open())) if table.is_file() else []
    if len(rows) != len(tasks):
        raise CheckError(f"it ended without error but {table} holds {len(rows)} of {len(tasks)} target rows", output)
    return f"{seconds:9.1f} s wall ({len(tasks)} image tasks, every stage, then the report)", seconds


def run_stage_checks(checks, args, device, out, env):
    """The stage checks: one process, AMP=1 RECIPE=fast, NPROC=2 and GPUS, on a small image-only demo run."""
    data_root = out / "data"
    demo = load_dataset_config("demo", data_root, check_folders=False)
    tasks = image_task_ids(demo)
    print(f"\nstages (tools/run_stage.py all demo: image tasks {', '.join(map(str, tasks))}, {TINY['EPOCHS']}-"
          f"{TINY['FINETUNE_EPOCHS']} epochs per step, in {out}):", flush=True)
    if not checks.run("stage data", lambda: make_stage_data(data_root)):
        return
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    runs = [("stages", {}, None)]
    if not args.quick:
        runs.append(("stages AMP=1 RECIPE=fast", {"AMP": "1", "RECIPE": "fast"},
                     None if bf16_supported(device) else "this GPU has no bf16: AMP=1 is refused"))
    if device.type == "cpu":
        runs += [("stages NPROC=2", {"NPROC": "2"}, None), ("stages GPUS=\"cpu cpu\"", {"GPUS": "cpu cpu"}, None)]
    else:
        one = "one GPU visible" if gpus < 2 else None
        runs += [("stages NPROC=2", {"NPROC": "2", "DEVICE": "cuda"}, one),
                 (f"stages GPUS=\"{' '.join(map(str, range(max(gpus, 2))))}\"",
                  {"GPUS": " ".join(map(str, range(gpus)))}, one)]
    for name, extra, skipped in runs:
        if skipped:
            checks.skip(name, skipped)
            continue
        work = out / slug(name)
        stage = stage_env(env, data_root, work, extra.get("DEVICE", device), tasks, **extra)
        checks.run(name, lambda e=stage, w=work: stage_check(e, w, tasks, args.stage_timeout))

