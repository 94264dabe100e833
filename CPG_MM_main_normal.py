"""CPG training of one task: a backbone from scratch or a target on top of a backbone checkpoint (Compacting,
Picking and Growing, Hung et al. 2019), in the modes `finetune` (train the task at one width), `prune` (one
gradual-pruning stage) and `inference` (evaluate a task of a checkpoint).

The stage scripts run the same training steps (utils/pipeline/cpg_steps.py) in one process, widening and pruning
in turn (run_pickaback/wo_backbone.sh, w_backbone_MM.sh). This entry point runs one step, with the original's flags
and exit codes. Unset flags take the variables of run_pickaback/wo_backbone.sh, or of w_backbone_MM.sh when a
target is finetuned on a checkpoint (--load_folder / --load_checkpoint); in --mode prune, --lr and --epochs are
PRUNING_LR and NR_EPOCH_FOR_EACH_PRUNE. A step's resume state lives in the folder it writes (<save_folder>/ for
finetune, <save_folder>/<target_sparsity>/ for prune), where the stage scripts keep theirs: a step killed under one
is continued by the other. Exit codes:
  0  done (finetune: criterion met, or at max width; prune: stage done)
  2  finetune: criterion not met below max width -> rerun with a wider network ("It's time to expand the Network")
  3  --jsonfile (baseline accuracies) missing
  5  finetune: the task owns no weights, so there is nothing to prune
  6  prune: stop pruning (train accuracy <= 0.95 after the stage, or the sparsity upper bound is reached)
  255 prune without a record file (run finetune first)
  1  any other user error (bad path, config, flag), printed as one sentence

    python CPG_MM_main_normal.py --mode finetune --dataset_config demo --dataset group1 --epochs 10 \
        --save_folder R/scratch --jsonfile logs_perceiver_io/baseline_demo_acc.txt \
        --pruning_ratio_to_acc_record_file R/gradual_prune/record.txt --log_path R/train.log
    python CPG_MM_main_normal.py --mode inference --dataset_config demo --dataset group1 --load_folder R/scratch
"""
import json
import logging
import sys
from pathlib import Path

import torch

from models.build import Network
from utils.checkpoint import baseline_accuracy, read_record, update_json
from utils.data import load_task, model_config
from utils.errors import UserError, report_user_errors
from utils.layout import TaskFolder, sparsity_key
from utils.manifest import task_checkpoint
from utils.pipeline.cli import SPARSITY, add_settings_arguments, add_task_arguments, entry_run, parser, settings_from
from utils.pipeline.cpg_steps import FinetuneStep, PruneStep, finetune_at, prune_stage, step_resume
from utils.pipeline.lifecycle import task_curves, task_log
from utils.pipeline.settings import BackboneSettings, TargetSettings
from utils.runtime import setup_logging
from utils.trainer import Outcome, begin, evaluate_task, finish_task, save_task_checkpoint

log = logging.getLogger("root")
EXIT_EXPAND, EXIT_NO_BASELINE, EXIT_NOTHING_TO_PRUNE, EXIT_STOP_PRUNING, EXIT_NO_RECORD = 2, 3, 5, 6, 255
EXIT_CODES = {Outcome.DONE: 0, Outcome.EXPAND: EXIT_EXPAND, Outcome.NOTHING_TO_PRUNE: EXIT_NOTHING_TO_PRUNE,
              Outcome.STOP_PRUNING: EXIT_STOP_PRUNING}


def parse_args(argv=None):
    p = parser(__doc__)
    add_task_arguments(p, expname="CPG")
    add_settings_arguments(p, BackboneSettings, skip=("pruning_schedule", "width_step", "pruning_lr",
                                                      "nr_epoch_for_each_prune"))
    p.add_argument("--save_folder", default=None, help="folder for checkpoint-<epochs>.pth.tar (prune: "
                   "<save_folder>/<target_sparsity>/)")
    p.add_argument("--load_folder", default=None, help="checkpoint folder to start from (prune: "
                   "<load_folder>/<initial_sparsity>/ when initial_sparsity > 0); none = train from scratch")
    p.add_argument("--load_checkpoint", default=None, help="checkpoint file to start from (overrides --load_folder;"
                   " e.g. a k/v-transferred backbone)")
    p.add_argument("--mode", default="finetune", choices=["finetune", "prune", "inference"], help="what to do")
    p.add_argument("--initial_sparsity", type=SPARSITY, default=0.0, help="prune: sparsity at the stage's start")
    p.add_argument("--target_sparsity", type=SPARSITY, default=0.1,
                   help="prune: sparsity at the stage's end (above --initial_sparsity)")
    p.add_argument("--jsonfile", "--baseline_acc_file", dest="jsonfile", default=None,
                   help="baseline accuracy JSON (logs_perceiver_io/baseline_<cfg>_acc.txt)")
    p.add_argument("--pruning_ratio_to_acc_record_file", default=None, help="record.txt {sparsity: accuracy}")
    p.add_argument("--log_path", default=None, help="training log, appended (default: <save_folder>/train.log)")
    p.add_argument("--logits_out", default=None, help="inference: torch.save the test-set logits here, in order")
    return p.parse_args(argv)


def starting_checkpoint(args):
    if args.load_checkpoint:
        return Path(args.load_checkpoint)
    if not args.load_folder:
        return None
    folder = Path(args.load_folder)
    if args.mode == "prune" and args.initial_sparsity > 0:
        folder = folder / sparsity_key(args.initial_sparsity)
    return task_checkpoint(folder, "run the stage that writes it first, or give --load_checkpoint")


def mode_settings(args, start):
    """The stage settings the flags describe: a target's (w_backbone_MM.sh) when finetuning on a checkpoint, else a
    backbone's (wo_backbone.sh); in prune mode --lr and --epochs set the pruning stage's rate and epochs."""
    if args.mode == "prune":
        return settings_from(args, BackboneSettings, pruning_lr="init_lr", nr_epoch_for_each_prune="epochs")
    return settings_from(args, TargetSettings if start else BackboneSettings)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    log_path = args.log_path or (TaskFolder(Path(args.save_folder)).log if args.save_folder else None)
    setup_logging()
    with task_log(log_path):
        sys.exit(EXIT_CODES[run_step(args)])


def run_step(args):
    """The step the flags name; returns its Outcome (inference: DONE)."""
    s = mode_settings(args, args.load_checkpoint or args.load_folder)    # every flag checked before anything is read
    if args.mode == "prune" and args.target_sparsity <= args.initial_sparsity:
        raise UserError(f"--target_sparsity {args.target_sparsity} must be above --initial_sparsity "
                        f"{args.initial_sparsity}: a pruning stage raises the sparsity.")
    baseline = None
    if args.mode != "inference":
        baseline = baseline_accuracy(args.jsonfile, args.dataset, exit_code=EXIT_NO_BASELINE)
        if not args.save_folder:
            raise UserError(f"--mode {args.mode} needs --save_folder.")
    record_file = args.pruning_ratio_to_acc_record_file
    if args.mode == "prune" and not (record_file and Path(record_file).is_file()):
        raise UserError(f"record file {record_file} does not exist: run --mode finetune first.",
                        exit_code=EXIT_NO_RECORD)
    record = read_record(record_file) if args.mode == "prune" else None
    run = entry_run(args)
    start = starting_checkpoint(args)
    if start is None and args.mode != "finetune":
        raise UserError(f"--mode {args.mode} needs --load_folder or --load_checkpoint.")
    data = load_task(run.cfg, args.dataset, batch_size=s.batch_size, seed=s.seed, device=s.device,
                     num_classes=s.num_classes, amp=s.amp, epochs=s.epochs, **run.loader)
    begin(data, s.seed)                                       # the initial weights depend on the seed only
    # a start checkpoint must have the hyperparameters the config gives, which shape the task's data
    net = Network.load(start, model_config(run.cfg)) if start else Network.new(model_config(run.cfg))
    if start:
        log.info(f"loaded {start} (tasks {net.history})")
    if args.mode == "inference":
        inference(args, net, data)
        return Outcome.DONE
    folder = TaskFolder(Path(args.save_folder))
    csv_path = Path(args.log_path).with_name(folder.csv.name) if args.log_path else folder.csv    # beside the log
    data_settings = run.data_settings(args.dataset)
    # the curves are named as the stage scripts name them: after the task's folder, the one above --save_folder
    curves = task_curves(run, s, Path(args.save_folder).resolve().parent, args.dataset)
    outcome, acc, key, folder, step, resume = train_step(args, s, run, net, data, start, baseline, record, csv_path,
                                                         data_settings, curves)
    if acc is not None:
        if record_file:
            update_json(record_file, {key: round(acc, 4)})
        finish_task(net, args.dataset)
        log.info(f"saved {save_task_checkpoint(net, run.cfg, folder, step.epochs)}")
    resume.clear()
    return outcome


def train_step(args, s, run, net, data, start, baseline, record, csv_path, data_settings, curves):
    """The finetuning or pruning step the flags name: (outcome, accuracy, record key, folder, step, resume)."""
    if args.mode == "finetune":
        key, folder, step = "0.0", Path(args.save_folder), FinetuneStep.of(s)
        resume = step_resume(folder, step, baseline, start, data_settings)
        outcome, acc, _ = finetune_at(net, data, step, s.network_width_multiplier, baseline, csv_path, resume,
                                      curves)
    else:
        if not net.history or net.history[-1] != args.dataset:
            raise UserError(f"{start} was trained last on {net.history[-1] if net.history else 'nothing'}, "
                            f"not {args.dataset}: prune the task the checkpoint ends with.")
        step = PruneStep.of(s, args.initial_sparsity, args.target_sparsity)
        key = sparsity_key(args.target_sparsity)
        folder = Path(args.save_folder) / key
        resume = step_resume(folder, step, baseline, start, data_settings)
        outcome, acc = prune_stage(net, data, step, baseline, record["0.0"], csv_path, resume, curves)
    return outcome, acc, key, folder, step, resume


def inference(args, net, data):
    if args.dataset not in net.history:
        raise UserError(f"the checkpoint has no task {args.dataset} (it has {net.history}).")
    _, acc, logits = evaluate_task(net, data, return_logits=True)
    if args.logits_out:
        Path(args.logits_out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(logits, args.logits_out)
    print(json.dumps({"dataset": args.dataset, "accuracy": round(acc, 4), "tasks": net.history}))


if __name__ == "__main__":
    main()
