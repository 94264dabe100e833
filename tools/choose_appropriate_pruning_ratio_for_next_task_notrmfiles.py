"""Choose a backbone's pruning ratio: the largest ratio whose accuracy stays within --allow_acc_loss of the
task's baseline (spec §7), and place that stage's checkpoint in gradual_prune/ where the target stage finds it.

    python tools/choose_appropriate_pruning_ratio_for_next_task_notrmfiles.py --dataset group1 \
        --pruning_ratio_to_acc_record_file R/gradual_prune/record.txt \
        --baseline_acc_file logs_perceiver_io/baseline_demo_acc.txt --log_path R/train.log

Rule: go through the recorded ratios from the largest down and take the first r with
acc[r] + allow_acc_loss >= criterion. The criterion is the baseline accuracy — except when the network is at its
maximum width and the unpruned model (record "0.0") is already below the baseline: then no ratio could reach the
baseline, and the criterion becomes the unpruned accuracy, so pruning may cost at most allow_acc_loss of what the
task reached. (The original chose 0.95 outright in that case, spec §7.) No ratio -> the scratch checkpoint.
Folders are not removed ("notrmfiles"); earlier choices in gradual_prune/ are replaced.
"""
import argparse
import logging
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.checkpoint import CHECKPOINT_RE, find_checkpoint, read_json  # noqa: E402
from utils.errors import UserError, report_user_errors  # noqa: E402
from utils.runtime import setup_logging  # noqa: E402


def choose_ratio(record, criterion, allow_acc_loss, at_max_width):
    """The chosen record key, or None for scratch."""
    record = dict(record)
    acc0 = float(record.pop("0.0", 0.0))
    if at_max_width and acc0 < criterion:
        criterion = acc0
    for key in sorted(record, key=float, reverse=True):
        if float(record[key]) + allow_acc_loss >= criterion:
            return key
    return None


def place_checkpoint(source_folder, gradual_prune):
    """Copy the chosen checkpoint into gradual_prune/, replacing an earlier choice and the k/v-transferred files
    made from it (run_pickaback/transfer_kv.sh makes them again from the new choice)."""
    for old in gradual_prune.iterdir():
        if old.is_file() and (CHECKPOINT_RE.match(old.name) or "_kv_transfer_" in old.name):
            old.unlink()
    src = find_checkpoint(source_folder)
    shutil.copy2(src, gradual_prune / src.name)
    return gradual_prune / src.name


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
    setup_logging(args.log_path)
    log = logging.getLogger("root")
    record_file = Path(args.pruning_ratio_to_acc_record_file)
    record = read_json(record_file)
    if record is None:
        raise UserError(f"record file {record_file} does not exist: run run_pickaback/wo_backbone.sh first.")
    baselines = read_json(args.baseline_acc_file)
    if baselines is None or args.dataset not in baselines:
        raise UserError(f"{args.baseline_acc_file} has no accuracy for {args.dataset}: run "
                        f"run_pickaback/baseline.sh first.")
    criterion = float(baselines[args.dataset])
    at_max = args.network_width_multiplier >= args.max_allowed_network_width_multiplier
    key = choose_ratio(record, criterion, args.allow_acc_loss, at_max)
    gradual_prune = record_file.parent
    if key is None:
        log.info("We select scratch")
        placed = place_checkpoint(gradual_prune.parent / "scratch", gradual_prune)
        key = "0.0"
    else:
        placed = place_checkpoint(gradual_prune / key, gradual_prune)
    log.info(f"We choose pruning ratio {key}")
    log.info(f"{args.dataset}: {placed} (record {record}, criterion {criterion})")


if __name__ == "__main__":
    main()
