"""CPG training of one task: a backbone from scratch or a target on top of a backbone checkpoint (Compacting,
Picking and Growing, Hung et al. 2019), in the modes `finetune` (train the task at a given width), `prune` (one
gradual-pruning stage) and `inference` (evaluate a task of a checkpoint).

The stage scripts do not call this file: they run utils/stages.py, which chains the same training steps in one
process. This entry point is for scripting single steps, with the original's flags and exit codes:
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
import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from models.build import Network
from utils.checkpoint import baseline_accuracy, read_record, update_json
from utils.data import model_config
from utils.errors import UserError, report_user_errors
from utils.layout import file_digest, sparsity_key, task_checkpoint
from utils.runtime import add_common_arguments, add_task_arguments, prepare_task, setup_logging
from utils.trainer import (Outcome, Resume, Trainer, begin, cpg_finetune, cpg_prune, finish_task, save_task_checkpoint,
                           start_cpg_task)

log = logging.getLogger("root")
EXIT_EXPAND, EXIT_NO_BASELINE, EXIT_NOTHING_TO_PRUNE, EXIT_STOP_PRUNING, EXIT_NO_RECORD = 2, 3, 5, 6, 255
EXIT_CODES = {Outcome.DONE: 0, Outcome.EXPAND: EXIT_EXPAND, Outcome.NOTHING_TO_PRUNE: EXIT_NOTHING_TO_PRUNE,
              Outcome.STOP_PRUNING: EXIT_STOP_PRUNING}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(p, expname="CPG")
    p.add_argument("--lr_mask", type=float, default=1e-4, help="Adam learning rate of the piggymask")
    p.add_argument("--save_folder", default=None, help="folder for checkpoint-<epochs>.pth.tar (prune: "
                   "<save_folder>/<target_sparsity>/)")
    p.add_argument("--load_folder", default=None, help="checkpoint folder to start from (prune: "
                   "<load_folder>/<initial_sparsity>/ when initial_sparsity > 0); none = train from scratch")
    p.add_argument("--load_checkpoint", default=None, help="checkpoint file to start from (overrides --load_folder;"
                   " e.g. a k/v-transferred backbone)")
    p.add_argument("--mode", default="finetune", choices=["finetune", "prune", "inference"], help="what to do")
    p.add_argument("--initial_sparsity", type=float, default=0.0, help="prune: sparsity at the stage's start")
    p.add_argument("--target_sparsity", type=float, default=0.1, help="prune: sparsity at the stage's end")
    p.add_argument("--pruning_frequency", type=int, default=10, help="prune: steps between mask updates")
    p.add_argument("--pruning_interval", type=int, default=4, help="prune: epochs over which sparsity rises")
    p.add_argument("--jsonfile", default=None, help="baseline accuracy JSON (logs_perceiver_io/baseline_<cfg>_acc.txt)")
    p.add_argument("--network_width_multiplier", type=float, default=1.0,
                   help="widen every latent feed-forward to this multiple of its base width before training")
    p.add_argument("--max_allowed_network_width_multiplier", type=float, default=1.0,
                   help="the widest the scripts may grow the network")
    p.add_argument("--pruning_ratio_to_acc_record_file", default=None, help="record.txt {sparsity: accuracy}")
    p.add_argument("--log_path", default=None, help="training log, appended (default: <save_folder>/train.log)")
    p.add_argument("--total_num_tasks", type=int, default=5, help="tasks the network must leave room for")
    p.add_argument("--logits_out", default=None, help="inference: torch.save the test-set logits here, in order")
    add_common_arguments(p)
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


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    log_path = args.log_path or (f"{args.save_folder}/train.log" if args.save_folder else None)
    setup_logging(log_path)
    if args.mode != "inference":
        baseline = baseline_accuracy(args.jsonfile, args.dataset, exit_code=EXIT_NO_BASELINE)
        if not args.save_folder:
            raise UserError(f"--mode {args.mode} needs --save_folder.")
    if args.network_width_multiplier > args.max_allowed_network_width_multiplier + 1e-9:
        raise UserError(f"--network_width_multiplier {args.network_width_multiplier} exceeds "
                        f"--max_allowed_network_width_multiplier {args.max_allowed_network_width_multiplier}.")
    record_file = args.pruning_ratio_to_acc_record_file
    if args.mode == "prune":
        if not (record_file and Path(record_file).is_file()):
            raise UserError(f"record file {record_file} does not exist: run --mode finetune first.",
                            exit_code=EXIT_NO_RECORD)
        record = read_record(record_file)

    cfg, data = prepare_task(args)
    start = starting_checkpoint(args)
    if start is None and args.mode != "finetune":
        raise UserError(f"--mode {args.mode} needs --load_folder or --load_checkpoint.")
    begin(data, args.seed)                                    # the initial weights depend on the seed only
    # a start checkpoint must have the hyperparameters the config gives, which shape the task's data
    net = Network.load(start, model_config(cfg)) if start else Network.new(model_config(cfg))
    if start:
        log.info(f"loaded {start} (tasks {net.history})")
    if args.mode == "inference":
        return inference(args, net, data)

    if args.mode == "finetune":
        width = start_cpg_task(net, data, args.network_width_multiplier)
    else:
        if not net.history or net.history[-1] != args.dataset:
            raise UserError(f"{start} was trained last on {net.history[-1] if net.history else 'nothing'}, "
                            f"not {args.dataset}: prune the task the checkpoint ends with.")
        width = net.model.width_multiplier
    log.info(f"{args.expname}: task {args.dataset} ({data.modality}) as task {net.task_id(args.dataset)} of "
             f"{net.history} on {data.device}; width x{width}, {net.num_parameters()} parameters")
    csv_path = Path(log_path).with_name("train.csv") if log_path else None
    key = "0.0" if args.mode == "finetune" else sparsity_key(args.target_sparsity)
    folder = Path(args.save_folder) if args.mode == "finetune" else Path(args.save_folder) / key
    resume = resume_state(args, folder, start, baseline)
    common = dict(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, baseline=baseline,
                  max_width=args.max_allowed_network_width_multiplier, csv_path=csv_path, resume=resume)
    if args.mode == "finetune":
        outcome, acc = cpg_finetune(net, data, lr_mask=args.lr_mask, width=width, recipe=args.recipe, **common)
    else:
        outcome, acc = cpg_prune(net, data, initial=args.initial_sparsity, target=args.target_sparsity,
                                 frequency=args.pruning_frequency, interval=args.pruning_interval,
                                 total_num_tasks=args.total_num_tasks, unpruned_acc=record["0.0"], **common)
    if acc is not None:
        if record_file:
            update_json(record_file, {key: round(acc, 4)})
        finish_task(net, args.dataset)
        log.info(f"saved {save_task_checkpoint(net, cfg, folder, args.epochs)}")
    resume.clear()
    sys.exit(EXIT_CODES[outcome])


def resume_state(args, folder, start, baseline):
    """<folder>/resume.pt: rerun with the same flags, a killed step continues after its last finished epoch."""
    ignored = ("device", "workers", "log_path", "logits_out", "data_root")
    settings = {**{k: v for k, v in vars(args).items() if k not in ignored}, "baseline": baseline,
                "start": file_digest(start) if start else None}
    return Resume(folder / "resume.pt", settings)


def inference(args, net, data):
    if args.dataset not in net.history:
        raise UserError(f"the checkpoint has no task {args.dataset} (it has {net.history}).")
    net.model.to(data.device)
    trainer = Trainer(net, args.dataset, data.device, None, data.test_loader, amp=data.amp)
    _, acc, logits = trainer.evaluate(return_logits=True)
    if args.logits_out:
        Path(args.logits_out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(logits, args.logits_out)
    print(json.dumps({"dataset": args.dataset, "accuracy": round(acc, 4), "tasks": net.history}))


if __name__ == "__main__":
    main()
