"""Backbone search: for each target task, pick the task whose baseline model decides most like the target's
(ModelDiff with decision distance vectors; spec §1.4, §8, §10.1, §10.10).

    python pickaback_perceiverIO.py --dataset_config demo --target_id 3
    python pickaback_perceiverIO.py --dataset_config demo --target_id all --candidates cross
    python pickaback_perceiverIO.py --dataset_config oxford --target_id 1 --selection original

Every target is compared with every other task's baseline model (checkpoints_perceiver_io/baseline_scratch/
perceiver_io/<cfg>/<group>/). Profiling inputs are a seeded, class-balanced sample of the target's test data,
refined by ModelDiff's mutation search on the target model; each candidate runs on the same inputs through its own
head, a candidate of the other modality through the target's input adapter and k/v projection (the k/v swap).
Writes pickaback_<cfg>_result.csv (target_id,task_id) and pickback_<cfg>_table.csv
(target_id,task_id,ddv_cos,ddv_euc,sim_cos,sim_euc), replacing the rows of the targets searched, and logs
`Selected backbone for target T = (euc) K`.
"""
import argparse
import logging

import pandas as pd
from tqdm.contrib.logging import logging_redirect_tqdm

from packnet_models_pickaback import InferenceModel, baseline_folder
from utils.checkpoint import find_checkpoint
from utils.config import load_dataset_config
from utils.data import task_dataset
from utils.errors import UserError, report_user_errors
from utils.runtime import add_common_arguments, seed_everything, select_device, setup_logging
from utils_pickaback.modeldiff import ProfileSettings, search
from utils_pickaback.results import SELECTION_RULES, select_backbones, write_results

CANDIDATE_CHOICES = ("all", "same", "cross")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="perceiver_io", choices=["perceiver_io"], help="network architecture")
    p.add_argument("--dataset_config", default="oxford", help="section of utils/dataset_config.yaml")
    p.add_argument("--target_id", default="all",
                   help="target task id (1-based), several as 1,3,5, or 'all' for every task of the config")
    p.add_argument("--candidates", default="all", choices=CANDIDATE_CHOICES,
                   help="candidate backbones: every other task, or only those of the target's modality (same) or "
                        "of the other modality (cross)")
    p.add_argument("--selection", default="similar", choices=list(SELECTION_RULES),
                   help="similar: the most similar candidate (largest Euclidean-DDV similarity); original: the "
                        "largest Euclidean-DDV distance, the original code's rule (reproduces its published picks)")
    p.add_argument("--profile_size", type=int, default=32, help="profiling inputs per target (class-balanced)")
    p.add_argument("--epsilon", type=float, default=0.1, help="mutation step of the profiling-input search")
    p.add_argument("--iterations", type=int, default=100, help="mutation attempts of the profiling-input search")
    p.add_argument("--batch_size", type=int, default=32, help="inputs per forward pass")
    p.add_argument("--checkpoint_root", default="checkpoints_perceiver_io",
                   help="root of the stage checkpoints (baselines under baseline_scratch/<arch>/<cfg>/<group>)")
    p.add_argument("--out_dir", default=".",
                   help="folder of the result and table CSVs (default: the working folder, the repository root "
                        "when run from there or by run_pickaback/find_backbone.sh)")
    p.add_argument("--log_path", default=None, help="also append the log to this file")
    add_common_arguments(p)
    return p.parse_args(argv)


def target_ids(cfg, spec):
    if str(spec).lower() == "all":
        return list(range(1, len(cfg.groups) + 1))
    try:
        ids = sorted({int(t) for t in str(spec).split(",")})
    except ValueError:
        raise UserError(f"--target_id {spec} is not a task id: give 1..{len(cfg.groups)}, a list like 1,3 or "
                        f"'all'.") from None
    for t in ids:
        cfg.task_name(t)                                                     # range check with a clear error
    return ids


def candidate_ids(cfg, target, which):
    modality = cfg.modality(cfg.task_name(target))
    ids = [k for k in range(1, len(cfg.groups) + 1) if k != target]
    if which == "same":
        return [k for k in ids if cfg.modality(cfg.task_name(k)) == modality]
    if which == "cross":
        return [k for k in ids if cfg.modality(cfg.task_name(k)) != modality]
    return ids


def baseline_checkpoints(cfg, task_ids, checkpoint_root, arch):
    """{task id: baseline checkpoint path}; one error naming every task without one."""
    paths, missing = {}, []
    for k in task_ids:
        folder = baseline_folder(checkpoint_root, arch, cfg, cfg.task_name(k))
        try:
            paths[k] = find_checkpoint(folder)
        except UserError:
            missing.append(str(folder))
    if missing:
        raise UserError(f"no baseline checkpoint (checkpoint-<epoch>.pth.tar) in {', '.join(missing)}: run "
                        f"run_pickaback/baseline.sh {cfg.name} first.")
    return paths


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.log_path)
    log = logging.getLogger("root")
    cfg = load_dataset_config(args.dataset_config, args.data_root, check_folders=False)
    targets = target_ids(cfg, args.target_id)
    candidates_of = {t: candidate_ids(cfg, t, args.candidates) for t in targets}
    empty = [t for t, ks in candidates_of.items() if not ks]
    if empty:
        raise UserError(f"target(s) {', '.join(map(str, empty))} of config '{cfg.name}' have no candidate with "
                        f"--candidates {args.candidates}: use --candidates all.")
    needed = sorted(set(targets) | {k for ks in candidates_of.values() for k in ks})
    checkpoints = baseline_checkpoints(cfg, needed, args.checkpoint_root, args.arch)
    for t in targets:
        cfg.check_task_data(cfg.task_name(t))
    device = select_device(args.device)
    seed_everything(args.seed)
    settings = ProfileSettings(args.profile_size, args.epsilon, args.iterations, args.seed)
    log.info(f"backbone search on '{cfg.name}': targets {targets}, candidates {args.candidates}, selection "
             f"{args.selection}, {settings}, device {device}")

    def load(task_id):
        model = InferenceModel.load(checkpoints[task_id], device=device, batch_size=args.batch_size)
        if model.task != cfg.task_name(task_id):
            log.warning(f"{checkpoints[task_id]} holds task {model.task}, not {cfg.task_name(task_id)}; comparing it "
                        f"as task {task_id}")
        return model

    def test_data(task_id):
        return task_dataset(cfg, cfg.task_name(task_id), "test", device)

    with logging_redirect_tqdm():
        rows = search(candidates_of, load, test_data, settings)
    picks = select_backbones(pd.DataFrame(rows), args.selection)
    for t, k in picks.items():
        log.info(f"Selected backbone for target {t} = (euc) {k}")
    result, table = write_results(args.out_dir, cfg.name, rows, picks)
    log.info(f"wrote {result} and {table}")
    return picks


if __name__ == "__main__":
    main()
