"""CPG training of one task: a backbone from scratch or a target on top of a backbone checkpoint (spec §1.2, §1.6,
§6), in the modes `finetune` (train the task, growing the network when asked), `prune` (one gradual-pruning
stage) and `inference` (evaluate a task of a checkpoint).

Exit codes (read by the stage scripts, spec §1.9):
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
from utils.checkpoint import find_checkpoint, load_checkpoint, read_json, update_json
from utils.data import model_config
from utils.errors import UserError, report_user_errors
from utils.runtime import add_common_arguments, add_task_arguments, prepare_task, setup_logging
from utils.trainer import GradualPruner, Trainer, make_optimizers, milestones, save_task_checkpoint

log = logging.getLogger("root")
EXIT_EXPAND, EXIT_NO_BASELINE, EXIT_NOTHING_TO_PRUNE, EXIT_STOP_PRUNING, EXIT_NO_RECORD = 2, 3, 5, 6, 255


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


def sparsity_key(value):
    """Record keys and stage folder names as the original's Python float strings: '0.1', '0.95'."""
    return str(float(value))


def starting_checkpoint(args):
    if args.load_checkpoint:
        return Path(args.load_checkpoint)
    if not args.load_folder:
        return None
    folder = Path(args.load_folder)
    if args.mode == "prune" and args.initial_sparsity > 0:
        folder = folder / sparsity_key(args.initial_sparsity)
    return find_checkpoint(folder)


def baseline_accuracy(args):
    if not args.jsonfile or not Path(args.jsonfile).is_file():
        raise UserError(f"baseline accuracy file {args.jsonfile} does not exist: provide the baseline file "
                        f"(run run_pickaback/baseline.sh first).", exit_code=EXIT_NO_BASELINE)
    accs = read_json(args.jsonfile, {})
    if args.dataset not in accs:
        raise UserError(f"{args.jsonfile} has no accuracy for {args.dataset}: run the baseline of that task first.",
                        exit_code=EXIT_NO_BASELINE)
    return float(accs[args.dataset])


def upper_bound_reached(net, sparsity, width, args, record, baseline):
    """The original's rule: at max width and below baseline, leave room for the remaining tasks (spec §6.4)."""
    if width < args.max_allowed_network_width_multiplier or record.get("0.0", 1.0) >= baseline:
        return False
    remaining = args.total_num_tasks - len(net.history)
    allowed = round(1.0 / (remaining + 1), 1)
    log.info(f"remain_num_tasks: {remaining}")
    log.info(f"ratio_allow_for_curr_task: {allowed:.4f}")
    return sparsity >= 1.0 - allowed


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    log_path = args.log_path or (f"{args.save_folder}/train.log" if args.save_folder else None)
    setup_logging(log_path)
    baseline = baseline_accuracy(args) if args.mode != "inference" else None
    if args.mode != "inference" and not args.save_folder:
        raise UserError(f"--mode {args.mode} needs --save_folder.")
    if args.network_width_multiplier > args.max_allowed_network_width_multiplier + 1e-9:
        raise UserError(f"--network_width_multiplier {args.network_width_multiplier} exceeds "
                        f"--max_allowed_network_width_multiplier {args.max_allowed_network_width_multiplier}.")
    record_file = args.pruning_ratio_to_acc_record_file
    if args.mode == "prune" and not (record_file and Path(record_file).is_file()):
        raise UserError(f"record file {record_file} does not exist: run --mode finetune first.",
                        exit_code=EXIT_NO_RECORD)

    cfg, modality, device, train_loader, test_loader, num_classes = prepare_task(args)

    start = starting_checkpoint(args)
    if start is None and args.mode != "finetune":
        raise UserError(f"--mode {args.mode} needs --load_folder or --load_checkpoint.")
    net = Network.from_checkpoint(load_checkpoint(start)) if start else \
        Network.new(model_config(cfg))
    if start:
        log.info(f"loaded {start} (tasks {net.history})")

    if args.mode == "inference":
        return inference(args, net, device, test_loader)

    width = args.network_width_multiplier
    if args.mode == "finetune":
        log.info("Finetune stage...")
        net.start_task(args.dataset, modality, num_classes, width)
        width = max(width, net.model.width_multiplier)
    else:
        if not net.history or net.history[-1] != args.dataset:
            raise UserError(f"{start} was trained last on {net.history[-1] if net.history else 'nothing'}, "
                            f"not {args.dataset}: prune the task the checkpoint ends with.")
        width = net.model.width_multiplier
    net.set_trainable(args.dataset)
    net.model.to(device)
    log.info(f"{args.expname}: task {args.dataset} ({modality}) as task {net.task_id(args.dataset)} of "
             f"{net.history} on {device}; width x{width}, {net.num_parameters()} parameters")
    csv_path = Path(log_path).with_name("train.csv") if log_path else None
    trainer = Trainer(net, args.dataset, device, train_loader, test_loader, width, csv_path)
    if args.mode == "finetune":
        sys.exit(finetune(args, cfg, net, trainer, baseline, width))
    sys.exit(prune(args, cfg, net, trainer, baseline, width))


def save(args, cfg, net, folder):
    path = save_task_checkpoint(net, args.dataset, cfg, folder, args.epochs)
    log.info(f"saved {path}")
    return path


def finetune(args, cfg, net, trainer, baseline, width):
    optimizer, mask_optimizer = make_optimizers(net, args.dataset, args.lr, args.lr_mask)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(args.epochs), gamma=0.1)
    owns_nothing = trainer.stats()["task_ratio"] == 0
    mask_scheduler = None
    if mask_optimizer and not owns_nothing:
        half, late = milestones(args.epochs, (0.5, 0.7))[0], milestones(args.epochs, (0.7,))[0]
        mask_scheduler = torch.optim.lr_scheduler.LambdaLR(
            mask_optimizer, lambda e: 0.0 if e >= late else 0.2 if e >= half else 1.0)
    train_acc = val_acc = 0.0
    for epoch in range(1, args.epochs + 1):
        _, train_acc = trainer.train_epoch(epoch, optimizer, mask_optimizer, args.weight_decay)
        _, val_acc = trainer.validate(epoch, train_acc)
        scheduler.step()
        if mask_scheduler:
            mask_scheduler.step()
    if args.pruning_ratio_to_acc_record_file:
        update_json(args.pruning_ratio_to_acc_record_file, {"0.0": round(val_acc, 4)})
    save(args, cfg, net, args.save_folder)
    owns_nothing = trainer.stats()["task_ratio"] == 0
    if train_acc > 0.95 and val_acc >= baseline:
        return EXIT_NOTHING_TO_PRUNE if owns_nothing else 0
    if width >= args.max_allowed_network_width_multiplier - 1e-9:
        log.info(f"at max width x{width}: val acc {val_acc:.4f} stays below baseline {baseline:.4f}")
        return EXIT_NOTHING_TO_PRUNE if owns_nothing else 0
    log.info("It's time to expand the Network")
    log.info("Auto expand network")
    return EXIT_EXPAND


def prune(args, cfg, net, trainer, baseline, width):
    record = read_json(args.pruning_ratio_to_acc_record_file, {})
    log.info(f"Sparsity range: {args.initial_sparsity} -> {args.target_sparsity}")
    if upper_bound_reached(net, args.initial_sparsity, width, args, record, baseline):
        return EXIT_STOP_PRUNING
    log.info("Before pruning: ")
    trainer.validate(0)
    optimizer, _ = make_optimizers(net, args.dataset, args.lr, 0.0)
    steps = args.epochs * len(trainer.train_loader)
    pruner = GradualPruner(net, args.dataset, args.initial_sparsity, args.target_sparsity, begin=0,
                           end=min(args.pruning_interval * len(trainer.train_loader), steps),
                           frequency=args.pruning_frequency)
    train_acc = val_acc = 0.0
    for epoch in range(1, args.epochs + 1):
        _, train_acc = trainer.train_epoch(epoch, optimizer, None, args.weight_decay, pruner)
        _, val_acc = trainer.validate(epoch, train_acc)
    key = sparsity_key(args.target_sparsity)
    update_json(args.pruning_ratio_to_acc_record_file, {key: round(val_acc, 4)})
    save(args, cfg, net, Path(args.save_folder) / key)
    if train_acc <= 0.95:
        log.info(f"train accuracy {100 * train_acc:.2f} <= 95: stop pruning")
        return EXIT_STOP_PRUNING
    if upper_bound_reached(net, args.target_sparsity, width, args, record, baseline):
        return EXIT_STOP_PRUNING
    return 0


def inference(args, net, device, test_loader):
    if args.dataset not in net.history:
        raise UserError(f"the checkpoint has no task {args.dataset} (it has {net.history}).")
    net.model.to(device)
    _, acc, logits = Trainer(net, args.dataset, device, None, test_loader).evaluate(return_logits=True)
    if args.logits_out:
        Path(args.logits_out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(logits, args.logits_out)
    print(json.dumps({"dataset": args.dataset, "accuracy": round(acc, 4), "tasks": net.history}))


if __name__ == "__main__":
    main()
