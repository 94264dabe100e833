"""Units of work in parallel: GPUS="0 1 2 3" runs one worker per entry, RAY_ADDRESS one per GPU of a Ray cluster,
each taking the next unit (a task of a stage, or a part of the backbone search's targets) when it is free, so that
every unit runs exactly as it would alone. The executor knows no stage: it is handed the units (what, environment)
and the function that runs one unit, and hands them to the engine it is given: Ray (utils/engines/ray_units.py,
through utils.engines.units.run_units), which the commands pass; this package imports no engine. Shared files are
updated under locks by the stages."""
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.errors import PARENT_REPORTS, UserError

log = logging.getLogger("root")

# The engine (Ray: utils/engines/ray_units.py, imported only when it is needed, so that a run on one device starts
# and imports nothing of it) keeps one worker per GPUS entry, or per GPU of the cluster at RAY_ADDRESS, up for the
# whole stage and hands it the next unit as soon as it is free, so uneven tasks (widening, early pruning stops) keep
# every GPU busy and Python/torch start once per worker, not once per task. Its signature:
#     engine(name, units, run_unit, own, clock, workers)
# with `workers` either [LocalWorker] (a local instance with exactly those workers) or a Cluster to join.


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


def core_share(workers):
    """The cores of this machine a worker gets when `workers` share them: an equal share, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def worker_environment(env, device, workers, own=()):
    """The process environment of a worker: the stage environment (which wins over the process's own values of the
    variables `own`, the settings), no GPUS, its device, and a fair share of the cores of this machine (of
    `workers` sharing it; None: a cluster's, whose workers take the CPUs Ray gives them) unless OMP_NUM_THREADS is
    set. The run-lock hold is inherited (utils/pipeline/runlock.py). A Ctrl-C is reported by the parent alone."""
    base = dict(os.environ)
    if env is not os.environ:              # an explicit stage environment: what is read only from it (the
        base = {k: v for k, v in base.items() if k not in own}            # settings) comes only from it
        base.update(env)
    if workers:
        base.setdefault("OMP_NUM_THREADS", str(core_share(workers)))
    return {**base, "GPUS": "", "DEVICE": device, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8",
            PARENT_REPORTS: "interrupts"}


@dataclass(frozen=True)
class Cluster:
    """An existing Ray cluster: its `address` (host:port, or auto), the workers' environment, the GPUs of a unit
    (GPUS_PER_UNIT) and the folders every node must see (the work folder, the data root)."""
    address: str
    environment: dict
    gpus_per_unit: float
    folders: list


@dataclass(frozen=True)
class LocalWorker:
    """A worker of one GPUS entry on this machine: its name in the log (`label`), its process environment, the CPUs
    Ray reserves for it and its GPU index ("" on the CPU)."""
    label: str
    environment: dict
    cpus: int
    gpu: str


def parallel(env, entries):
    """Whether a stage's units go to Ray: two or more GPUS entries, or a cluster at RAY_ADDRESS."""
    return len(entries) > 1 or bool(env.get("RAY_ADDRESS"))


def local_workers(env, entries, own):
    """One LocalWorker per GPUS entry: a GPU entry sees only its GPU (Ray sets CUDA_VISIBLE_DEVICES), so its device
    is cuda:0; each has a fair share of the cores."""
    labels = [e if entries.count(e) == 1 else f"{e}#{i + 1}" for i, e in enumerate(entries)]
    workers = []
    for label, entry in zip(labels, entries, strict=True):
        device = entry_device(entry)
        gpu = "" if device == "cpu" else device.removeprefix("cuda:")
        workers.append(LocalWorker(label, worker_environment(env, "cuda:0" if gpu else "cpu", len(entries), own),
                                   core_share(len(entries)), gpu))
    return workers


def run_parallel(name, units, run_unit, env, entries, engine, own=(), clock=None, folders=()):
    """Run `units` ([Unit]) of stage `name` on Ray: one worker per GPUS entry on this machine, or, with RAY_ADDRESS,
    one per GPU of that cluster (one per node on a cluster without GPUs), each calling `run_unit(environment)` (a
    function Ray can send to it) for the next unit when it is free. Each worker's output lines are printed whole,
    prefixed (gpu <entry> pid=...). The first failing unit stops the stage: the other workers are stopped (their
    unfinished tasks are redone by a rerun) and a UserError names the stage, the unit and the worker's error, with
    its exit code. A KeyboardInterrupt goes on to the entry point, which prints one line, after Ray is stopped.
    `clock` (the run's, utils/pipeline/context.py) says where the stage stands as each unit is handed out;
    `folders` (the work folder, the data root) must be seen by every node of a cluster. `engine` runs them (see
    above); None where the caller has none (a function calling run_stage directly): one sentence."""
    if not units:
        log.info(f"{name}: nothing to run")
        return
    if engine is None:
        raise UserError(f"stage {name}: GPUS with two or more entries or RAY_ADDRESS needs Ray, which the commands "
                        f"(run_pickaback/*.sh, tools/run_stage.py) bring: run the stage through one of them.")
    address = str(env.get("RAY_ADDRESS") or "")
    if address:
        workers = Cluster(address, worker_environment(env, "cpu", None, own), gpus_per_unit(env),
                          [Path(f) for f in folders])
    else:
        workers = local_workers(env, entries[:len(units)], own)
    engine(name, units, run_unit, own, clock, workers)


def gpus_per_unit(env):
    """GPUS_PER_UNIT: the GPUs of a cluster that one unit takes (a positive number; 1 unless set)."""
    text = str(env.get("GPUS_PER_UNIT") or "1")
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise UserError(f"GPUS_PER_UNIT={text!r} is not a positive number of GPUs: give e.g. 1, 2 or 0.5.")
    return value
