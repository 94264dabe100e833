"""Device choice, seeding and logging set-up shared by every entry point."""
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def select_device(name="auto", amp=False):
    """'auto' = CUDA when available, else CPU; 'cpu', 'cuda' or 'cuda:N' force one. With `amp` (bf16 mixed
    precision asked for), a GPU without bf16 (before Ampere) is a UserError."""
    from utils.distributed import local_device_index, world_size
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
    from utils.distributed import is_main_process
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


def add_common_arguments(parser):
    parser.add_argument("--data_root", default=None,
                        help="folder the config's relative paths resolve against (default: $MMPAB_DATA_ROOT or data/)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=2, help="random seed")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument("--amp", action="store_true",
                        help="bf16 mixed precision (autocast) on CUDA, and on the CPU where PyTorch supports it")
    return parser


def add_task_arguments(parser, expname):
    """The task and optimisation flags both trainers share, with the original's names."""
    parser.add_argument("--arch", default="perceiver_io", choices=["perceiver_io"], help="network architecture")
    parser.add_argument("--expname", default=expname, help="experiment name (used in log messages)")
    parser.add_argument("--modality", choices=["image", "text"], default=None,
                        help="task modality; taken from the config when omitted, an error if it contradicts it")
    parser.add_argument("--dataset_config", default="oxford", help="section of utils/dataset_config.yaml")
    parser.add_argument("--dataset", required=True, help="task (group) name, e.g. group1")
    parser.add_argument("--num_classes", type=int, default=-1, help="classes of the task; -1 = the config's")
    parser.add_argument("--lr", type=float, default=1e-2, help="SGD learning rate of the weights")
    parser.add_argument("--weight_decay", type=float, default=4e-5, help="L2 on the task's own linear weights")
    parser.add_argument("--batch_size", type=int, default=32, help="training batch size")
    parser.add_argument("--val_batch_size", type=int, default=100, help="evaluation batch size")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs")
    from utils.trainer import RECIPES               # (utils.trainer imports this module)
    parser.add_argument("--recipe", default=RECIPES[0], choices=RECIPES,
                        help="original: SGD (momentum 0.9, Nesterov) at --lr, x0.1 at 50%% and 80%% of the epochs; "
                             "fast: Adam with linear warm-up and cosine decay, learns in far fewer epochs "
                             "(README, 'A recipe that learns fast')")
    return parser


@dataclass
class TaskData:
    """One task's config, modality, device, loaders and number of classes, loaded once and reused by its steps."""
    cfg: object
    task: str
    modality: str
    device: torch.device
    train_loader: object
    test_loader: object
    num_classes: int
    amp: bool = False                       # bf16 autocast in training and evaluation


def load_task(cfg, task, *, batch_size, val_batch_size=100, workers=0, seed=2, device="auto", num_classes=-1,
              modality=None, epochs=1, train_per_class=0, amp=False):
    """A task's data and device from the config; user mistakes become UserErrors."""
    from utils.data import task_loaders
    actual = cfg.modality(task)
    if modality and modality != actual:
        raise UserError(f"--modality {modality} contradicts utils/dataset_config.yaml, where task "
                        f"{task} of '{cfg.name}' is {actual}: drop --modality or fix the config.")
    if epochs < 1:
        raise UserError(f"--epochs {epochs} must be at least 1.")
    device = select_device(device, amp)
    seed_everything(seed)
    train_loader, test_loader, found = task_loaders(cfg, task, batch_size, val_batch_size, workers, seed, device,
                                                    train_per_class)
    num_classes = cfg.num_classes if num_classes < 0 else num_classes
    if num_classes != found:
        raise UserError(f"task {task} has {found} class folders in {cfg.task_folder(task, 'train')} but "
                        f"{num_classes} classes are configured: fix num_classes in utils/dataset_config.yaml "
                        f"or --num_classes.")
    return TaskData(cfg, task, actual, device, train_loader, test_loader, num_classes, bool(amp))


def prepare_task(args):
    """The config and the TaskData of the task a trainer's flags name."""
    from utils.config import load_dataset_config
    cfg = load_dataset_config(args.dataset_config, args.data_root, check_folders=False)
    return cfg, load_task(cfg, args.dataset, batch_size=args.batch_size, val_batch_size=args.val_batch_size,
                          workers=args.workers, seed=args.seed, device=args.device, num_classes=args.num_classes,
                          modality=args.modality, epochs=args.epochs, amp=args.amp)
