"""Backbone search: for each target task, pick the task whose baseline model decides most like the target's
(ModelDiff with decision distance vectors). run_pickaback/find_backbone.sh runs the same search through
utils/stages.py, which also skips targets already searched with the same settings and models.

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
from pathlib import Path

from utils.config import load_dataset_config
from utils.errors import report_user_errors
from utils.layout import Layout
from utils.runtime import add_common_arguments, seed_everything, select_device, setup_logging
from utils_pickaback.backbone_search import CANDIDATE_CHOICES, plan, run_search, target_ids
from utils_pickaback.modeldiff import ProfileSettings
from utils_pickaback.results import RESULT_COLUMNS, SELECTION_RULES, TABLE_COLUMNS, read_rows, write_results


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


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.log_path)
    log = logging.getLogger("root")
    cfg = load_dataset_config(args.dataset_config, args.data_root, check_folders=False)
    layout = Layout(Path(args.out_dir), cfg.name, args.arch, Path(args.checkpoint_root))
    targets = target_ids(cfg, args.target_id)
    for path, columns in ((layout.result_csv, RESULT_COLUMNS), (layout.table_csv, TABLE_COLUMNS)):
        read_rows(path, columns, len(cfg.groups))             # both files can be merged into, before the search
    candidates_of, checkpoints = plan(cfg, layout, targets, args.candidates)
    device = select_device(args.device, args.amp)
    seed_everything(args.seed)
    settings = ProfileSettings(args.profile_size, args.epsilon, args.iterations, args.seed)
    log.info(f"backbone search on '{cfg.name}': targets {targets}, candidates {args.candidates}, selection "
             f"{args.selection}, {settings}, device {device}")
    rows, picks = run_search(cfg, candidates_of, checkpoints, settings, args.selection, device, args.batch_size,
                             args.amp)
    result, table = write_results(layout.result_csv, layout.table_csv, rows, picks, len(cfg.groups))
    log.info(f"wrote {result} and {table}")
    return picks


if __name__ == "__main__":
    main()
