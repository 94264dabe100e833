"""Baseline stage for one task: train an independent single-task Perceiver IO (the PackNet-style baseline).

Its last-epoch test accuracy goes into `logs_perceiver_io/baseline_<cfg>_acc.txt` (`{"<group>": "0.xxxx"}`), the
criterion of every later stage, and its checkpoint is what the backbone search (ModelDiff) compares. The stage
script run_pickaback/baseline.sh runs every task through utils/stages.py; this entry point trains one.

    python packnet_main_normal.py --dataset_config demo --dataset group1 --epochs 5 \
        --save_folder checkpoints_perceiver_io/baseline_scratch/perceiver_io/demo/group1 \
        --logfile logs_perceiver_io/baseline_demo_acc.txt
"""
import argparse
import logging
from pathlib import Path

from packnet_models import baseline_network
from utils.checkpoint import read_json, update_json
from utils.errors import report_user_errors
from utils.runtime import add_common_arguments, add_task_arguments, prepare_task, setup_logging
from utils.trainer import Resume, begin, finish_task, save_task_checkpoint, train_baseline


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
    read_json(args.logfile)                                   # a broken accuracy file stops us before training
    setup_logging(args.log_path or f"{args.save_folder}/train.log")
    log = logging.getLogger("root")
    cfg, data = prepare_task(args)
    log.info(f"{args.expname}: task {args.dataset} ({data.modality}, {data.num_classes} classes) of '{cfg.name}' "
             f"on {data.device}")
    begin(data, args.seed)                                    # the initial weights depend on the seed only
    net = baseline_network(cfg, data)
    # rerun with the same flags, a killed run continues after its last finished epoch
    settings = {k: v for k, v in vars(args).items() if k not in ("device", "workers", "log_path", "data_root")}
    resume = Resume(Path(args.save_folder) / "resume.pt", settings)
    acc = train_baseline(net, data, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                         recipe=args.recipe, resume=resume)
    finish_task(net, args.dataset)
    path = save_task_checkpoint(net, cfg, args.save_folder, args.epochs)
    update_json(args.logfile, {args.dataset: "%.4f" % acc})
    resume.clear()
    log.info(f"saved {path}; {args.logfile}[{args.dataset}] = {acc:.4f}")


if __name__ == "__main__":
    main()
