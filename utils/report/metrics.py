"""Continual-learning metrics on an accuracy matrix, as pure functions, in Avalanche's conventions.

A[j][i] is the accuracy on task i measured after training task j (rows: training steps in order, columns: tasks in
the same order); t is the last row. Entries that were not measured are NaN (e.g. a task before it was trained).

    average accuracy   ACC    = mean_i A[t, i]                      (the last row; Avalanche's stream accuracy
                                                                     after the last experience, for equal test sizes)
    forgetting         f_i    = A[i, i] - A[t, i]      for i < t    (Avalanche's Forgetting: accuracy right after
                                                                     task i was trained minus the accuracy now)
    stream forgetting  F      = mean_{i<t} f_i
    backward transfer  BWT_i  = A[t, i] - A[i, i] = -f_i;  BWT = mean_{i<t} BWT_i = -F
    forward transfer   FWT    = acc(with transfer) - acc(reference)  (Avalanche: A[i-1, i] - b_i, the accuracy on a
                                                                     task before training it minus an initial model's;
                                                                     Pick-a-back's reference is the task's own baseline
                                                                     model and "with transfer" the task trained on its
                                                                     backbone)
The last task has no forgetting (f_t = 0 by definition) and is left out of the means, as in Avalanche.
"""
import math

import numpy as np


def as_matrix(acc):
    """A square float matrix (NaN where not measured) from a list of rows or an array."""
    a = np.asarray(acc, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"an accuracy matrix must be square and non-empty, not of shape {a.shape}")
    return a


def average_accuracy(acc):
    """ACC = mean_i A[t, i]: the mean accuracy over every task after the last one was trained."""
    a = as_matrix(acc)
    return float(np.mean(a[-1]))


def forgetting_per_task(acc):
    """[f_0, ..., f_{t-1}] with f_i = A[i, i] - A[t, i] (positive: the task got worse)."""
    a = as_matrix(acc)
    t = a.shape[0] - 1
    return [float(a[i, i] - a[t, i]) for i in range(t)]


def forgetting(acc):
    """F = mean_{i<t} f_i; NaN for a single task (nothing can be forgotten yet)."""
    values = forgetting_per_task(acc)
    return float(np.mean(values)) if values else math.nan


def bwt_per_task(acc):
    """[BWT_0, ..., BWT_{t-1}] with BWT_i = A[t, i] - A[i, i] = -f_i (negative: the task got worse)."""
    return [0.0 - f for f in forgetting_per_task(acc)]                # 0.0 - 0.0 is +0.0, -0.0 would print "-0"


def backward_transfer(acc):
    """BWT = mean_{i<t} (A[t, i] - A[i, i]) = -F; NaN for a single task."""
    return 0.0 - forgetting(acc)


def forward_transfer(accuracy, reference):
    """FWT = accuracy - reference: what training on the transferred model gained over the reference (a number or
    elementwise over sequences)."""
    if np.ndim(accuracy) == 0 and np.ndim(reference) == 0:
        return float(accuracy) - float(reference)
    return [float(x) - float(r) for x, r in zip(accuracy, reference, strict=True)]


def chain_matrix(backbone_before, backbone_after, target_after, target_before=math.nan):
    """The 2 x 2 accuracy matrix of a backbone -> target chain: rows (after the backbone was trained, after the
    target was trained), columns (backbone task, target task). The target's accuracy before it was trained is
    not measured unless given (the backbone has no head for it)."""
    return np.array([[backbone_before, target_before], [backbone_after, target_after]], dtype=float)
