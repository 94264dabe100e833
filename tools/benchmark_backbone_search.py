"""Wall time of a backbone search over all T targets: one profile per target, reused for every candidate (what
pickaback_perceiverIO.py does), against a profile search per (target, candidate) pair.

    python tools/benchmark_backbone_search.py
    python tools/benchmark_backbone_search.py --tasks 4 8 --iterations 50

Uses tiny untrained networks (half image, half text tasks) and random test data, so it measures the search, not the
models. The shared scheme is utils_pickaback.candidates.search, each task's network a candidate held in memory; the
per-pair scheme calls the same functions of utils_pickaback.modeldiff with the same seeds and must give the same
table; it exists only here.
"""
import argparse
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")
import torch

from models.build import Network
from packnet_models_pickaback import InferenceModel
from utils_pickaback.candidates import Candidate, Networks, Target, search
from utils_pickaback.modeldiff import ProfileSettings, profile, score_candidate

TINY = dict(num_freq_bands=2, max_freq=4.0, depth=1, num_latents=8, latent_dim=32, cross_heads=1, cross_dim_head=16,
            latent_heads=2, latent_dim_head=16, ff_mult=2, text_dim=16, max_text_length=8)
IMAGE_SIZE, CLASSES, TEST_PER_CLASS = 8, 3, 12


class RandomTask:
    """A test set of random inputs of one modality: items {'x', ['mask',] 'y'}, labels in `targets`."""

    def __init__(self, modality, generator):
        n = CLASSES * TEST_PER_CLASS
        self.targets = [i % CLASSES for i in range(n)]
        if modality == "image":
            self.x, self.mask = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator), None
        else:
            length = TINY["max_text_length"]
            self.x = torch.randn(n, length, TINY["text_dim"], generator=generator)
            lengths = torch.randint(1, length + 1, (n, 1), generator=generator)
            self.mask = torch.arange(length).unsqueeze(0) < lengths

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        item = {"x": self.x[i], "y": self.targets[i]}
        return item if self.mask is None else {**item, "mask": self.mask[i]}


def tiny_tasks(num_tasks, seed):
    """{task id: InferenceModel} and {task id: RandomTask}: the first half image tasks, the second half text."""
    models, data = {}, {}
    g = torch.Generator().manual_seed(seed)
    for task_id in range(1, num_tasks + 1):
        modality = "image" if task_id <= num_tasks // 2 else "text"
        torch.manual_seed(seed + task_id)
        net = Network.new(TINY)
        net.start_task(f"task{task_id}", modality, CLASSES)
        models[task_id] = InferenceModel(net, f"task{task_id}")
        data[task_id] = RandomTask(modality, g)
    return models, data


def shared(candidates_of, models, data, settings):
    """The search's scheme: every task a target and a candidate, its network opened from memory by task id."""
    targets = [Target(t, t, lambda t=t: data[t]) for t in sorted(candidates_of)]
    candidates = [Candidate(k, k) for k in sorted(models)]
    rows = search(targets, candidates, settings, Networks(open=lambda k, device: models[k].net),
                  compares=lambda target, candidate: candidate.holder in candidates_of[target.task_id])
    return [{"target_id": r.target.task_id, "task_id": r.candidate.holder, **r.scores} for r in rows]


def per_pair(candidates_of, models, data, settings):
    """The scheme the search avoids: the target's profile searched again for every candidate."""
    rows = []
    for t in sorted(candidates_of):
        for k in candidates_of[t]:
            target_profile = profile(models[t], t, data[t], settings)
            rows.append({"target_id": t, "task_id": k, **score_candidate(target_profile, models[k])})
    return rows


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, nargs="+", default=[4, 8, 16], help="numbers of tasks T to time")
    p.add_argument("--profile_size", type=int, default=32, help="profiling inputs per target")
    p.add_argument("--iterations", type=int, default=100, help="mutation attempts per profile")
    p.add_argument("--epsilon", type=float, default=0.1, help="mutation step")
    p.add_argument("--seed", type=int, default=2, help="random seed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models run best on one)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = ProfileSettings(args.profile_size, args.epsilon, args.iterations, args.seed)
    print(f"backbone search over all targets, tiny untrained models, {settings}, {args.threads} thread(s)")
    print(f"{'T':>4} {'pairs':>6} {'shared profiles (s)':>20} {'profile per pair (s)':>21} {'ratio':>7}  same table")
    for num_tasks in args.tasks:
        models, data = tiny_tasks(num_tasks, args.seed)
        candidates_of = {t: [k for k in models if k != t] for t in models}
        shared_rows, shared_s = timed(shared, candidates_of, models, data, settings)
        pair_rows, pair_s = timed(per_pair, candidates_of, models, data, settings)
        same = shared_rows == pair_rows
        print(f"{num_tasks:>4} {len(shared_rows):>6} {shared_s:>20.2f} {pair_s:>21.2f} {pair_s / shared_s:>7.1f}  "
              f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
