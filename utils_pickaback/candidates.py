"""The backbone search over any networks: targets, each a task head with its test data, against candidates named by
who holds the network, its checkpoint and the task head to compare; the table of ModelDiff scores and the pick.

The find_backbone stage (through backbone_search.run_search) compares a config's baselines this way, a candidate per
task id; a client can compare its task with every network it and its peers hold, each head of a multi-task network a
candidate of its own. Each target is profiled once (one mutation search, modeldiff.profile), each checkpoint is
opened once per phase (profiling, then scoring) and every requested head of it scored through its own head and masks,
one network in memory at a time. Rows come in the order of the targets, then of the candidates as given; the pick
takes the first of equal scores, so the order given is the tie rule.
"""
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from packnet_models_pickaback import InferenceModel, load_network
from utils_pickaback.modeldiff import profile, score_candidate
from utils_pickaback.results import SELECTION_RULES

log = logging.getLogger("root")


@dataclass(frozen=True)
class Candidate:
    """A task head of a network that a target is compared with."""
    holder: str | int         # who holds the network: a client's name; for the stage the candidate's task id
    checkpoint: str | Path    # what Networks.open opens: a checkpoint file, unless the caller's open says otherwise
    task: str | None = None   # the head; None: the checkpoint's last task (the one a baseline trained)

    @property
    def label(self):
        """How the log names it: the holder, and the head when one is named."""
        return str(self.holder) if self.task is None else f"{self.holder}:{self.task}"


@dataclass(frozen=True)
class Target:
    """A task to find a backbone for: its id (in the rows, and the seed of its profile), its reference network's
    checkpoint and head, and a function that loads its test data (called once, when it is profiled)."""
    task_id: int
    checkpoint: str | Path
    test_data: Callable = field(compare=False)
    task: str | None = None   # the head; None: the checkpoint's last task


@dataclass
class Row:
    """One (target, candidate) entry of the table: `task` is the head scored, `scores` modeldiff.similarity's."""
    target: Target
    candidate: Candidate
    task: str
    scores: dict


@dataclass
class Networks:
    """How the search opens checkpoints: each network on `device`, forward passes of `batch_size` inputs (all at
    once when None), in bf16 autocast with `amp`. `open(checkpoint, device)` returns its Network; the stage's also
    says when a baseline holds another task than its folder's."""
    device: str | torch.device = "cpu"
    batch_size: int | None = None
    amp: bool = False
    open: Callable = load_network

    def heads(self, items):
        """(index, InferenceModel) of each item's head (items with .checkpoint and .task), each checkpoint opened
        once, in the order of its first item."""
        by_checkpoint = {}
        for i, item in enumerate(items):
            by_checkpoint.setdefault(item.checkpoint, []).append(i)
        for checkpoint, indices in by_checkpoint.items():
            net = self.open(checkpoint, self.device)
            for i in indices:
                yield i, InferenceModel(net, items[i].task or net.history[-1], self.device, self.batch_size,
                                        name=str(checkpoint), amp=self.amp)


def profile_targets(targets, settings, networks):
    """The modeldiff.Profile of each target, in order."""
    profiles = [None] * len(targets)
    for i, model in tqdm(networks.heads(targets), desc="profiling targets", total=len(targets), disable=None):
        profiles[i] = profile(model, targets[i].task_id, targets[i].test_data(), settings)
    return profiles


def search(targets, candidates, settings, networks=None, compares=None):
    """The table: a Row per target and each candidate that `compares(target, candidate)` (default: every one),
    ordered by target, then candidate. `settings` are the modeldiff.ProfileSettings, `networks` how checkpoints are
    opened (default: Networks() on the CPU)."""
    networks = networks or Networks()
    compares = compares or (lambda target, candidate: True)
    profiles = profile_targets(targets, settings, networks)
    scored = {}
    for j, model in tqdm(networks.heads(candidates), desc="scoring candidates", total=len(candidates),
                         disable=None):
        candidate = candidates[j]
        for i, target in enumerate(targets):
            if compares(target, candidate):
                row = scored[i, j] = Row(target, candidate, model.task, score_candidate(profiles[i], model))
                k, t, scores = candidate.label, target.task_id, row.scores
                log.info(f"DDV cos-cos [{k} => {t}] {scores['ddv_cos']:.5f}, DDV euc-cos [{k} => {t}] "
                         f"{scores['ddv_euc']:.5f}, similarity (euc) {scores['sim_euc']:.5f}")
    return [row for _, row in sorted(scored.items())]


def pick(rows, rule="similar"):
    """{target id: its chosen Row} by the selection `rule` (results.SELECTION_RULES: the largest value of its
    column), in the order of the rows; of equal scores the first row's candidate."""
    column = SELECTION_RULES[rule]
    picks = {}
    for row in rows:
        score, best = row.scores[column], picks.get(row.target.task_id)
        if not math.isnan(score) and (best is None or score > best.scores[column]):
            picks[row.target.task_id] = row
    return picks
