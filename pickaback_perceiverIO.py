"""Backbone search: for each target task, pick the task whose baseline model decides most like the target's
(ModelDiff with decision distance vectors). run_pickaback/find_backbone.sh runs the same function
(utils/pipeline/search.py) with the same settings (the flags' defaults are that script's variables); both skip
targets already searched with the same settings and models (--force redoes them).

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
from pathlib import Path

from utils.errors import report_user_errors
from utils.layout import Layout
from utils.pipeline.cli import SIZE, add_run_arguments, add_settings_arguments, entry_run, parser, settings_from
from utils.pipeline.search import find_backbone
from utils.pipeline.settings import SearchSettings
from utils.runtime import setup_logging


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--dataset_config", default="oxford", help="section of utils/dataset_config.yaml")
    add_settings_arguments(p, SearchSettings)
    p.add_argument("--batch_size", type=SIZE, default=32, help="inputs per forward pass")
    p.add_argument("--checkpoint_root", default=None,
                   help="root of the stage checkpoints (default: checkpoints_perceiver_io/ of the work folder; "
                        "baselines under baseline_scratch/<arch>/<cfg>/<group>)")
    p.add_argument("--out_dir", default=None,
                   help="folder of the result and table CSVs (default: the work folder, $MMPAB_WORK_DIR or the "
                        "repository, as for run_pickaback/find_backbone.sh)")
    p.add_argument("--log_path", default=None, help="also append the log to this file")
    add_run_arguments(p)
    return p.parse_args(argv)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    s = settings_from(args, SearchSettings)
    setup_logging(args.log_path)
    run = entry_run(args, task_ids="all")
    layout = Layout(Path(args.out_dir) if args.out_dir else run.work_dir, run.cfg.name, s.arch,
                    Path(args.checkpoint_root) if args.checkpoint_root else None)
    return find_backbone(run, s, layout, args.batch_size)


if __name__ == "__main__":
    main()
