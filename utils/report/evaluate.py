"""Measuring the chains: each backbone -> target chain's accuracy matrix, evaluated from its checkpoints.

Forgetting is measured, not assumed: the backbone task is evaluated on its test set from the chosen backbone
checkpoint (A[0, 0]) and again from the target's checkpoint (A[1, 0]), the target task from the target's (A[1, 1]).
A chain whose checkpoints are missing or unreadable, or whose data cannot be loaded, is listed as missing.
"""
import math

from models.build import Network
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.report import metrics
from utils.data import load_task
from utils.trainer import evaluate_task


class Evaluator:
    """Test accuracy of a task from a checkpoint; each task's test data and each (checkpoint, task) is loaded once."""

    def __init__(self, cfg, device, batch_size):
        self.cfg, self.device, self.batch_size = cfg, device, batch_size
        self.loaders, self.done = {}, {}

    def __call__(self, checkpoint, task):
        key = (str(checkpoint), task)
        if key not in self.done:
            if task not in self.loaders:
                self.loaders[task] = load_task(self.cfg, task, batch_size=self.batch_size,
                                               val_batch_size=self.batch_size, device=self.device)
            net = Network.from_checkpoint(load_checkpoint(checkpoint))
            self.done[key] = evaluate_task(net, self.loaders[task])[1]
        return self.done[key]


def measure_chains(c, evaluate):
    """The CL metrics of every target's chain into c.chains; `evaluate` is an Evaluator, None to measure nothing."""
    for target, row in c.targets.items():
        backbone = row["backbone"]
        if row.get("checkpoint") is None:
            c.miss("metrics", target, "no target checkpoint (run w_backbone_MM)")
            continue
        chosen = c.backbones.get(backbone, {}).get("checkpoint")
        if chosen is None:
            c.miss("metrics", target, f"the backbone {backbone} has no chosen checkpoint (choice.json)")
            continue
        if evaluate is None:
            c.miss("metrics", target, "not measured (--no_eval)")
            continue
        try:
            a00 = evaluate(chosen, backbone)
            a10 = evaluate(row["checkpoint"], backbone)
            a11 = evaluate(row["checkpoint"], target)
        except UserError as e:             # an unreadable checkpoint, or the task's data missing
            c.miss("metrics", target, f"cannot evaluate ({type(e).__name__}: {e})")
            continue
        acc = metrics.chain_matrix(a00, a10, a11)
        c.chains[target] = {"backbone": backbone, "A": acc, "acc": metrics.average_accuracy(acc),
                            "forgetting": metrics.forgetting_per_task(acc)[0], "bwt": metrics.bwt_per_task(acc)[0],
                            "fwt": row.get("gain", math.nan)}
