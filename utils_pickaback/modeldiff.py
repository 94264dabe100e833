"""ModelDiff (Li et al., ISSTA 2021) as the backbone search uses it: profiling inputs and their mutation search,
decision distance vectors (DDV) and the similarity of two models.

For a target task T, a seeded, class-balanced sample of T's test data is refined by ModelDiff's random mutation
search so that T's outputs on it are as diverse as possible (`profile`). Each candidate K then runs on exactly these
inputs through its own trained head (`score_candidate`); a candidate of the other modality reads them through T's
input adapter and k/v projection (the k/v swap of packnet_models_pickaback). A model's DDV holds the distances
between its outputs on the input pairs (i, i + n/2); the similarity of K to T is 1 - the cosine distance between
their DDVs, in a cosine and a Euclidean variant. (The original code profiled each model on the first, unshuffled
batch of its own test set, so the two DDVs it compared came from different inputs.)

A profile depends on its target only, so it is searched once per target and reused for every candidate. What a
candidate needs of it is its `Probe` (the inputs and the target's reader), so whoever holds a candidate can compute
the candidate's DDV (`candidate_ddv`) and hand back only that, to be compared with the target's (`similarity`).
"""
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import UserError

log = logging.getLogger("root")


@dataclass
class ProfileSettings:
    size: int = 32            # profiling inputs per target (n; the DDV has n // 2 entries)
    epsilon: float = 0.1      # mutation step
    iterations: int = 100     # mutation attempts
    seed: int = 2


@dataclass
class DDV:
    """A model's decision distance vectors on a profile's n inputs: the distances between its outputs of inputs i and
    i + n/2, in a cosine and a Euclidean variant, [n // 2] each."""
    cos: torch.Tensor
    euc: torch.Tensor


@dataclass
class Probe:
    """What a candidate needs to answer a target's profile: the profiling inputs, their modality and the target's
    reader of it (its input adapter and k/v projection, for a candidate of the other modality)."""
    modality: str
    inputs: dict              # {'x': [n, ...], 'mask': [n, tokens] or None}
    reader: dict


@dataclass
class Profile:
    """A target's profiling inputs after the mutation search, and the target's behaviour on them."""
    task_id: int
    probe: Probe
    logits: torch.Tensor      # the target's outputs [n, classes]
    ddv: DDV
    diversity: float          # the mutation search's score of the final inputs


def task_generator(seed, task_id):
    """A generator per (seed, task): a target's profile does not depend on which other targets share the run."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(task_id)]).generate_state(1)[0]))


# ---- profiling inputs -------------------------------------------------------------------------------------------
def class_balanced_sample(targets, size, generator):
    """Indices of `size` samples, as many per class as the classes allow (the first classes get the remainder),
    drawn at random within each class and returned in random order (so the DDV pairs mix classes)."""
    targets = torch.as_tensor(targets)
    per_class = []
    for c in targets.unique().tolist():
        idx = (targets == c).nonzero().flatten()
        per_class.append(idx[torch.randperm(len(idx), generator=generator)])
    longest = max(len(idx) for idx in per_class)
    round_robin = [idx[j] for j in range(longest) for idx in per_class if j < len(idx)]
    chosen = torch.stack(round_robin[:size])
    return chosen[torch.randperm(len(chosen), generator=generator)].tolist()


def collate(dataset, indices):
    """{'x': [n, ...], 'mask': [n, tokens] or None} of the dataset items at `indices`."""
    items = [dataset[i] for i in indices]
    x = torch.stack([item["x"] for item in items])
    mask = torch.stack([item["mask"] for item in items]) if "mask" in items[0] else None
    return {"x": x, "mask": mask}


def output_diversity(logits):
    """ModelDiff's search score: the mean of the pairwise Euclidean distances between the outputs [n, classes]."""
    return torch.cdist(logits, logits).mean()


def _random_position(x, mask, generator):
    """A flat element index of one input x [...]; for text only among real tokens (padding is masked out anyway)."""
    if mask is None:
        return int(torch.randint(x.numel(), (1,), generator=generator))
    tokens = mask.nonzero().flatten().cpu()
    token = int(tokens[torch.randint(len(tokens), (1,), generator=generator)])
    return token * x.shape[-1] + int(torch.randint(x.shape[-1], (1,), generator=generator))


@torch.no_grad()
def mutation_search(model, inputs, epsilon, iterations, generator):
    """ModelDiff's random mutation search: each iteration picks one input and one of its elements, tries +epsilon and
    -epsilon there, and keeps the better change if it raises the diversity of `model`'s outputs.

    Only the mutated input's outputs change, so a trial runs the model on that input alone (2 rows, not n) and
    updates one row of the distance matrix. Returns (mutated inputs, final diversity)."""
    x, mask = inputs["x"].clone(), inputs.get("mask")
    out = model({"x": x, "mask": mask})                                      # [n, classes]
    dist = torch.cdist(out, out)                                             # [n, n]
    total = dist.sum()
    n = len(x)
    for _ in range(iterations):
        i = int(torch.randint(n, (1,), generator=generator))
        pos = _random_position(x[i], None if mask is None else mask[i], generator)
        trial = x[i].unsqueeze(0).repeat(2, *[1] * (x.dim() - 1))           # [2, ...]: +eps and -eps
        trial.view(2, -1)[0, pos] += epsilon
        trial.view(2, -1)[1, pos] -= epsilon
        trial_out = model({"x": trial, "mask": None if mask is None else mask[i].unsqueeze(0).expand(2, -1)})
        rows = torch.cdist(trial_out, out)                                   # [2, n]
        rows[:, i] = 0.0
        totals = total - 2 * dist[i].sum() + 2 * rows.sum(dim=1)
        best = int(totals.argmax())
        if totals[best] > total:
            x[i], out[i] = trial[best], trial_out[best]
            dist[i], dist[:, i] = rows[best], rows[best]
            total = totals[best]
    return {"x": x, "mask": mask}, float(total / n ** 2)


# ---- decision distance vectors ----------------------------------------------------------------------------------
def decision_distance_vectors(logits):
    """The DDV of outputs [n, classes]: distances between the outputs of inputs i and i + n/2."""
    half = len(logits) // 2
    a, b = logits[:half].double(), logits[half:2 * half].double()
    return DDV(cos=1.0 - F.cosine_similarity(a, b, dim=1), euc=(a - b).norm(dim=1))


def ddv_distance(u, v):
    """Cosine distance between two DDVs (the value the original's table holds)."""
    return float(1.0 - F.cosine_similarity(u.double(), v.double(), dim=0))


@torch.no_grad()
def profile(target, task_id, dataset, settings):
    """The profile of a target (an InferenceModel) from its test `dataset`; `task_id` seeds it."""
    generator = task_generator(settings.seed, task_id)
    if settings.size < 2:
        raise UserError(f"--profile_size {settings.size} is too small: the DDV needs at least 2 inputs.")
    if len(dataset) < settings.size:
        log.warning(f"task {task_id} has only {len(dataset)} test samples; profiling with {len(dataset)} "
                    f"instead of {settings.size}")
    inputs = collate(dataset, class_balanced_sample(dataset.targets, settings.size, generator))
    inputs = {k: None if v is None else v.to(target.device) for k, v in inputs.items()}
    inputs, _ = mutation_search(target, inputs, settings.epsilon, settings.iterations, generator)
    logits = target(inputs)
    return Profile(task_id, Probe(target.modality, inputs, target.reader()), logits,
                   decision_distance_vectors(logits), float(output_diversity(logits)))


@torch.no_grad()
def candidate_ddv(probe, candidate):
    """The DDV of a candidate (an InferenceModel) on a profile's inputs; a candidate of the other modality reads them
    through the target's reader (the k/v swap)."""
    if candidate.modality != probe.modality:
        candidate = candidate.reading(probe.reader, probe.modality)
    return decision_distance_vectors(candidate(probe.inputs))


def similarity(target_ddv, ddv):
    """The table's scores of a candidate's DDV against the target's: distances and similarities (1 - distance)."""
    d_cos, d_euc = ddv_distance(ddv.cos, target_ddv.cos), ddv_distance(ddv.euc, target_ddv.euc)
    return {"ddv_cos": d_cos, "ddv_euc": d_euc, "sim_cos": 1.0 - d_cos, "sim_euc": 1.0 - d_euc}


def score_candidate(profile, candidate):
    """The scores of a candidate (an InferenceModel) against the profiled target, on the same inputs."""
    return similarity(profile.ddv, candidate_ddv(profile.probe, candidate))
