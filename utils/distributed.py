"""One task on several processes (torchrun): DistributedDataParallel through the same code path as one process.

Under `torchrun --nproc_per_node N` (the stage scripts: NPROC=N) every rank runs the same stage code on the same
files: the same seeded network, the same masks, the same pruning decisions. Each rank trains on its slice of every
global batch (a DistributedSampler over one seeded permutation per epoch, BATCH_SIZE being the global batch) and
DistributedDataParallel averages the gradients, so N processes compute what one process does with the same global
batch, up to float rounding. Only rank 0 writes files; every write is followed by a barrier, so no rank reads a file
before it is complete. With one process nothing here does anything.
"""
import os

import torch
import torch.distributed as dist

from utils.errors import UserError


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
