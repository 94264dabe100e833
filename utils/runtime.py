"""Device choice, seeding and logging set-up shared by every entry point."""
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def select_device(name="auto"):
    """'auto' = CUDA when available, else CPU; 'cpu', 'cuda' or 'cuda:N' force one."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA GPU is available: use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name} is not a device name: use auto, cpu, cuda or cuda:N.") from None


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
    """Root logger to stdout and (appended) to `log_path`, in the original's format (spec §6.7)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers = [logging.StreamHandler(sys.stdout)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    for h in handlers:
        h.setFormatter(formatter)
        root.addHandler(h)
    return root


def add_common_arguments(parser):
    parser.add_argument("--data_root", default=None,
                        help="folder the config's relative paths resolve against (default: $MMPAB_DATA_ROOT or data/)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=2, help="random seed")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    return parser
