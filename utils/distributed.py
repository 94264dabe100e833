"""One task on several processes (torchrun): DistributedDataParallel through the same code path as one process.

Under `torchrun --nproc_per_node N` (the stage scripts: NPROC=N) every rank runs the same stage code on the same
files: the same seeded network, the same masks, the same pruning decisions. Each rank trains on its slice of every
global batch (a DistributedSampler over one seeded permutation per epoch, BATCH_SIZE being the global batch) and
DistributedDataParallel averages the gradients, so N processes compute what one process does with the same global
batch, up to float rounding. Only rank 0 writes files; every write is followed by a barrier, so no rank reads a file
before it is complete. With one process nothing here does anything.
"""
import logging
import os
import shutil
import signal
import sys
import uuid

import torch
import torch.distributed as dist

from utils.errors import INTERRUPTED_EXIT, PARENT_REPORTS, UserError


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank():
    return dist.get_rank() if world_size() > 1 else 0


def is_main_process():
    """Rank 0 (or the only process): the one that writes files and logs to them."""
    return rank() == 0


def local_device_index():
    return int(os.environ.get("LOCAL_RANK", 0))


def init_from_environment():
    """Join torchrun's process group when this process was started by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl
    on CUDA."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available() and os.environ.get("DEVICE", "auto") != "cpu"
        if cuda:
            torch.cuda.set_device(local_device_index())
        dist.init_process_group("nccl" if cuda else "gloo")


def shutdown():
    """Leave the process group (after the stages: what follows, like the report, is rank 0's alone)."""
    if world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()


def barrier():
    if world_size() > 1:
        dist.barrier()


def all_sum(*values, device="cpu"):
    """The sums over all ranks of a few numbers (the epoch's loss, correct and seen counts)."""
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return tuple(t.tolist())


def wrap(model, device):
    """The model as the training step runs it: DistributedDataParallel on several processes (unused modules: the
    other modality's projection and the other tasks' heads), else the model itself."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def per_rank_batch(batch_size):
    n = world_size()
    if batch_size % n:
        raise UserError(f"BATCH_SIZE={batch_size} (the global batch) is not divisible by the {n} processes: use a "
                        f"multiple of {n}.")
    return batch_size // n


def launch(nproc, command):
    """Run the Python script `command` ([script, arguments...]) on `nproc` processes of this machine, as
    `torchrun --standalone --nproc_per_node=<nproc>` does, and return 0 when every rank succeeded. A user error in
    the ranks (each records it in its torchelastic error file, utils.errors.fail) is raised here as one UserError
    with the rank's exit code: rank 0's, else the first recorded one's. A rank that failed otherwise printed its own
    traceback: its exit code is returned. Ctrl-C raises KeyboardInterrupt (the ranks exit quietly). torchrun's
    launcher summary (its @record ChildFailedError report) and its agent's log lines are left out."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    agent_log = logging.getLogger("torch.distributed.elastic")   # every line of the agent's loggers ends here
    agent_log.addHandler(logging.NullHandler())
    agent_log.propagate = False
    os.environ.setdefault("OMP_NUM_THREADS", "1")                 # as torchrun: one thread a process unless set
    reports = os.environ.get(PARENT_REPORTS)
    os.environ[PARENT_REPORTS] = "all"          # what the ranks inherit: their errors are printed here, once
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-u", *command)
        return 0
    except ChildFailedError as e:
        return failed_ranks(e.failures)
    except SignalException as e:                                  # Ctrl-C or a kill reached the launcher
        if e.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        return 128 + int(e.sigval)
    finally:
        shutil.rmtree(config.logs_specs.root_log_dir, ignore_errors=True)   # the error files, read
        if reports is None:
            os.environ.pop(PARENT_REPORTS)
        else:
            os.environ[PARENT_REPORTS] = reports


def failed_ranks(failures):
    """The exit code of failed ranks ({rank: torchelastic ProcessFailure}), or the UserError one of them
    recorded."""
    recorded = {rank: f for rank, f in failures.items() if isinstance(f.error_file_data.get("message"), str)
                and "exit_code" in f.error_file_data}
    if recorded:
        first = recorded.get(0) or min(recorded.values(), key=lambda f: (f.timestamp, f.local_rank))
        raise UserError(first.message, exit_code=int(first.error_file_data["exit_code"]))
    codes = [f.exitcode for f in failures.values()]
    if INTERRUPTED_EXIT in codes or -signal.SIGINT in codes:
        raise KeyboardInterrupt
    first = min(failures.values(), key=lambda f: (f.exitcode <= 0, f.timestamp, f.local_rank))   # not the killed
    return first.exitcode if first.exitcode > 0 else 128 - first.exitcode
