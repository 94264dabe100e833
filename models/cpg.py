"""CPG machinery on the Perceiver IO: ownership masks, piggymasks, gradual pruning, growth and freezing.

CPG (Hung et al., "Compacting, Picking and Growing for Unforgetting Continual Learning", NeurIPS 2019):
- ownership mask: per prunable weight a uint8 task id (0 = free); task k trains only the weights it owns;
- picking: task k learns a real-valued piggymask over the weights of tasks 1..k-1 (binarised at 5e-3 with a
  straight-through gradient) to choose which of them it reuses;
- compacting: gradual pruning of the current task's weights (cubic schedule) frees room for later tasks;
- growing: `MultimodalPerceiverIO.grow` adds feed-forward units that are free for the new task.

The effective weight of every prunable linear layer is `original * keep(ownership, piggymask, task)`, expressed as
a `torch.nn.utils.parametrize` parametrization on the perceiver-pytorch modules. Everything without an ownership
mask (biases, LayerNorms, latents, position tables) is frozen once a task that used it has been trained, so that
evaluating an earlier task after a later one gives the same logits bit for bit.
"""
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from models.perceiver_io import MODALITIES, init_weight

PIGGYMASK_INIT = 0.01
PIGGYMASK_THRESHOLD = 5e-3


class PickedWeight(torch.autograd.Function):
    """weight * (own + earlier * [piggymask > threshold]) with the straight-through gradient of the binarised
    piggymask: d/d piggymask = grad * weight * earlier. One fused node instead of the half-dozen elementwise ops
    (and their saved tensors) the same expression costs through autograd."""

    @staticmethod
    def forward(ctx, weight, piggymask, own, earlier):
        keep = torch.addcmul(own, earlier, (piggymask > PIGGYMASK_THRESHOLD).to(own.dtype))
        ctx.save_for_backward(weight, keep, earlier)
        return weight * keep

    @staticmethod
    def backward(ctx, grad):
        weight, keep, earlier = ctx.saved_tensors
        grad_weight = grad * keep if ctx.needs_input_grad[0] else None
        grad_piggymask = grad * weight * earlier if ctx.needs_input_grad[1] else None
        return grad_weight, grad_piggymask, None, None


DERIVED_MASKS = {                          # (ownership mask, active task id) -> bool mask
    "own": lambda mask, t: mask == t,
    "earlier": lambda mask, t: (mask > 0) & (mask < t),
    "keep": lambda mask, t: (mask > 0) & (mask <= t),
    "free": lambda mask, t: mask == 0,
}


class OwnershipMask(nn.Module):
    """Parametrization of a linear weight: keep the weights of the active task and of the earlier tasks it uses.
    The active task is the network's ActiveTask (models/perceiver_io.py), held by reference, never copied here.

    The masks derived from the ownership mask (the task's own weights, the earlier tasks' weights, the free ones)
    change only when a task is activated or the ownership changes (a new task, pruning, loading), never inside a
    training step, so they are computed once and reused until then: any in-place change of `mask` bumps its
    version counter, which is part of the cache key."""

    def __init__(self, shape, active):
        super().__init__()
        self.register_buffer("mask", torch.zeros(shape, dtype=torch.uint8), persistent=False)
        self.piggymasks = nn.ParameterDict()
        self.active = active
        self._derived = None

    @property
    def task_id(self):
        return self.active.task_id

    def __getstate__(self):                       # a copy (deepcopy, pickle) recomputes its own derived masks
        return {**self.__dict__, "_derived": None}

    def derived(self, name, dtype=None):
        """A mask derived from the ownership mask for the active task (DERIVED_MASKS: 'own', 'earlier', 'keep',
        'free'; bool, or as `dtype`), or a flag: 'all_kept' (no weight is free or a later task's), 'any_free'. Each
        is computed when first asked for after a change and only then, so a layer holds just what its task uses."""
        key = (self.task_id, self.mask._version)
        if self._derived is None or self._derived[0] is not self.mask or self._derived[1] != key:
            self._derived = (self.mask, key, {})
        cache = self._derived[2]
        if (name, dtype) not in cache:
            if name == "all_kept":
                value = bool(self.derived("keep").all())
            elif name == "any_free":
                value = bool(self.derived("free").any())
            elif dtype is not None:
                value = self.derived(name).to(dtype)
            else:
                value = DERIVED_MASKS[name](self.mask, self.task_id)
            cache[(name, dtype)] = value
        return cache[(name, dtype)]

    def forward(self, weight):
        piggymask = self.piggymasks[str(self.task_id)] if str(self.task_id) in self.piggymasks else None
        if piggymask is not None:
            return PickedWeight.apply(weight, piggymask, self.derived("own", weight.dtype),
                                      self.derived("earlier", weight.dtype))
        if self.derived("all_kept"):               # every weight belongs to this task or an earlier one: x 1
            return weight
        return weight * self.derived("keep", weight.dtype)


# ---- which layers carry task knowledge --------------------------------------------------------------------------
def prunable_layers(model):
    """{name: layer} of every linear layer and convolution with an ownership mask (all but the per-task heads)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and not name.startswith("heads.")}


def layer_modality(name):
    """The modality a layer belongs to (its k/v projection, or its input adapter's conv stem), or None when both use
    it."""
    for m in MODALITIES:
        if f"to_kv.projections.{m}" in name or name.startswith(f"adapters.{m}."):
            return m
    return None


def used_layers(model, modality):
    """Prunable layers a task of `modality` computes with (the other modality's k/v projection is not)."""
    return {n: m for n, m in prunable_layers(model).items() if layer_modality(n) in (None, modality)}


def attach(model):
    """Register an OwnershipMask on every prunable weight (idempotent), following the model's active task."""
    for layer in prunable_layers(model).values():
        if not parametrize.is_parametrized(layer, "weight"):
            parametrize.register_parametrization(layer, "weight", OwnershipMask(layer.weight.shape, model.active))
    return model


def ownership(layer):
    return layer.parametrizations.weight[0]


def raw_weight(layer):
    return layer.parametrizations.weight.original


def get_masks(model):
    return {name: ownership(layer).mask.clone() for name, layer in prunable_layers(model).items()}


def load_masks(model, masks):
    for name, layer in prunable_layers(model).items():
        mask = ownership(layer).mask
        saved = masks.get(name)
        if saved is None:
            mask.zero_()
        else:  # a grown layer keeps its old masks in the top-left slice; new entries are free
            mask.zero_()
            mask[tuple(slice(0, s) for s in saved.shape)] = saved.to(mask.device)


# ---- starting a task -------------------------------------------------------------------------------------------
def make_finetuning_mask(model, modality, task_id):
    """Give every free weight of the layers `modality` uses to task `task_id`."""
    for layer in used_layers(model, modality).values():
        mask = ownership(layer).mask
        mask[mask == 0] = task_id


def reinit_free_weights(model, modality, task_id):
    """Give the weights task `task_id` was just handed (the ones earlier tasks' pruning freed, which pruning left at
    zero) fresh values, as a new layer's (models.perceiver_io.init_weight); its other weights are left alone."""
    for layer in used_layers(model, modality).values():
        mask, weight = ownership(layer).mask, raw_weight(layer)
        fresh = init_weight(torch.empty_like(weight))
        with torch.no_grad():
            weight[mask == task_id] = fresh[mask == task_id]


def add_piggymasks(model, task_id, init=PIGGYMASK_INIT):
    """A piggymask for task `task_id` over every prunable weight (only its entries over earlier tasks matter)."""
    for layer in prunable_layers(model).values():
        om = ownership(layer)
        if str(task_id) not in om.piggymasks:
            om.piggymasks[str(task_id)] = nn.Parameter(torch.full_like(raw_weight(layer), init))


def restore_piggymasks(model, state_dict):
    """The piggymasks a saved state holds, each on the layer it was saved on (a layer grown after a task started has
    none of that task's)."""
    for name, layer in prunable_layers(model).items():
        prefix = f"{name}.parametrizations.weight.0.piggymasks."
        om = ownership(layer)
        for key in state_dict:
            if key.startswith(prefix) and key[len(prefix):] not in om.piggymasks:
                om.piggymasks[key[len(prefix):]] = nn.Parameter(torch.full_like(raw_weight(layer), PIGGYMASK_INIT))


def piggymask_parameters(model, task_id):
    return [ownership(layer).piggymasks[str(task_id)] for layer in prunable_layers(model).values()
            if str(task_id) in ownership(layer).piggymasks]


# ---- freezing what has no ownership mask ------------------------------------------------------------------------
def is_masked_parameter(name):
    return ".parametrizations.weight." in name


def shared_parameter_names(model, modality, task):
    """Parameters without an ownership mask that a task of `modality` named `task` computes with."""
    other = [m for m in MODALITIES if m != modality]
    names = []
    for name, _ in model.named_parameters():
        if is_masked_parameter(name):
            continue
        if name.startswith("heads.") and not name.startswith(f"heads.{task}."):
            continue
        if any(name.startswith(f"adapters.{m}.") or f"to_kv.projections.{m}." in name for m in other):
            continue
        names.append(name)
    return names


def set_trainable(model, modality, task, task_id, frozen):
    """requires_grad only on what task `task` may change: its owned weights (masked per step), its piggymask, its
    head, and shared parameters not in `frozen` (those other tasks trained)."""
    shared = set(shared_parameter_names(model, modality, task))
    piggy = {id(p) for p in piggymask_parameters(model, task_id)}
    for name, p in model.named_parameters():
        if is_masked_parameter(name):
            p.requires_grad_(name.endswith(".original") or id(p) in piggy)
        else:
            p.requires_grad_(name in shared and name not in frozen)


# ---- per-step constraints ---------------------------------------------------------------------------------------
def constrain_gradients(layers, weight_decay, prune_mode):
    """Weight decay on owned weights only, and no gradient on weights the task does not own. `layers` are the
    prunable layers (prunable_layers, computed once per epoch: the model does not change within one)."""
    for layer in layers:
        w = raw_weight(layer)
        if w.grad is None:
            continue
        om = ownership(layer)
        w.grad.add_(w.detach(), alpha=weight_decay).mul_(om.derived("own", w.dtype))
        if prune_mode:
            for p in om.piggymasks.values():
                if p.grad is not None:
                    p.grad.zero_()


@torch.no_grad()
def zero_pruned_weights(layers):
    """Pruned (free) weights of `layers` (the layers the task uses) stay exactly zero after every optimiser step
    (the original CPG code re-zeroed them only at validation, once per epoch)."""
    for layer in layers:
        if ownership(layer).derived("any_free"):
            raw_weight(layer).masked_fill_(ownership(layer).derived("free"), 0.0)


# ---- compacting ------------------------------------------------------------------------------------------------
def cubic_sparsity(step, begin, end, initial, target):
    """s(t) = s_f + (s_i - s_f) (1 - p)^3 with p = clip((t - begin) / (end - begin), 0, 1)."""
    p = min(max((step - begin) / max(end - begin, 1), 0.0), 1.0)
    return target + (initial - target) * (1.0 - p) ** 3


@torch.no_grad()
def prune_to(model, modality, task_id, sparsity):
    """Free the smallest-magnitude weights of task `task_id` so that, in every layer it uses, the fraction of
    (its weights + free weights) that is free equals `sparsity`. Weights of other tasks are never touched."""
    for layer in used_layers(model, modality).values():
        mask, w = ownership(layer).mask, raw_weight(layer)
        own, free = mask == task_id, mask == 0
        total = int(own.sum() + free.sum())
        to_free = int(round(sparsity * total)) - int(free.sum())
        if to_free <= 0:
            continue
        magnitudes = w.abs().masked_fill(~own, math.inf).flatten()
        idx = torch.topk(magnitudes, to_free, largest=False).indices
        mask.view(-1)[idx] = 0
        w.view(-1)[idx] = 0.0


# ---- metrics for the log lines ---------------------------------------------------------------------------------
def layer_sparsity(model, modality, task_id):
    """{layer: #free / #(free + owned by task)} over the layers the task uses."""
    out = {}
    for name, layer in used_layers(model, modality).items():
        mask = ownership(layer).mask
        own, free = int((mask == task_id).sum()), int((mask == 0).sum())
        out[name] = free / max(own + free, 1)
    return out


def ownership_shares(model):
    """{task id: share of all prunable weights it owns}, with 0 for the share still free."""
    counts, total = {}, 0
    for layer in prunable_layers(model).values():
        ids, n = torch.unique(ownership(layer).mask, return_counts=True)
        for i, c in zip(ids.tolist(), n.tolist(), strict=True):
            counts[int(i)] = counts.get(int(i), 0) + c
        total += ownership(layer).mask.numel()
    return {i: c / max(total, 1) for i, c in sorted(counts.items())}


def mask_statistics(model, modality, task_id):
    """sparsity, task ratio, zero ratio and shared ratio over the layers the task uses."""
    own = free = total = earlier = picked = 0
    for layer in used_layers(model, modality).values():
        om = ownership(layer)
        mask = om.mask
        own += int((mask == task_id).sum())
        free += int((mask == 0).sum())
        total += mask.numel()
        earlier_sel = (mask > 0) & (mask < task_id)
        earlier += int(earlier_sel.sum())
        if str(task_id) in om.piggymasks:
            picked += int((earlier_sel & (om.piggymasks[str(task_id)] > PIGGYMASK_THRESHOLD)).sum())
    return dict(sparsity=free / max(own + free, 1), task_ratio=own / max(total, 1), zero_ratio=free / max(total, 1),
                shared_ratio=picked / max(earlier, 1))
