"""Any stage's checkpoint as a frozen classifier for the backbone search, and the k/v swap.

A task reads a modality through two parts of the network: the modality's input adapter (`adapters.<m>`: no
parameters for raw pixels, the convolutions of an image conv stem, a position table for text) and its k/v projection
(`model.kv.projections[m]`). Together
they are the task's *reader* of that modality. A task never uses the other modality's projection: its ownership
mask there is 0 (free), so the masked weight is zero. To let a candidate of another modality read a target's
inputs, `InferenceModel.reading` gives an inference copy of the candidate the target's reader and makes the swapped
projection the candidate task's own in that copy; everything behind the k/v (latents, query, latent transformer,
head) stays the candidate's. The backbone search scores candidates this way; the k/v transfer copies the same
reader tensors into a backbone checkpoint.
"""
import copy
from pathlib import Path

import torch

from models import cpg
from models.build import Network
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.runtime import autocast

KV_PROJECTIONS = "cross_attend_blocks.0.fn.to_kv.projections"
def kv_layer_name(modality):
    """Module name of the k/v projection of `modality` (also its key in a checkpoint's `masks`)."""
    return f"{KV_PROJECTIONS}.{modality}"


def reader_keys(model, modality):
    """State-dict keys of the reader of `modality`: the adapter's parameters (a conv stem's raw weights, not its
    piggymasks) and the raw k/v projection weight."""
    adapter = [name for name, _ in model.named_parameters()
               if name.startswith(f"adapters.{modality}.") and ".piggymasks." not in name]
    return adapter + [f"{kv_layer_name(modality)}.parametrizations.weight.original"]


def reader_layers(model, modality):
    """The masked layers of the reader of `modality` (a conv stem's convolutions, the k/v projection)."""
    return [layer for name, layer in cpg.prunable_layers(model).items() if cpg.layer_modality(name) == modality]


@torch.no_grad()
def reader_state(net, task):
    """{state-dict key: tensor} of the reader `task` computes with: its adapter and its k/v projection of its own
    modality, the projection as masked for `task` (so weights of other tasks it does not use are left out).
    Activates `task`."""
    modality = net.modalities[task]
    net.activate(task)
    params = dict(net.model.named_parameters())
    state = {}
    for key in reader_keys(net.model, modality):
        if key.endswith(".parametrizations.weight.original"):
            layer = net.model.get_submodule(key.removesuffix(".parametrizations.weight.original"))
            state[key] = layer.weight.detach().clone()                       # original * keep(mask, task)
        else:
            state[key] = params[key].detach().clone()
    return state


@torch.no_grad()
def swap_reader(net, task, reader, modality):
    """A copy of `net` in which `task` reads `modality` through `reader` (another task's reader_state).

    In the copy the swapped projection (and conv stem) is owned by `task`: the ownership mask of a layer the task
    never used is 0, and the masked weight would be all zeros whatever was copied in."""
    swapped = copy.deepcopy(net)
    params = dict(swapped.model.named_parameters())
    expected = set(reader_keys(swapped.model, modality))
    if set(reader) != expected:
        raise ValueError(f"reader of {modality} has keys {sorted(reader)}, expected {sorted(expected)}")
    for key, tensor in reader.items():
        if params[key].shape != tensor.shape:
            raise UserError(f"cannot swap the {modality} k/v into task {task}: {key} has shape "
                            f"{tuple(tensor.shape)} in the source and {tuple(params[key].shape)} in the candidate; "
                            f"compare only models built from the same dataset config.")
        params[key].copy_(tensor)
    for layer in reader_layers(swapped.model, modality):
        cpg.ownership(layer).mask.fill_(swapped.task_id(task))
    swapped.record(task).modality = modality
    return swapped


def load_network(path, device="cpu"):
    """The network of any stage's checkpoint (baseline, CPG backbone, target), frozen, in eval mode on `device`."""
    net = Network.from_checkpoint(load_checkpoint(path))
    net.model.to(device).eval().requires_grad_(False)
    return net


class InferenceModel:
    """One task of a network as a frozen classifier: `model({'x': ..., 'mask': ...})` -> logits [batch, classes]."""

    def __init__(self, net, task, device="cpu", batch_size=None, name=None, amp=False):
        if task not in net.history:
            raise UserError(f"{name or 'the checkpoint'} has no task '{task}' (it has {', '.join(net.history)}): "
                            f"check the checkpoint folder.")
        self.net, self.task, self.device = net, task, torch.device(device)
        net.model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.name = name or task
        self.amp = amp                                  # bf16 autocast of the forward passes

    @classmethod
    def load(cls, path, task=None, device="cpu", batch_size=None, amp=False):
        """`task` of the checkpoint at `path`; by default its last task (the one a baseline or backbone trained)."""
        net = load_network(path, device)
        return cls(net, task or net.history[-1], device, batch_size, name=str(Path(path)), amp=amp)

    @property
    def modality(self):
        return self.net.modalities[self.task]

    @torch.no_grad()
    def __call__(self, inputs):
        self.net.activate(self.task)
        x, mask = inputs["x"], inputs.get("mask")
        step = self.batch_size or len(x)
        out = []
        for i in range(0, len(x), step):
            m = None if mask is None else mask[i:i + step].to(self.device)
            with autocast(self.device, self.amp):
                out.append(self.net.model(x[i:i + step].to(self.device), mask=m).float())
        return torch.cat(out)

    def reader(self):
        """This task's reader of its modality (see reader_state)."""
        return reader_state(self.net, self.task)

    def reading(self, reader, modality):
        """The k/v swap: an inference copy of this task that reads `modality` through `reader`."""
        swapped = swap_reader(self.net, self.task, reader, modality)
        return InferenceModel(swapped, self.task, self.device, self.batch_size, name=f"{self.name} (k/v swap)",
                              amp=self.amp)
