"""Device choice, mixed precision, seeding and logging set-up shared by every stage and entry point."""
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from utils.distributed import is_main_process, local_device_index, world_size
from utils.errors import UserError

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def select_device(name="auto", amp=False):
    """'auto' = CUDA when available, else CPU; 'cpu', 'cuda' or 'cuda:N' force one. With `amp` (bf16 mixed
    precision asked for), a GPU without bf16 (before Ampere) is a UserError."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():                   # under torchrun: this rank's GPU
            device = torch.device(f"cuda:{local_device_index()}" if world_size() > 1 else "cuda")
        else:
            device = torch.device("cpu")
    else:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but no CUDA GPU is available: use --device cpu or auto.")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"--device {name} is not a device name: use auto, cpu, cuda or cuda:N.") from None
    if amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--amp (AMP=1) needs bf16, which {torch.cuda.get_device_name(device)} does not support: "
                        f"drop --amp.")
    return device


def autocast(device, enabled):
    """bf16 mixed precision (torch.autocast) on `device` when `enabled`: matmuls and attention in bf16, reductions
    and the loss in float32, weights and optimiser state in float32 (bf16 needs no loss scaling)."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bool(enabled))


def seed_everything(seed):
    """Seeded runs on CPU reproduce exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def setup_logging(log_path=None):
    """Root logger to stdout and (appended) to `log_path`, in the original's format."""
    root = logging.getLogger()
    root.setLevel(logging.INFO if is_main_process() else logging.WARNING)   # torchrun: rank 0 tells the story
    for h in list(root.handlers):
        root.removeHandler(h)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers = [logging.StreamHandler(sys.stdout)]
    if log_path and is_main_process():                  # under torchrun only rank 0 writes log files
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    for h in handlers:
        h.setFormatter(formatter)
        root.addHandler(h)
    return root
