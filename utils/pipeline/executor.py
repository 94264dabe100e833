"""Units of work in parallel: GPUS="0 1 2 3" runs one worker process per entry, each taking the next unit (a task
of a stage, or a part of the backbone search's targets) when it is free, so that every unit runs exactly as it
would alone. The executor knows no stage: it is handed the units (what, environment) and the worker command, and
the worker side is handed the function that runs one unit. Shared files are updated under locks by the stages."""
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import torch

from utils.errors import PARENT_REPORTS, UserError, os_error_message

log = logging.getLogger("root")

# The parent (run_parallel) is given the units, after the stage checked every input, and keeps a queue of them and
# one worker per GPUS entry (the command it is given, e.g. `tools/run_stage.py <stage> <cfg> --worker`, which calls
# serve_units below). A worker stays up for the whole stage and is handed the next unit as soon as it is free, so
# uneven tasks (widening, early pruning stops) keep every GPU busy and Python/torch start once per worker, not once
# per task.

WORKER_MARK = "\x1emmpab-worker "            # starts the line a worker reports a task's end with (never a log line)


@dataclass(frozen=True)
class Unit:
    """One unit of a stage's work: what it is in the log and errors (`label`, e.g. "task 3 (group3)") and the
    environment variables that select it for the worker (`env`, e.g. {"TASK_IDS": "3"})."""
    label: str
    env: dict


def gpu_entries(env):
    """The entries of GPUS ("0 1 2 3", "0,1", "cpu cpu"), each 'cpu' or a CUDA device index. GPUs named where CUDA
    is unavailable run on the CPU (entry_device), with one warning, so that nobody expects a GPU run."""
    entries = str(env.get("GPUS") or "").replace(",", " ").split()
    for entry in entries:
        if entry != "cpu" and not re.fullmatch(r"(cuda:)?\d+", entry):
            raise UserError(f"GPUS={env.get('GPUS')!r}: '{entry}' is neither a GPU index nor cpu; give e.g. "
                            f"GPUS=\"0 1 2 3\" or GPUS=\"cpu cpu\".")
    if any(entry != "cpu" for entry in entries) and not torch.cuda.is_available():
        log.warning(f"GPUS={env.get('GPUS')!r} names a GPU, but no CUDA GPU is available on this machine: running on "
                    f"the CPU instead")
    return entries


def entry_device(entry):
    """DEVICE of the worker for one GPUS entry: cuda:<index>, or cpu for 'cpu' or where CUDA is unavailable."""
    if entry == "cpu" or not torch.cuda.is_available():
        return "cpu"
    index = int(entry.removeprefix("cuda:"))
    if index >= torch.cuda.device_count():
        raise UserError(f"GPUS names GPU {index}, but this machine has {torch.cuda.device_count()} GPU(s) (0.."
                        f"{torch.cuda.device_count() - 1}): fix GPUS.")
    return f"cuda:{index}"


def worker_environment(env, device, workers, own=()):
    """The process environment of a worker: the stage environment (which wins over the process's own values of the
    variables `own`, the settings), no GPUS, its device, and a fair share of the cores unless OMP_NUM_THREADS is
    set. A Ctrl-C reaches the worker too; the parent alone says so."""
    base = dict(os.environ)
    if env is not os.environ:              # an explicit stage environment: what is read only from it (the
        base = {k: v for k, v in base.items() if k not in own}            # settings) comes only from it
        base.update(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    base.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))
    return {**base, "GPUS": "", "DEVICE": device, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8",
            PARENT_REPORTS: "interrupts"}


def run_parallel(name, units, command, env, entries, own=(), clock=None):
    """Run `units` ([Unit]) of stage `name` on one worker per GPUS entry, each worker
    started with `command` and taking the next unit when it is free. Each worker's output lines are printed whole,
    prefixed [gpu <entry>]. The first failing unit stops the stage: the other workers are terminated (their
    unfinished tasks are redone by a rerun) and a UserError names the stage, the unit and the worker's error, with
    the worker's exit code. On Ctrl-C (which reaches the workers too: they exit quietly) nothing more of the
    workers' output is printed, and the KeyboardInterrupt goes on to the entry point, which prints one line.
    `clock` (the run's, utils/pipeline/context.py) says where the stage stands as each unit is handed out."""
    if not units:
        log.info(f"{name}: nothing to run")
        return
    entries = entries[:len(units)]
    labels = [e if entries.count(e) == 1 else f"{e}#{i + 1}" for i, e in enumerate(entries)]
    devices = [entry_device(e) for e in entries]
    workers = ", ".join(f"gpu {label} = {device}" for label, device in zip(labels, devices, strict=True))
    log.info(f"{name}: {len(units)} unit(s) on {len(entries)} workers ({workers})")
    events, printing, interrupted = queue.Queue(), threading.Lock(), threading.Event()
    tails = [[] for _ in entries]                                 # each worker's last lines, for its error

    def read(slot, proc):
        try:
            for line in proc.stdout:
                if line.startswith(WORKER_MARK):
                    events.put((slot, json.loads(line[len(WORKER_MARK):])))
                    continue
                line = line.rstrip("\n")
                tails[slot] = (tails[slot] + [line])[-20:]
                with printing:
                    if interrupted.is_set():                      # what a worker says while it stops
                        continue
                    sys.stdout.write(f"[gpu {labels[slot]}] {line}\n")
                    sys.stdout.flush()
        finally:
            events.put((slot, {"exit": proc.wait()}))

    procs, readers, current, pending = [], [], {}, list(units)
    try:
        for slot, device in enumerate(devices):
            proc = subprocess.Popen(command, env=worker_environment(env, device, len(entries), own), encoding="utf-8",
                                    errors="replace", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
            procs.append(proc)
            readers.append(threading.Thread(target=read, args=(slot, proc), daemon=True))
            readers[-1].start()

        def hand_out(slot):
            if pending:
                if clock is not None:
                    log.info(clock.line(len(units) - len(pending) + 1, len(units), workers=len(procs)))
                unit = pending.pop(0)
                current[slot] = (unit, time.time())
                log.info(f"[gpu {labels[slot]}] {name} {unit.label}: started")
                try:
                    procs[slot].stdin.write(json.dumps(unit.env) + "\n")
                    procs[slot].stdin.flush()
                except BrokenPipeError:                           # it died: its exit is reported next
                    pass
            else:
                procs[slot].stdin.close()                         # no more work: the worker ends

        for slot in range(len(procs)):
            hand_out(slot)
        running = len(procs)
        while running:
            slot, event = events.get()
            if event.get("ok"):
                unit, started = current.pop(slot)
                log.info(f"[gpu {labels[slot]}] {name} {unit.label}: done in {time.time() - started:.0f} s")
                if clock is not None:
                    clock.finished(time.time() - started)
                hand_out(slot)
                continue
            if "exit" in event and slot not in current and event["exit"] == 0:
                running -= 1                                      # finished its last unit and ended
                continue
            if "exit" in event:                                   # died without reporting (crash, signal)
                code = event["exit"] if event["exit"] > 0 else 128 - event["exit"] if event["exit"] else 1
                detail = next((line for line in reversed(tails[slot]) if line.strip()), f"exit code {code}")
            else:
                code, detail = event.get("exit_code", 1) or 1, event["error"]
            what = current[slot][0].label if slot in current else "after its last unit"
            prefix = f"stage {name}, {what}: "
            detail = detail[len(prefix):] if detail.startswith(prefix) else detail.removeprefix(f"stage {name}, ")
            raise UserError(f"stage {name}, {what} on gpu {labels[slot]}: {detail.removeprefix('error: ')}",
                            exit_code=code)
    except KeyboardInterrupt:
        interrupted.set()
        raise
    finally:
        for proc in procs:                                        # on failure or interruption: stop the others
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for reader in readers:
            reader.join(timeout=10)


def serve_units(run_unit, stdin=None, stdout=None):
    """The worker side of run_parallel: call `run_unit(environment)` for each unit read from `stdin` (one JSON
    object of environment variables a line, e.g. {"TASK_IDS": "3"}, over this process's environment) and report each
    unit's end on `stdout` as one line WORKER_MARK + JSON. Returns the exit code: 0 at the end of the input, else
    the first failing unit's."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    def report(**result):
        stdout.write(WORKER_MARK + json.dumps(result) + "\n")
        stdout.flush()

    for line in stdin:
        try:
            run_unit({**os.environ, **json.loads(line), "GPUS": ""})
        except UserError as e:
            report(ok=False, error=str(e), exit_code=e.exit_code)
            return e.exit_code
        except OSError as e:                                      # a full disk, a read-only folder: one sentence
            report(ok=False, error=os_error_message(e), exit_code=1)
            return 1
        except Exception as e:                                    # noqa: BLE001 (reported to the parent, then exit)
            traceback.print_exc(file=stdout)
            report(ok=False, error=f"{type(e).__name__}: {e}", exit_code=1)
            return 1
        report(ok=True)
    return 0
