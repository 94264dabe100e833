"""The network with its continual-learning state, built from a dataset config or rebuilt from a checkpoint.

A checkpoint keeps the original's keys (`model_state_dict`, `dataset_history`, `dataset2num_classes`, `masks`,
`shared_layer_info`) plus what rebuilding needs: `model_config` (hyperparameters, text feature width),
`growth` (feed-forward units added by each task), `modalities` (task -> modality), `shared_owners` (which task
trained each unmasked parameter).

In memory a task's facts are one `TaskRecord` (its position in `Network.tasks` + 1 is its task id), the growth is
the model's own branches, and the checkpoint's per-task dicts are views of the records, written in task order.
"""
import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from models import cpg
from models.perceiver_io import ActiveTask, MultimodalPerceiverIO
from utils.checkpoint import load_checkpoint
from utils.errors import UserError

CHECKPOINT_KEYS = ("model_state_dict", "dataset_history", "dataset2num_classes", "masks", "model_config",
                   "modalities")
CONFIG_FIX = ("rerun the stage that writes it, or restore the `model:` section or text_encoder of "
              "utils/dataset_config.yaml it was made with")


def shape_differences(expected, found, limit=3):
    """'key (a,b) in the checkpoint, (c,d) here' for up to `limit` tensors whose shapes differ, and how many more."""
    keys = [k for k in found if k in expected and tuple(found[k].shape) != tuple(expected[k].shape)]
    listed = ", ".join(f"{k} {tuple(found[k].shape)} in the checkpoint but {tuple(expected[k].shape)} here"
                       for k in keys[:limit])
    return listed + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_model_config(ckpt, expected, source):
    """A UserError naming the hyperparameters in which a checkpoint's `model_config` differs from `expected` (the
    network the dataset config asks for, utils.data.model_config). A checkpoint without one is left to
    from_checkpoint, which says what it lacks."""
    found = ckpt.get("model_config")
    keys = [k for k in expected if found is not None and found.get(k) != expected[k]]
    if keys:
        listed = ", ".join(f"{k} {found.get(k)!r} in it but {expected[k]!r} in the config" for k in keys[:3])
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        raise UserError(f"{source} was made with another model configuration ({listed}{more}): {CONFIG_FIX}.")


@dataclass
class TaskRecord:
    """What the network knows of one task: its name (also its head's), the modality it reads, its number of
    classes, and its `shared_layer_info` entry as checkpoints keep it (width multiplier and modality when started;
    None for a task of a checkpoint that has none)."""
    name: str
    modality: str
    num_classes: int
    layer_info: dict | None = None


@dataclass
class Network:
    model: MultimodalPerceiverIO
    tasks: list = field(default_factory=list)             # TaskRecord per task, in order: task id = position + 1
    shared_owners: dict = field(default_factory=dict)     # shared (unmasked) parameter -> task that trained it

    @classmethod
    def new(cls, model_config):
        return cls(cpg.attach(MultimodalPerceiverIO(**model_config)))

    @classmethod
    def load(cls, path, expected_config=None):
        """The network of checkpoint file `path`. With `expected_config` (utils.data.model_config of the dataset
        config whose data it will see), a checkpoint made with other hyperparameters is a UserError naming them."""
        ckpt = load_checkpoint(path)
        if expected_config is not None:
            check_model_config(ckpt, expected_config, path)
        return cls.from_checkpoint(ckpt, source=path)

    @classmethod
    def from_checkpoint(cls, ckpt, source="the checkpoint"):
        """Rebuild exactly the network a checkpoint was saved from (growth, heads, piggymasks, masks, weights).
        `source` names the checkpoint in errors."""
        missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
        if missing:
            raise UserError(f"{source} lacks {', '.join(missing)}, so it was not written by this repository: rerun "
                            f"the stage that writes it.")
        layer_info = ckpt.get("shared_layer_info", {})
        tasks = [TaskRecord(task, ckpt["modalities"][task], ckpt["dataset2num_classes"][task], layer_info.get(task))
                 for task in ckpt["dataset_history"]]
        model = MultimodalPerceiverIO(**ckpt["model_config"])
        for g in ckpt.get("growth", []):
            model.grow(g["hidden"], g["task_id"])
        cpg.attach(model)
        for t in tasks:
            model.add_task(t.name, t.num_classes)
        cpg.restore_piggymasks(model, ckpt["model_state_dict"])
        differing = shape_differences(model.state_dict(), ckpt["model_state_dict"])
        if differing:
            raise UserError(f"{source} was made with another model configuration than its model_config builds "
                            f"({differing}): {CONFIG_FIX}.")
        model.load_state_dict(ckpt["model_state_dict"])
        cpg.load_masks(model, ckpt["masks"])
        return cls(model, tasks, dict(ckpt.get("shared_owners", {})))

    # ---- read-only views of the records, as the checkpoint keeps them ------------------------------------------
    @property
    def history(self):
        """Task names in order (a copy)."""
        return [t.name for t in self.tasks]

    @property
    def modalities(self):
        return MappingProxyType({t.name: t.modality for t in self.tasks})

    @property
    def dataset2num_classes(self):
        return MappingProxyType({t.name: t.num_classes for t in self.tasks})

    @property
    def shared_layer_info(self):
        return MappingProxyType({t.name: t.layer_info for t in self.tasks if t.layer_info is not None})

    @property
    def growth(self):
        """[{'task_id', 'hidden'}] of every growth, in order: the model's feed-forward branches (each growth adds
        one branch of the same width to every feed-forward)."""
        return [{"task_id": int(b.created_by), "hidden": b[2].in_features}
                for b in self.model.feedforwards()[0].branches]

    # ---- tasks ------------------------------------------------------------------------------------------------
    def task_id(self, task):
        return self.history.index(task) + 1

    def record(self, task):
        """The TaskRecord of `task` itself, not a copy: what is changed in it (the k/v swap's modality) is the
        network's."""
        return self.tasks[self.task_id(task) - 1]

    def activate(self, task):
        """Make `task` the one the model computes (e.g. to evaluate an earlier task): its head, its modality's
        adapter and k/v projection, its growth branches and its masks. Returns its task id."""
        task_id = self.task_id(task)
        self.model.activate(ActiveTask(task, task_id, self.record(task).modality))
        return task_id

    @contextmanager
    def active(self, task):
        """`with net.active(task):` computes `task` inside the block and restores whichever task was active before,
        also when the block raises. Yields the task id."""
        previous = replace(self.model.active)
        try:
            yield self.activate(task)
        finally:
            self.model.activate(previous)

    def start_task(self, task, modality, num_classes, width_multiplier=1.0, reinit_free=False):
        """Add `task` (or continue it), widen the network to `width_multiplier` if needed, give the task every
        free weight of the layers it uses (with `reinit_free`, freshly initialised rather than at the zero pruning
        left them at), and a piggymask over earlier tasks' weights. Returns its task id."""
        if task not in self.history:
            self.tasks.append(TaskRecord(task, modality, int(num_classes)))
        elif self.record(task).modality != modality:
            raise ValueError(f"task {task} was trained as {self.record(task).modality}, not {modality}")
        self.model.add_task(task, num_classes)
        task_id = self.task_id(task)
        self.grow_to(width_multiplier, task_id)
        if task_id > 1:
            cpg.add_piggymasks(self.model, task_id)
        cpg.make_finetuning_mask(self.model, modality, task_id)
        if reinit_free and task_id > 1:
            cpg.reinit_free_weights(self.model, modality, task_id)
        self.activate(task)
        self.record(task).layer_info = {"network_width_multiplier": float(width_multiplier), "modality": modality}
        return task_id

    def grow_to(self, width_multiplier, task_id):
        """Widen every latent feed-forward to `width_multiplier` x its base hidden width (CPG growing)."""
        ff = self.model.feedforwards()[0]
        extra = int(round(ff.hidden * width_multiplier)) - ff.total_hidden
        if extra > 0:
            self.model.grow(extra, task_id)
            cpg.attach(self.model)
        return max(extra, 0)

    def set_trainable(self, task):
        frozen = {name for name, owner in self.shared_owners.items() if owner != task}
        cpg.set_trainable(self.model, self.record(task).modality, task, self.task_id(task), frozen)

    def claim_shared(self, task):
        """The shared parameters this task trained become its own: frozen for every later task, so that nothing
        a later task does changes what this one computes."""
        for name in cpg.shared_parameter_names(self.model, self.record(task).modality, task):
            self.shared_owners.setdefault(name, task)

    def num_parameters(self):
        return sum(p.numel() for n, p in self.model.named_parameters() if ".piggymasks." not in n)

    def state(self, *, epoch, dataset_config, text_encoder):
        # the plain-data parts go through JSON, so that a network rebuilt from a checkpoint writes byte-identical
        # files to the one that never left memory (pickle's layout depends on which strings are the same object)
        plain = json.loads(json.dumps({
            "dataset_history": self.history,
            "dataset2num_classes": dict(self.dataset2num_classes),
            "shared_layer_info": dict(self.shared_layer_info),
            "model_config": dict(self.model.config),
            "growth": self.growth,
            "modalities": dict(self.modalities),
            "shared_owners": dict(self.shared_owners),
            "epoch": int(epoch),
            "dataset_config": dataset_config,
            "text_encoder": text_encoder,
        }))
        return {"model_state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "masks": {k: v.cpu() for k, v in cpg.get_masks(self.model).items()}, **plain}
