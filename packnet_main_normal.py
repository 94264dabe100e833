"""Baseline stage for one task: train an independent single-task Perceiver IO (the PackNet-style baseline).

Its last-epoch test accuracy goes into the baseline accuracy file (`logs_perceiver_io/baseline_<cfg>_acc.txt`,
`{"<group>": "0.xxxx"}`), the criterion of every later stage, and its checkpoint is what the backbone search
(ModelDiff) compares. run_pickaback/baseline.sh runs every task through the same function
(utils/pipeline/baseline.py), with the same settings (the flags' defaults are that script's variables), the same
stage.json and the same resume state: a task finished or half-trained by one is skipped or continued by the other.

    python packnet_main_normal.py --dataset_config demo --dataset group1 --epochs 5 \
        --save_folder checkpoints_perceiver_io/baseline_scratch/perceiver_io/demo/group1 \
        --logfile logs_perceiver_io/baseline_demo_acc.txt
"""
import argparse
from pathlib import Path

from utils.errors import report_user_errors
from utils.pipeline.baseline import baseline_task, check_inputs
from utils.pipeline.cli import add_settings_arguments, add_task_arguments, entry_run, parser, settings_from
from utils.pipeline.settings import BaselineSettings
from utils.runtime import setup_logging


def parse_args(argv=None):
    p = parser(__doc__)
    add_task_arguments(p, expname="baseline")
    add_settings_arguments(p, BaselineSettings)
    p.add_argument("--save_folder", required=True, help="folder for checkpoint-<epochs>.pth.tar and stage.json")
    p.add_argument("--logfile", "--baseline_acc_file", "--jsonfile", dest="baseline_acc_file", required=True,
                   help="baseline accuracy JSON to update")
    p.add_argument("--log_path", default=None, help="training log (default: <save_folder>/train.log)")
    p.add_argument("--mode", default="finetune", choices=["finetune"], help=argparse.SUPPRESS)   # the original's
    return p.parse_args(argv)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    s = settings_from(args, BaselineSettings)
    acc_file = Path(args.baseline_acc_file)
    check_inputs(acc_file)                                    # a broken accuracy file stops us before training
    setup_logging()
    run = entry_run(args)
    return baseline_task(run, s, run.task_ids[0], folder=Path(args.save_folder), acc_file=acc_file,
                         log_path=args.log_path)


if __name__ == "__main__":
    main()
