"""Baseline stage: train an independent single-task Perceiver IO for one task (spec §1.1, §5).

Its last-epoch test accuracy goes into `logs_perceiver_io/baseline_<cfg>_acc.txt` (`{"<group>": "0.xxxx"}`), the
criterion of every later stage, and its checkpoint is what the backbone search (ModelDiff) compares.

    python packnet_main_normal.py --dataset_config demo --dataset group1 --epochs 5 \
        --save_folder checkpoints_perceiver_io/baseline_scratch/perceiver_io/demo/group1 \
        --logfile logs_perceiver_io/baseline_demo_acc.txt
"""
import argparse
import logging

import torch

from packnet_models import baseline_network
from utils.checkpoint import update_json
from utils.errors import report_user_errors
from utils.runtime import add_common_arguments, add_task_arguments, prepare_task, setup_logging
from utils.trainer import Trainer, make_optimizers, milestones, save_task_checkpoint


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(p, expname="baseline")
    p.add_argument("--save_folder", required=True, help="folder for checkpoint-<epochs>.pth.tar")
    p.add_argument("--mode", default="finetune", choices=["finetune"], help="only finetune (the baseline)")
    p.add_argument("--logfile", required=True, help="baseline accuracy JSON to update")
    p.add_argument("--log_path", default=None, help="training log (default: <save_folder>/train.log)")
    add_common_arguments(p)
    return p.parse_args(argv)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.log_path or f"{args.save_folder}/train.log")
    log = logging.getLogger("root")
    cfg, modality, device, train_loader, test_loader, num_classes = prepare_task(args)
    log.info(f"{args.expname}: task {args.dataset} ({modality}, {num_classes} classes) of '{cfg.name}' on {device}")

    net = baseline_network(cfg, args.dataset, modality, num_classes)
    net.model.to(device)
    trainer = Trainer(net, args.dataset, device, train_loader, test_loader)
    optimizer, _ = make_optimizers(net, args.dataset, args.lr, lr_mask=0.0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(args.epochs), gamma=0.1)
    train_acc = val_acc = 0.0
    for epoch in range(1, args.epochs + 1):
        _, train_acc = trainer.train_epoch(epoch, optimizer, weight_decay=args.weight_decay)
        _, val_acc = trainer.validate(epoch)
        scheduler.step()
    if train_acc < 0.97:
        log.info("Cannot prune any more!")

    path = save_task_checkpoint(net, args.dataset, cfg, args.save_folder, args.epochs)
    update_json(args.logfile, {args.dataset: "%.4f" % val_acc})
    log.info(f"saved {path}; {args.logfile}[{args.dataset}] = {val_acc:.4f}")


if __name__ == "__main__":
    main()
