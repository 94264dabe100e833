"""Choose a backbone's pruning ratio: the largest ratio whose accuracy stays within --allow_acc_loss of the
task's baseline, and place that stage's checkpoint in gradual_prune/ where the target stage finds it.

    python tools/choose_appropriate_pruning_ratio_for_next_task_notrmfiles.py --dataset group1 \
        --pruning_ratio_to_acc_record_file R/gradual_prune/record.txt \
        --baseline_acc_file logs_perceiver_io/baseline_demo_acc.txt --log_path R/train.log

The stage script run_pickaback/select_pruning_ratio_of_backbone.sh does this for every task (utils/stages.py, which
also reads the backbone's width from its checkpoint); this tool does it for one. Rule: go through the recorded
ratios from the largest down and take the first r with acc[r] + allow_acc_loss >= criterion. The criterion is the
baseline accuracy, except at maximum width with the unpruned model (record "0.0") already below the baseline: then
it is the unpruned accuracy. No ratio -> the scratch checkpoint. Folders are not removed ("notrmfiles"); an earlier
choice in gradual_prune/ and its k/v-transferred files are replaced, after the record and baseline are checked.
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.checkpoint import baseline_accuracy, read_record  # noqa: E402
from utils.errors import report_user_errors  # noqa: E402
from utils.layout import task_checkpoint  # noqa: E402
from utils.runtime import setup_logging  # noqa: E402
from utils.stages import choose_ratio, place_choice  # noqa: E402


@report_user_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pruning_ratio_to_acc_record_file", required=True, help="R/gradual_prune/record.txt")
    p.add_argument("--baseline_acc_file", required=True, help="logs_perceiver_io/baseline_<cfg>_acc.txt")
    p.add_argument("--allow_acc_loss", type=float, default=0.001, help="accuracy a ratio may lose")
    p.add_argument("--dataset", required=True, help="task (group) name")
    p.add_argument("--network_width_multiplier", type=float, default=1.0, help="width of the backbone")
    p.add_argument("--max_allowed_network_width_multiplier", type=float, default=1.0, help="its maximum width")
    p.add_argument("--log_path", default=None, help="log file to append to (R/train.log)")
    args = p.parse_args(argv)
    record_file = Path(args.pruning_ratio_to_acc_record_file)
    record = read_record(record_file)                         # checked before anything is replaced
    criterion = baseline_accuracy(args.baseline_acc_file, args.dataset, exit_code=1)
    setup_logging(args.log_path)
    log = logging.getLogger("root")
    at_max = args.network_width_multiplier >= args.max_allowed_network_width_multiplier
    key = choose_ratio(record, criterion, args.allow_acc_loss, at_max)
    gradual_prune = record_file.parent
    source_folder = gradual_prune / key if key else gradual_prune.parent / "scratch"
    source = task_checkpoint(source_folder, "run run_pickaback/wo_backbone.sh first")
    if key is None:
        log.info("We select scratch")
    placed = place_choice(source, gradual_prune)
    log.info(f"We choose pruning ratio {key or '0.0'}")
    log.info(f"{args.dataset}: {placed} (record {record}, criterion {criterion})")


if __name__ == "__main__":
    main()
