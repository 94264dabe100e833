"""The shared train/evaluate work of one epoch (progress bars, CPG per-step constraints, log lines in the
original's format, `train.csv` rows), the one epoch loop every training step runs (`run_epochs`: schedules, pruner,
resume state, curves), and the training steps of one task that the stages and entry points call, each configuring
that loop: a baseline, a CPG finetune, one gradual-pruning stage. Each returns what it decided (`Outcome`) instead
of exiting.
"""
import bisect
import contextlib
import csv
import enum
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import cpg
from utils import distributed, tracking
from utils.checkpoint import checkpoint_path, remove_stale_checkpoints, save_checkpoint
from utils.data import TaskData
from utils.layout import sparsity_key
from utils.runtime import autocast, seed_everything

log = logging.getLogger("root")

# ---- the original's thresholds and schedules (a schedule's milestones: fractions of the step's epochs) ------------
# train accuracy below which the baseline logs "Cannot prune any more!" (the original's packnet_cifar100_main_normal.py)
BASELINE_PRUNABLE_ACC = 0.97
# train accuracy a CPG finetune must exceed to pass and a pruning stage to go on (the original's CPG_MM_main_normal.py)
CPG_TRAIN_ACC = 0.95
# a width this close to the max is at it (the original's CPG_MM_main_normal.py tests width == max; ours adds floats)
WIDTH_TOLERANCE = 1e-9
# the weights' learning rate x0.1 at 50 % and 80 % of the epochs (the original's trainers: epochs 50, 80 of 100)
LR_MILESTONES = (0.5, 0.8)
LR_GAMMA = 0.1
# the piggymask's Adam rate x0.2 at 50 % and x0 at 70 % of the epochs (the original's CPG_MM_main_normal.py: 50, 70)
MASK_MILESTONES = (0.5, 0.7)
MASK_FACTORS = (0.2, 0.0)
# the upper-bound rule's share of the current task: round(1 / (remaining + 1), 1) (the original's CPG_MM_main_normal.py)
UPPER_BOUND_DIGITS = 1


def to_device(batch, device):
    x = batch["x"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True) if "mask" in batch else None
    return x, mask, batch["y"].to(device, non_blocking=True)


class GradualPruner:
    """Cubic sparsity schedule over training steps (Zhu & Gupta, 2017); the last update lands exactly on `end`."""

    def state_dict(self):
        return {"step_count": self.step_count, "last_update": self.last_update}

    def load_state_dict(self, state):
        self.step_count, self.last_update = int(state["step_count"]), int(state["last_update"])

    def __init__(self, net, task, initial, target, begin, end, frequency):
        self.net, self.task = net, task
        self.initial, self.target, self.begin, self.end, self.frequency = initial, target, begin, end, frequency
        self.step_count, self.last_update = begin, begin

    def step(self):
        self.step_count += 1
        t = self.step_count
        if self.begin <= t <= self.end and (t - self.last_update >= self.frequency or t == self.end):
            self.prune(cpg.cubic_sparsity(t, self.begin, self.end, self.initial, self.target))
            self.last_update = t

    def prune(self, sparsity):
        cpg.prune_to(self.net.model, self.net.modalities[self.task], self.net.task_id(self.task), sparsity)


class Trainer:
    def __init__(self, net, task, device, train_loader, test_loader, width_mpl=1.0, csv_path=None, amp=False):
        self.net, self.task, self.device, self.amp = net, task, device, amp
        self.train_loader, self.test_loader = train_loader, test_loader
        self.modality, self.task_id = net.modalities[task], net.task_id(task)
        self.width_mpl = width_mpl
        self.csv_path = Path(csv_path) if csv_path and distributed.is_main_process() else None
        self.forward = None                     # the model as training runs it (DistributedDataParallel on N ranks)

    @property
    def model(self):
        return self.net.model

    def stats(self):
        return cpg.mask_statistics(self.model, self.modality, self.task_id)

    def train_epoch(self, epoch, optimizer, mask_optimizer=None, weight_decay=0.0, pruner=None, step_scheduler=None):
        """One epoch; `step_scheduler` (the fast recipe's warm-up and cosine) steps after every optimiser step.
        Returns (train accuracy, the epoch's values for its curve)."""
        self.net.activate(self.task)
        self.model.train()
        if hasattr(self.train_loader.sampler, "set_epoch"):
            self.train_loader.sampler.set_epoch(epoch)                # this epoch's permutation of the samples
        if self.forward is None:
            self.forward = distributed.wrap(self.model, torch.device(self.device))
        prunable = list(cpg.prunable_layers(self.model).values())      # fixed within an epoch
        used = list(cpg.used_layers(self.model, self.modality).values())
        # summed on the device and read once per epoch: a per-step .item() would make a GPU wait for every step
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        # a bar on a terminal; in a file or CI log the per-epoch log lines below are the progress (disable=None)
        bar = tqdm(self.train_loader, desc=f"{self.task} train ep {epoch}", leave=False, disable=None)
        for step, batch in enumerate(bar):
            x, mask, y = to_device(batch, self.device)
            optimizer.zero_grad(set_to_none=True)
            if mask_optimizer:
                mask_optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.amp):
                logits = self.forward(x, mask=mask)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            cpg.constrain_gradients(prunable, weight_decay, pruner is not None)
            optimizer.step()
            if mask_optimizer:
                mask_optimizer.step()
            cpg.zero_pruned_weights(used)
            if step_scheduler:
                step_scheduler.step()
            if pruner:
                pruner.step()
            total_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if not bar.disable and step % 10 == 0:
                bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.2f}")
        total_loss, correct, seen = distributed.all_sum(total_loss.item(), correct.item(), seen, device=self.device)
        loss, acc = total_loss / max(seen, 1), correct / max(seen, 1)
        lr = optimizer.param_groups[0]["lr"]
        sparsity = self.stats()["sparsity"]
        log.info(f"In train()-> Train Ep. #{epoch} loss: {loss:.3f}, accuracy: {100 * acc:.2f}, lr: {lr}, "
                 f"sparsity: {sparsity:.3f}, network_width_mpl: {math.sqrt(self.width_mpl)}")
        return acc, {"train/loss": loss, "train/accuracy": 100 * acc, "train/lr": lr, "train/sparsity": sparsity,
                     "train/network_width_mpl": math.sqrt(self.width_mpl)}

    @torch.no_grad()
    def evaluate(self, loader=None, return_logits=False):
        """(loss, accuracy[, logits in loader order]) of the task with its own masks, head and branches."""
        self.net.activate(self.task)
        self.model.eval()
        total_loss = correct = seen = 0
        all_logits = []
        for batch in tqdm(loader or self.test_loader, desc=f"{self.task} eval", leave=False, disable=None):
            x, mask, y = to_device(batch, self.device)
            with autocast(self.device, self.amp):
                logits = self.model(x, mask=mask).float()
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if return_logits:
                all_logits.append(logits.cpu())
        out = (total_loss / max(seen, 1), correct / max(seen, 1))
        return out + (torch.cat(all_logits),) if return_logits else out

    def validate(self, epoch, train_acc=None):
        """Test the task, log the original's line and (after a training epoch) a train.csv row; returns (test
        accuracy, the values for the epoch's curve)."""
        loss, acc = self.evaluate()
        s = self.stats()
        line = (f"In validate()-> Val Ep. #{epoch} loss: {loss:.3f}, accuracy: {100 * acc:.2f}, "
                f"sparsity: {s['sparsity']:.3f}, task{self.task_id} ratio: {s['task_ratio']:.3f}, "
                f"zero ratio: {s['zero_ratio']:.3f}, mpl: {math.sqrt(self.width_mpl)}")
        values = {"val/loss": loss, "val/accuracy": 100 * acc, "val/sparsity": s["sparsity"],
                  "val/task_ratio": s["task_ratio"], "val/zero_ratio": s["zero_ratio"],
                  "val/mpl": math.sqrt(self.width_mpl)}
        if self.task_id != 1:
            line += f", shared_ratio: {s['shared_ratio']:.3f}"
            values["val/shared_ratio"] = s["shared_ratio"]          # the share of earlier weights the piggymask keeps
        log.info(line)
        if self.csv_path and train_acc is not None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.csv_path, "a", newline="") as f:
                csv.writer(f).writerow([epoch, round(acc, 4), round(train_acc, 4)])
        return acc, values


def save_task_checkpoint(net, cfg, folder, epoch):
    """Write checkpoint-<epoch>.pth.tar atomically, then remove the folder's checkpoints of earlier runs with other
    epochs; returns its path. Call finish_task first."""
    path = checkpoint_path(folder, epoch)
    save_checkpoint(net.state(epoch=epoch, dataset_config=cfg.name, text_encoder=cfg.text_encoder), path)
    remove_stale_checkpoints(path)
    return path


RECIPES = ("original", "fast")
FAST_WARMUP = 0.05              # the fast recipe's linear warm-up, as a fraction of the training steps
# The fast recipe's Adam peak learning rate is chosen per task and training step by a learning-rate range test
# (Smith, "Cyclical Learning Rates for Training Neural Networks", 2017; torch-lr-finder's LRFinder): from the step's
# starting weights, Adam steps with a rate rising exponentially over RANGE_TEST_LRS, the loss after each step measured
# on one fixed training batch; the rule (`landmark`, `rule`) takes the rate of the lowest loss, or, when no step
# lowered it, the last rate before it diverged, divided by RANGE_TEST_DIVISOR (fastai's "minimum / 10": the loss
# still falls there, well before it turns up). The test takes RANGE_TEST_SHARE of the step's optimiser steps, at
# least RANGE_TEST_STEPS[0] and at most RANGE_TEST_STEPS[1], and the weights and optimiser are put back afterwards.
RANGE_TEST_LRS = (1e-6, 1.0)
RANGE_TEST_DIVISOR = 10.0
RANGE_TEST_DIVERGES = 2.0       # the loss has diverged at twice its start (the test stops at 4x its lowest)
RANGE_TEST_FALL = 0.01          # a test in which no step lowered the loss by 1 % saw no learning
RANGE_TEST_SHARE = 0.03
RANGE_TEST_STEPS = (10, 100)
FAST_IDLE_LR = 1e-3             # a task that owns no weight trains none: no test, any rate


def trainable_weights(net, task):
    """(the weights the task trains, its piggymask parameters): what its optimisers step."""
    piggy = cpg.piggymask_parameters(net.model, net.task_id(task))
    piggy_ids = {id(p) for p in piggy}
    return [p for p in net.model.parameters() if p.requires_grad and id(p) not in piggy_ids], piggy


def make_optimizers(net, task, lr, lr_mask, recipe="original", fast_lr=None):
    """The weights' optimiser and Adam(lr_mask) for the task's piggymask, as the original. Weights: SGD (momentum
    0.9, Nesterov) at `lr` in the original recipe; Adam at `fast_lr` (the range test's) in the fast one. Either way
    the weight decay is added to the gradient of the task's own weights only (cpg.constrain_gradients), never
    decoupled: a decoupled decay (AdamW) would shrink weights of earlier tasks that sit in the same tensors."""
    weights, piggy = trainable_weights(net, task)
    if recipe == "fast":
        log.info(f"fast recipe: Adam at peak lr {fast_lr:.3g}, warm-up and cosine decay (lr {lr} is the original "
                 f"recipe's)")
        optimizer = torch.optim.Adam(weights, lr=fast_lr, foreach=True)
    else:
        optimizer = torch.optim.SGD(weights, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.0, foreach=True)
    mask_optimizer = torch.optim.Adam(piggy, lr=lr_mask, foreach=True) if piggy and lr_mask > 0 else None
    return optimizer, mask_optimizer


def lr_schedule(optimizer, recipe, epochs, steps_per_epoch):
    """(scheduler, stepped per step?): x LR_GAMMA at LR_MILESTONES of the epochs, stepped per epoch (original), or a
    linear warm-up over FAST_WARMUP of the steps and a cosine decay to zero, stepped per step (fast)."""
    if recipe != "fast":
        marks = sorted({epoch_at(f, epochs) for f in LR_MILESTONES})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, marks, gamma=LR_GAMMA), False
    steps = max(epochs * steps_per_epoch, 1)
    warmup = max(int(FAST_WARMUP * steps), 1)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, steps - warmup) / max(steps - warmup, 1)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True


class MaskedAdam(torch.optim.Adam):
    """Adam that keeps a CPG task to its own weights, as a training step does: the gradient of every weight it does
    not own is zeroed (with the L2 decay on the ones it owns) before the step, and freed weights stay zero after."""

    def __init__(self, params, net, task, weight_decay, **kwargs):
        super().__init__(params, **kwargs)
        self.prunable = list(cpg.prunable_layers(net.model).values())
        self.used = list(cpg.used_layers(net.model, net.modalities[task]).values())
        self.weight_decay = weight_decay

    def step(self, closure=None):
        cpg.constrain_gradients(self.prunable, self.weight_decay, False)
        loss = super().step(closure)
        cpg.zero_pruned_weights(self.used)
        return loss


class Logits(torch.nn.Module):
    """The network as LRFinder calls it: model((x, mask)) -> float logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        x, mask = inputs
        return self.model(x, mask=mask).float()


def range_test(net, data, weight_decay, steps, seed):
    """The fast recipe's peak learning rate for the active task from the weights it starts from (see
    RANGE_TEST_LRS): Smith's range test over `steps` optimiser steps with torch-lr-finder's LRFinder, the loss after
    each step measured on one fixed training batch (the probe: without the noise of a new batch per step, a short
    test shows where the loss stops falling), its weights and Adam state put back afterwards, the random streams
    seeded by `seed` before and after. Returns (the chosen rate, its history {lr, loss}, seconds)."""
    from torch_lr_finder import LRFinder, TrainDataLoaderIter, ValDataLoaderIter   # (with matplotlib: once)

    def inputs_labels(batch):
        x, mask, y = to_device(batch, data.device)
        return (x, mask), y

    class Batches(TrainDataLoaderIter):
        def inputs_labels_from_batch(self, batch):
            return inputs_labels(batch)

    class Probe(ValDataLoaderIter):
        dataset = None                                            # LRFinder averages over len(dataset) samples

        def inputs_labels_from_batch(self, batch):
            return inputs_labels(batch)

    start = time.perf_counter()
    begin(data, seed)
    net.activate(data.task)
    probe_batch = next(iter(data.train_loader))
    probe = Probe(torch.utils.data.DataLoader([probe_batch], batch_size=None))
    probe.dataset = range(len(probe_batch["y"]))
    optimizer = MaskedAdam(trainable_weights(net, data.task)[0], net, data.task, weight_decay, lr=RANGE_TEST_LRS[0])
    finder = LRFinder(Logits(net.model), optimizer, torch.nn.CrossEntropyLoss(), device=data.device)
    with contextlib.redirect_stdout(io.StringIO()):                # its own prints and bar: the log line says it
        finder.range_test(Batches(data.train_loader), val_loader=probe, end_lr=RANGE_TEST_LRS[1], num_iter=steps,
                          step_mode="exp", smooth_f=0.0, diverge_th=4.0)
    history = {"lr": list(finder.history["lr"]), "loss": list(finder.history["loss"])}
    finder.reset()                                                 # the weights and the optimiser as they were
    begin(data, seed)
    return rule(history), history, time.perf_counter() - start


def landmark(history):
    """(index, what it is) of the rate the rule divides: the lowest loss, or, when no step lowered the loss by
    RANGE_TEST_FALL (the test was too short to see the network learn: a Perceiver stays at chance for its first
    dozens of steps), the last rate before the loss reached RANGE_TEST_DIVERGES times its start (the largest rate it
    stood)."""
    losses = history["loss"]
    lowest = min(range(len(losses)), key=losses.__getitem__)
    if losses[lowest] <= (1 - RANGE_TEST_FALL) * losses[0]:
        return lowest, f"lowest loss {losses[lowest]:.4f}"
    diverged = next((i for i, loss in enumerate(losses) if loss >= RANGE_TEST_DIVERGES * losses[0]), len(losses))
    return max(diverged - 1, 0), f"no descent from {losses[0]:.4f}, the last rate before it doubled"


def rule(history):
    """The peak rate a range test's history {lr, loss} gives: the rate at its landmark divided by
    RANGE_TEST_DIVISOR."""
    return max(history["lr"][landmark(history)[0]] / RANGE_TEST_DIVISOR, RANGE_TEST_LRS[0])


def fast_learning_rate(net, data, weight_decay, seed, epochs, phase, resume, curves):
    """The fast recipe's peak rate for this training step: the one its resume state was trained with (a resumed
    step goes on at the rate it began with), else the range test's, logged, on the step's curve and kept in
    `data.fast_lr` (the stage records it in stage.json). Under torchrun rank 0 runs the test on its share of the data
    and every rank trains at its rate."""
    saved = resume.load(mmap=True) if resume else None          # the phase and the rate: no tensor read
    if saved is not None and saved["phase"] == phase:
        chosen = float(saved["objects"]["optimizer"]["param_groups"][0]["initial_lr"])
        log.info(f"learning-rate range test: {chosen:.3g}, as the resumed step began with")
    elif not distributed.is_main_process():                  # under torchrun: rank 0's rate, for every rank
        chosen = distributed.all_sum(0.0, device=data.device)[0]
    else:
        total = epochs * len(data.train_loader)
        steps = min(max(int(RANGE_TEST_SHARE * total), RANGE_TEST_STEPS[0]), RANGE_TEST_STEPS[1])
        chosen, history, seconds = range_test(net, data, weight_decay, steps, seed)
        index, what = landmark(history)
        log.info(f"learning-rate range test: {steps} steps from {RANGE_TEST_LRS[0]:g} to {RANGE_TEST_LRS[1]:g} in "
                 f"{seconds:.1f} s, {what} at {history['lr'][index]:.3g}: peak lr {chosen:.3g}")
        with tracking.curve(curves, f"{step_name(phase)}_range_test", 1) as curve:
            for i, (lr, loss) in enumerate(zip(history["lr"], history["loss"], strict=True), 1):
                curve.log(i, {"range_test/lr": lr, "range_test/loss": loss})
        chosen = distributed.all_sum(chosen, device=data.device)[0]        # (alone: itself)
    data.fast_lr = chosen
    return chosen


def epoch_at(fraction, epochs):
    """The epoch at `fraction` of `epochs` (the first at least): where a schedule's milestone falls."""
    return max(1, int(round(fraction * epochs)))


def mask_schedule(mask_optimizer, epochs):
    """The piggymask's learning rate, stepped per epoch: x MASK_FACTORS from each of MASK_MILESTONES of the epochs."""
    bounds = [epoch_at(f, epochs) for f in MASK_MILESTONES]
    factors = (1.0, *MASK_FACTORS)
    return torch.optim.lr_scheduler.LambdaLR(mask_optimizer, lambda epoch: factors[bisect.bisect_right(bounds, epoch)])


def step_name(phase):
    """A training step's name in the curves: baseline, finetune_x<width>, prune_<target sparsity>."""
    if phase["kind"] == "finetune":
        return f"finetune_x{phase['width']:g}"
    if phase["kind"] == "prune":
        return f"prune_{sparsity_key(phase['target'])}"
    return phase["kind"]


# ---- the epoch loop -----------------------------------------------------------------------------------------------
@dataclass
class TrainingStep:
    """One training step of a task as `run_epochs` runs it: `phase` names it (in its resume state and its curve),
    `trainer` does each epoch's work on `data`, and the optimisers, schedules and pruner are what it steps."""
    phase: dict
    trainer: Trainer
    data: TaskData
    epochs: int
    optimizer: torch.optim.Optimizer
    weight_decay: float
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None    # the weights' rate, stepped per epoch ...
    per_step: bool = False                                  # ... or per optimiser step (the fast recipe's)
    mask_optimizer: torch.optim.Optimizer | None = None     # the piggymask's Adam (CPG finetuning)
    mask_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None     # its rate, stepped per epoch
    pruner: GradualPruner | None = None                     # gradual pruning, stepped per optimiser step
    validate_first: bool = False                            # epoch 0: the network before pruning, validated

    def objects(self):
        """What the resume state saves and restores, by name (None: the step has none)."""
        return {"optimizer": self.optimizer, "mask_optimizer": self.mask_optimizer, "scheduler": self.scheduler,
                "mask_scheduler": self.mask_scheduler, "pruner": self.pruner}


def run_epochs(step, resume=None, curves=None):
    """Train `step` to its last epoch, continuing after the epoch `resume` (a Resume, or None) saved and saving the
    step's whole state there after every epoch; each epoch's values go to the step's curve in `curves` (the task's
    tracking.TaskRuns, or None). Returns (train accuracy, test accuracy) of the last epoch."""
    trainer, net, data, objects = step.trainer, step.trainer.net, step.data, step.objects()
    done, train_acc, val_acc = resume.restore(step.phase, net, objects, data) if resume else (0, 0.0, 0.0)
    first = done + 1
    # epoch 0 of the curve is the network before pruning; a resumed stage logged it in its first attempt (the
    # restored random streams make the validation's draw of the loader's seed irrelevant to the result)
    before = step.validate_first and first == 1
    with tracking.curve(curves, step_name(step.phase), 0 if before else first) as curve:
        if before:
            log.info("Before pruning: ")
            curve.log(0, trainer.validate(0)[1])
        for epoch in range(first, step.epochs + 1):
            train_acc, train_values = trainer.train_epoch(epoch, step.optimizer, step.mask_optimizer,
                                                          step.weight_decay, step.pruner,
                                                          step.scheduler if step.per_step else None)
            val_acc, val_values = trainer.validate(epoch, train_acc)
            curve.log(epoch, {**train_values, **val_values})      # one point per epoch: training and validation
            if step.scheduler is not None and not step.per_step:
                step.scheduler.step()
            if step.mask_scheduler is not None:
                step.mask_scheduler.step()
            if resume:
                resume.save(step.phase, epoch, net, objects, data, train_acc, val_acc)
    return train_acc, val_acc


# ---- one task's training steps ------------------------------------------------------------------------------------
class Outcome(enum.Enum):
    """What a training step decided; the entry points turn these into the original's exit codes."""
    DONE = "done"
    EXPAND = "expand"                       # below the criterion and below max width: widen and train again
    NOTHING_TO_PRUNE = "nothing_to_prune"   # the task owns no weights
    STOP_PRUNING = "stop_pruning"           # train accuracy <= CPG_TRAIN_ACC, or the sparsity upper bound


def begin(data, seed):
    """Seed every random stream a training step uses, so its result depends only on its seed and its inputs, never
    on what ran before it in the same process."""
    seed_everything(seed)
    data.train_loader.generator.manual_seed(seed)


def train_baseline(net, data, *, epochs, lr, weight_decay, seed, recipe="original", resume=None, curves=None):
    """Train a fresh single-task network (original recipe: SGD, x0.1 at 50 % and 80 %); returns the last epoch's
    test accuracy. `curves`: the task's tracking.TaskRuns (None: not tracked)."""
    begin(data, seed)
    trainer = Trainer(net, data.task, data.device, data.train_loader, data.test_loader, amp=data.amp)
    phase = {"kind": "baseline"}
    fast_lr = fast_learning_rate(net, data, weight_decay, seed, epochs, phase, resume, curves) \
        if recipe == "fast" else None
    optimizer, _ = make_optimizers(net, data.task, lr, lr_mask=0.0, recipe=recipe, fast_lr=fast_lr)
    scheduler, per_step = lr_schedule(optimizer, recipe, epochs, len(data.train_loader))
    step = TrainingStep(phase, trainer, data, epochs, optimizer, weight_decay, scheduler, per_step)
    train_acc, val_acc = run_epochs(step, resume, curves)
    if train_acc < BASELINE_PRUNABLE_ACC:
        log.info("Cannot prune any more!")
    return val_acc


def evaluate_task(net, data, return_logits=False):
    """(loss, accuracy[, logits in order]) of `net` on the test set of `data`'s task, on `data`'s device."""
    net.model.to(data.device)
    return Trainer(net, data.task, data.device, None, data.test_loader, amp=data.amp).evaluate(
        return_logits=return_logits)


def start_cpg_task(net, data, width, reinit_free=False):
    """Add the task to a network (widened to `width`), give it the free weights (re-initialised with
    `reinit_free`), make only its own trainable."""
    net.start_task(data.task, data.modality, data.num_classes, width, reinit_free)
    net.set_trainable(data.task)
    net.model.to(data.device)
    return max(width, net.model.width_multiplier)


def finish_task(net, task):
    """The shared parameters the task trained become its own: frozen for every later task."""
    net.claim_shared(task)


def cpg_finetune(net, data, *, epochs, lr, lr_mask, weight_decay, seed, baseline, width, max_width, csv_path=None,
                 recipe="original", resume=None, curves=None):
    """Train the active task's free weights (SGD, or Adam in the fast recipe) and its piggymask (Adam); returns
    (Outcome, test accuracy). `curves`: the task's tracking.TaskRuns (None: not tracked)."""
    begin(data, seed)
    task = data.task
    log.info("Finetune stage...")
    trainer = Trainer(net, task, data.device, data.train_loader, data.test_loader, width, csv_path, amp=data.amp)
    phase = {"kind": "finetune", "width": float(width)}
    owns_nothing = trainer.stats()["task_ratio"] == 0
    fast_lr = fast_learning_rate(net, data, weight_decay, seed, epochs, phase, resume, curves) \
        if recipe == "fast" and not owns_nothing else FAST_IDLE_LR
    optimizer, mask_optimizer = make_optimizers(net, task, lr, lr_mask, recipe, fast_lr)
    scheduler, per_step = lr_schedule(optimizer, recipe, epochs, len(data.train_loader))
    mask_scheduler = mask_schedule(mask_optimizer, epochs) if mask_optimizer and not owns_nothing else None
    step = TrainingStep(phase, trainer, data, epochs, optimizer, weight_decay, scheduler, per_step, mask_optimizer,
                        mask_scheduler)
    train_acc, val_acc = run_epochs(step, resume, curves)
    passed = train_acc > CPG_TRAIN_ACC and val_acc >= baseline
    if not passed and width < max_width - WIDTH_TOLERANCE:
        log.info("It's time to expand the Network")
        log.info("Auto expand network")
        return Outcome.EXPAND, val_acc
    if not passed:
        log.info(f"at max width x{width}: val acc {val_acc:.4f} stays below baseline {baseline:.4f}")
    owns_nothing = trainer.stats()["task_ratio"] == 0
    return (Outcome.NOTHING_TO_PRUNE if owns_nothing else Outcome.DONE), val_acc


def upper_bound_reached(net, sparsity, width, max_width, total_num_tasks, unpruned_acc, baseline):
    """The original's rule: at max width and below baseline, leave room for the remaining tasks."""
    if width < max_width or unpruned_acc >= baseline:
        return False
    remaining = total_num_tasks - len(net.history)
    allowed = round(1.0 / (remaining + 1), UPPER_BOUND_DIGITS)
    log.info(f"remain_num_tasks: {remaining}")
    log.info(f"ratio_allow_for_curr_task: {allowed:.4f}")
    return sparsity >= 1.0 - allowed


def cpg_prune(net, data, *, epochs, lr, weight_decay, seed, initial, target, frequency, interval, baseline,
              max_width, total_num_tasks, unpruned_acc, csv_path=None, resume=None, curves=None):
    """One gradual-pruning stage of the active task from `initial` to `target` sparsity (cubic schedule over the
    first `interval` epochs, the learning rate constant). Returns (Outcome, test accuracy or None when the stage did
    not run). `curves`: the task's tracking.TaskRuns (None: not tracked)."""
    width = net.model.width_multiplier
    log.info(f"Sparsity range: {initial} -> {target}")
    if upper_bound_reached(net, initial, width, max_width, total_num_tasks, unpruned_acc, baseline):
        return Outcome.STOP_PRUNING, None
    begin(data, seed)
    net.set_trainable(data.task)
    net.model.to(data.device)
    trainer = Trainer(net, data.task, data.device, data.train_loader, data.test_loader, width, csv_path, amp=data.amp)
    optimizer, _ = make_optimizers(net, data.task, lr, 0.0)
    steps = epochs * len(data.train_loader)
    pruner = GradualPruner(net, data.task, initial, target, begin=0,
                           end=min(interval * len(data.train_loader), steps), frequency=frequency)
    step = TrainingStep({"kind": "prune", "initial": float(initial), "target": float(target)}, trainer, data, epochs,
                        optimizer, weight_decay, pruner=pruner, validate_first=True)
    train_acc, val_acc = run_epochs(step, resume, curves)
    if train_acc <= CPG_TRAIN_ACC:
        log.info(f"train accuracy {100 * train_acc:.2f} <= {100 * CPG_TRAIN_ACC:g}: stop pruning")
        return Outcome.STOP_PRUNING, val_acc
    if upper_bound_reached(net, target, width, max_width, total_num_tasks, unpruned_acc, baseline):
        return Outcome.STOP_PRUNING, val_acc
    return Outcome.DONE, val_acc
