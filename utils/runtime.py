"""Device choice, mixed precision, seeding and logging set-up shared by every stage and entry point."""
import logging
import os
import random
import sys
from contextlib import suppress
from pathlib import Path

import numpy as np
import torch

from utils.distributed import is_main_process, local_device_index, world_size
from utils.errors import UserError, os_error_in, os_error_message

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
    deterministic_algorithms()


def deterministic_algorithms():
    """torch.use_deterministic_algorithms(True, warn_only=True). Its public form also sets torch._inductor's
    deterministic flag, importing the whole compiler stack (about 1.5 s at the start of every process that trains:
    each stage script, GPUS worker, torchrun rank and Flower ClientApp process); nothing here compiles, so the
    inductor flag is set only where inductor is already loaded, and the autograd engine's flag, the one eager
    PyTorch reads, always."""
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


class LogFile(logging.FileHandler):
    """A log file (appended to) whose failed write (a full disk, an I/O error) ends the run with one sentence naming
    the file and the reason, instead of logging's "--- Logging error ---" report and a run that goes on without its
    log; a log file that cannot be opened (a read-only folder) is one sentence too. After the first failure the
    handler writes nothing more (the error is on its way to the user)."""

    def __init__(self, path, mode="a"):
        self.failed = False
        try:
            super().__init__(path, mode=mode)
        except OSError as e:
            raise UserError(log_file_error(path, e, "open")) from None

    def emit(self, record):
        if not self.failed:
            super().emit(record)

    def handleError(self, record):                               # noqa: N802 (logging's name)
        error = os_error_in(sys.exc_info()[1])
        if error is None:                                        # e.g. a bad log call: logging's own report
            return super().handleError(record)
        self.failed = True
        raise UserError(log_file_error(self.baseFilename, error, "write")) from None

    def close(self):
        # every record is flushed as it is written, so all that closing can fail to write is the rest of a failed
        # write, which was reported
        with suppress(OSError):
            super().close()


def log_file_error(path, error, doing):
    """The sentence of an OSError while opening or writing the log file `path`."""
    return os_error_message(error, f"{doing} the log file", path)


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
        handlers.append(LogFile(log_path, mode="a"))
    for h in handlers:
        h.setFormatter(formatter)
        root.addHandler(h)
    return root
