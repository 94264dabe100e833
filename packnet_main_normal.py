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
from utils.checkpoint import checkpoint_path, save_checkpoint, update_json
from utils.config import load_dataset_config
from utils.data import task_loaders
from utils.errors import UserError, report_user_errors
from utils.runtime import add_common_arguments, seed_everything, select_device, setup_logging
from utils.trainer import Trainer, make_optimizers, milestones


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="perceiver_io", choices=["perceiver_io"], help="network architecture")
    p.add_argument("--expname", default="baseline", help="experiment name (used in log messages)")
    p.add_argument("--modality", choices=["image", "text"], default=None,
                   help="task modality; taken from the config when omitted, an error if it contradicts it")
    p.add_argument("--dataset_config", default="oxford", help="section of utils/dataset_config.yaml")
    p.add_argument("--dataset", required=True, help="task (group) name, e.g. group1")
    p.add_argument("--num_classes", type=int, default=-1, help="classes of the task; -1 = the config's num_classes")
    p.add_argument("--lr", type=float, default=1e-2, help="SGD learning rate (x0.1 at 50%% and 80%% of the epochs)")
    p.add_argument("--weight_decay", type=float, default=4e-5, help="L2 on the linear weights")
    p.add_argument("--batch_size", type=int, default=32, help="training batch size")
    p.add_argument("--val_batch_size", type=int, default=100, help="evaluation batch size")
    p.add_argument("--save_folder", required=True, help="folder for checkpoint-<epochs>.pth.tar")
    p.add_argument("--epochs", type=int, default=100, help="training epochs")
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
    cfg = load_dataset_config(args.dataset_config, args.data_root, check_folders=False)
    modality = cfg.modality(args.dataset)
    if args.modality and args.modality != modality:
        raise UserError(f"--modality {args.modality} contradicts utils/dataset_config.yaml, where task "
                        f"{args.dataset} of '{cfg.name}' is {modality}: drop --modality or fix the config.")
    if args.epochs < 1:
        raise UserError(f"--epochs {args.epochs} must be at least 1.")
    device = select_device(args.device)
    seed_everything(args.seed)
    train_loader, test_loader, found_classes = task_loaders(cfg, args.dataset, args.batch_size, args.val_batch_size,
                                                            args.workers, args.seed, device)
    num_classes = cfg.num_classes if args.num_classes < 0 else args.num_classes
    if num_classes != found_classes:
        raise UserError(f"task {args.dataset} has {found_classes} class folders in "
                        f"{cfg.task_folder(args.dataset, 'train')} but {num_classes} classes are configured: "
                        f"fix num_classes in utils/dataset_config.yaml or --num_classes.")
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

    net.claim_shared(args.dataset)
    path = checkpoint_path(args.save_folder, args.epochs)
    save_checkpoint(net.state(epoch=args.epochs, dataset_config=cfg.name, text_encoder=cfg.text_encoder), path)
    update_json(args.logfile, {args.dataset: "%.4f" % val_acc})
    log.info(f"saved {path}; {args.logfile}[{args.dataset}] = {val_acc:.4f}")


if __name__ == "__main__":
    main()
