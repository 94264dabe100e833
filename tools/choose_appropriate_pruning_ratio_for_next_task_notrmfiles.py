"""Choose a backbone's pruning ratio: the largest ratio whose accuracy stays within --allow_acc_loss of the
task's baseline, and place that stage's checkpoint in gradual_prune/ where the target stage finds it.

    python tools/choose_appropriate_pruning_ratio_for_next_task_notrmfiles.py --dataset group1 \
        --pruning_ratio_to_acc_record_file R/gradual_prune/record.txt \
        --baseline_acc_file logs_perceiver_io/baseline_demo_acc.txt --log_path R/train.log

The stage script run_pickaback/select_pruning_ratio_of_backbone.sh chooses for every task through the same function
(utils/pipeline/choice.py, which reads the backbone's width from its checkpoint); this tool chooses for one, from
the files its flags name. Rule: go through the recorded ratios from the largest down and take the first r with
acc[r] + allow_acc_loss >= criterion. The criterion is the baseline accuracy, except at maximum width with the
unpruned model (record "0.0") already below the baseline: then it is the unpruned accuracy. No ratio -> the scratch
checkpoint. Folders are not removed ("notrmfiles"); an earlier choice in gradual_prune/ and its k/v-transferred
files are replaced, after the record and baseline are checked.
"""
import argparse
from pathlib import Path

from utils.checkpoint import baseline_accuracy, read_record
from utils.errors import report_user_errors
from utils.layout import TaskFolder
from utils.manifest import task_checkpoint
from utils.pipeline.choice import choose
from utils.pipeline.cli import add_settings_arguments, settings_from
from utils.pipeline.lifecycle import task_log
from utils.pipeline.settings import ChoiceSettings
from utils.runtime import setup_logging


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pruning_ratio_to_acc_record_file", required=True, help="R/gradual_prune/record.txt")
    p.add_argument("--baseline_acc_file", required=True, help="logs_perceiver_io/baseline_<cfg>_acc.txt")
    add_settings_arguments(p, ChoiceSettings)
    p.add_argument("--dataset", required=True, help="task (group) name")
    p.add_argument("--network_width_multiplier", type=float, default=1.0, help="width of the backbone")
    p.add_argument("--max_allowed_network_width_multiplier", type=float, default=1.0, help="its maximum width")
    p.add_argument("--log_path", default=None, help="log file to append to (R/train.log)")
    return p.parse_args(argv)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    s = settings_from(args, ChoiceSettings)
    record_file = Path(args.pruning_ratio_to_acc_record_file)
    record = read_record(record_file)                         # checked before anything is replaced
    criterion = baseline_accuracy(args.baseline_acc_file, args.dataset, exit_code=1)
    gradual_prune = record_file.parent

    def checkpoint_of(key):
        folder = gradual_prune / key if key != "0.0" else TaskFolder(gradual_prune.parent).scratch
        return task_checkpoint(folder, "run run_pickaback/wo_backbone.sh first")

    setup_logging()
    with task_log(args.log_path):
        at_max = args.network_width_multiplier >= args.max_allowed_network_width_multiplier
        choose(args.dataset, record, criterion, s.allow_acc_loss, at_max, checkpoint_of, gradual_prune)


if __name__ == "__main__":
    main()
