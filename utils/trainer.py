"""The shared train/evaluate loop of every training stage: progress bars, CPG per-step constraints, log lines in
the original's format (spec §6.7) and `train.csv` rows."""
import csv
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import cpg
from utils.checkpoint import checkpoint_path, save_checkpoint

log = logging.getLogger("root")


def to_device(batch, device):
    x = batch["x"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True) if "mask" in batch else None
    return x, mask, batch["y"].to(device, non_blocking=True)


class GradualPruner:
    """Cubic sparsity schedule over training steps (spec §6.4); the last update lands exactly on `end`."""

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
    def __init__(self, net, task, device, train_loader, test_loader, width_mpl=1.0, csv_path=None):
        self.net, self.task, self.device = net, task, device
        self.train_loader, self.test_loader = train_loader, test_loader
        self.modality, self.task_id = net.modalities[task], net.task_id(task)
        self.width_mpl = width_mpl
        self.csv_path = Path(csv_path) if csv_path else None

    @property
    def model(self):
        return self.net.model

    def stats(self):
        return cpg.mask_statistics(self.model, self.modality, self.task_id)

    def train_epoch(self, epoch, optimizer, mask_optimizer=None, weight_decay=0.0, pruner=None):
        self.net.activate(self.task)
        self.model.train()
        total_loss = correct = seen = 0
        bar = tqdm(self.train_loader, desc=f"{self.task} train ep {epoch}", leave=False)
        for batch in bar:
            x, mask, y = to_device(batch, self.device)
            optimizer.zero_grad(set_to_none=True)
            if mask_optimizer:
                mask_optimizer.zero_grad(set_to_none=True)
            logits = self.model(x, mask=mask)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            cpg.constrain_gradients(self.model, self.modality, self.task_id, weight_decay, pruner is not None)
            optimizer.step()
            if mask_optimizer:
                mask_optimizer.step()
            cpg.zero_pruned_weights(self.model, self.modality)
            if pruner:
                pruner.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * correct / seen:.2f}")
        loss, acc = total_loss / max(seen, 1), correct / max(seen, 1)
        lr = optimizer.param_groups[0]["lr"]
        log.info(f"In train()-> Train Ep. #{epoch} loss: {loss:.3f}, accuracy: {100 * acc:.2f}, lr: {lr}, "
                 f"sparsity: {self.stats()['sparsity']:.3f}, network_width_mpl: {math.sqrt(self.width_mpl)}")
        return loss, acc

    @torch.no_grad()
    def evaluate(self, loader=None, return_logits=False):
        """(loss, accuracy[, logits in loader order]) of the task with its own masks, head and branches."""
        self.net.activate(self.task)
        self.model.eval()
        total_loss = correct = seen = 0
        all_logits = []
        for batch in tqdm(loader or self.test_loader, desc=f"{self.task} eval", leave=False):
            x, mask, y = to_device(batch, self.device)
            logits = self.model(x, mask=mask)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if return_logits:
                all_logits.append(logits.cpu())
        out = (total_loss / max(seen, 1), correct / max(seen, 1))
        return out + (torch.cat(all_logits),) if return_logits else out

    def validate(self, epoch, train_acc=None):
        loss, acc = self.evaluate()
        s = self.stats()
        line = (f"In validate()-> Val Ep. #{epoch} loss: {loss:.3f}, accuracy: {100 * acc:.2f}, "
                f"sparsity: {s['sparsity']:.3f}, task{self.task_id} ratio: {s['task_ratio']:.3f}, "
                f"zero ratio: {s['zero_ratio']:.3f}, mpl: {math.sqrt(self.width_mpl)}")
        if self.task_id != 1:
            line += f", shared_ratio: {s['shared_ratio']:.3f}"
        log.info(line)
        if self.csv_path and train_acc is not None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.csv_path, "a", newline="") as f:
                csv.writer(f).writerow([epoch, round(acc, 4), round(train_acc, 4)])
        return loss, acc


def save_task_checkpoint(net, task, cfg, folder, epoch):
    """The task's shared parameters become its own, then checkpoint-<epoch>.pth.tar is written atomically."""
    net.claim_shared(task)
    path = checkpoint_path(folder, epoch)
    save_checkpoint(net.state(epoch=epoch, dataset_config=cfg.name, text_encoder=cfg.text_encoder), path)
    return path


def make_optimizers(net, task, lr, lr_mask):
    """SGD (momentum 0.9, Nesterov) for weights, Adam(lr_mask) for the task's piggymask (spec §6.3)."""
    piggy = cpg.piggymask_parameters(net.model, net.task_id(task))
    piggy_ids = {id(p) for p in piggy}
    weights = [p for p in net.model.parameters() if p.requires_grad and id(p) not in piggy_ids]
    optimizer = torch.optim.SGD(weights, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.0)
    mask_optimizer = torch.optim.Adam(piggy, lr=lr_mask) if piggy and lr_mask > 0 else None
    return optimizer, mask_optimizer


def milestones(epochs, fractions=(0.5, 0.8)):
    return sorted({max(1, int(round(f * epochs))) for f in fractions})
