"""Resuming inside a task: a training step's whole state (network and masks, optimisers, schedulers' positions,
the pruner's step, every random stream, the epoch) written at the end of every epoch and read back by a rerun with
the same settings, so that a killed run ends bit-identical to an uninterrupted one."""
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from models import cpg
from utils import distributed
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import UserError

log = logging.getLogger("root")


def rng_state(data):
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate(), "loader": data.train_loader.generator.get_state()}


def set_rng_state(state, data):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
    data.train_loader.generator.set_state(state["loader"])


class Resume:
    """A task's resumable state: written atomically at the end of every epoch of every training step (the network
    with its masks, the optimisers, the schedulers' positions, the pruner's step, every random stream, the epoch),
    read back when the task is redone with the same settings, and removed by the stage once the task is finished.
    `progress` is what the stage finished before the current step (its record so far, the files it wrote); the
    stage reads it back to skip those steps."""

    def __init__(self, path, settings):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))
        self.progress = {}

    def load(self, mmap=False):
        """The saved state if it was written with the same settings, else None; `mmap` maps its tensors instead of
        reading them (a reader of its small entries: the phase, the optimiser's settings)."""
        if not self.path.is_file():
            return None
        try:
            state = load_checkpoint(self.path, mmap=mmap)
        except UserError as e:
            log.warning(f"ignoring the resume state: {e}")
            return None
        return state if isinstance(state, dict) and state.get("settings") == self.settings else None

    def restore(self, phase, net, objects, data):
        """Load the saved state into `net` and `objects` (optimisers, schedulers, pruner) if it was saved in `phase`;
        returns (epochs done, train accuracy, test accuracy), (0, 0.0, 0.0) when there is nothing to resume."""
        state = self.load()
        if state is None or state["phase"] != phase:
            return 0, 0.0, 0.0
        net.model.load_state_dict(state["net"]["model_state_dict"])
        cpg.load_masks(net.model, state["net"]["masks"])
        net.shared_owners = dict(state["net"]["shared_owners"])
        for name, obj in objects.items():
            if obj is None:
                continue
            if isinstance(obj, torch.optim.lr_scheduler.LRScheduler):      # the position only: lambdas are code
                obj.last_epoch = int(state["objects"][name])
                obj._last_lr = [group["lr"] for group in obj.optimizer.param_groups]
            else:
                obj.load_state_dict(state["objects"][name])
        set_rng_state(state["rng"], data)
        log.info(f"resuming {phase} after epoch {state['epoch']} from {self.path}")
        return int(state["epoch"]), float(state["train_acc"]), float(state["val_acc"])

    def save(self, phase, epoch, net, objects, data, train_acc, val_acc):
        state = {"settings": self.settings, "phase": phase, "progress": self.progress, "epoch": int(epoch),
                 "net": net.state(epoch=epoch, dataset_config=data.cfg.name, text_encoder=data.cfg.text_encoder),
                 "objects": {name: (obj.last_epoch if isinstance(obj, torch.optim.lr_scheduler.LRScheduler)
                                    else obj.state_dict()) for name, obj in objects.items() if obj is not None},
                 "rng": rng_state(data), "train_acc": float(train_acc), "val_acc": float(val_acc)}
        save_checkpoint(state, self.path)

    def clear(self):
        if distributed.is_main_process():
            self.path.unlink(missing_ok=True)
