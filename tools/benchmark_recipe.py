"""Does the fast recipe learn as well in far fewer epochs, on every config, with its learning rate chosen by rule?

    python tools/benchmark_recipe.py                          # every config: original 100 epochs vs fast 30
    python tools/benchmark_recipe.py --configs digits5 --device cuda

For each config (demo, demo_conv: the demo's data with a conv stem, digits, and digits5, another split of the same
digits that the fast recipe's settings were never tuned on), written to --data_root (default: a temporary folder) and
read through the loaders every stage uses:
  baseline  task group1 trained as the baseline stage trains it (utils.trainer.train_baseline)
  cpg       task group2 trained by CPG finetuning (utils.trainer.cpg_finetune) on a network that holds group1 (its
            CPG finetuning with the original recipe for --backbone_epochs, pruned to half its weights): it picks
            among group1's weights and trains the free ones
each with the original recipe (SGD at --lr, x0.1 at 50 % and 80 %) for --epochs and the fast one (Adam, warm-up,
cosine, its peak rate from the learning-rate range test) for --fast_epochs. Prints the accuracies, the fast one as a
share of the original's, the rate the range test chose and its share of the fast run's time, and a table.
"""
import argparse
import copy
import logging
import os
import re
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")
import torch

from models import cpg
from models.build import Network
from packnet_models import baseline_network
from tools.make_demo_data import main as make_demo
from tools.make_digits_data import main as make_digits
from utils.config import load_dataset_config
from utils.data import load_task, model_config
from utils.trainer import begin, cpg_finetune, finish_task, start_cpg_task, train_baseline

CONFIGS = ("demo", "demo_conv", "digits", "digits5")

RANGE_LINE = re.compile(r"learning-rate range test: .* in ([\d.]+) s, .*: peak lr ([\d.e+-]+)")


class Lines(logging.Handler):
    """The range test's seconds and chosen rate, from its log line."""

    def __init__(self):
        super().__init__()
        self.range_test = (0.0, None)

    def emit(self, record):
        if m := RANGE_LINE.search(record.getMessage()):
            self.range_test = (float(m.group(1)), float(m.group(2)))


def backbone(cfg, args):
    """group1 by CPG finetuning (original recipe, --backbone_epochs) on a new network, pruned to half its weights."""
    data = load_task(cfg, "group1", batch_size=args.batch_size, seed=args.seed, device=args.device)
    begin(data, args.seed)
    net = Network.new(model_config(cfg))
    start_cpg_task(net, data, 1.0)
    cpg_finetune(net, data, epochs=args.backbone_epochs, lr=args.lr, lr_mask=1e-4, weight_decay=4e-5, seed=args.seed,
                 baseline=0.0, width=1.0, max_width=1.0)
    cpg.prune_to(net.model, data.modality, 1, 0.5)
    finish_task(net, "group1")
    return net


def train(cfg, mode, recipe, epochs, args, base=None):
    """(test accuracy, seconds, range-test seconds, chosen rate) of one training."""
    task = "group1" if mode == "baseline" else "group2"
    data = load_task(cfg, task, batch_size=args.batch_size, seed=args.seed, device=args.device, amp=args.amp)
    lines = Lines()
    root = logging.getLogger()
    root.addHandler(lines)
    start = time.perf_counter()
    try:
        if mode == "baseline":
            begin(data, args.seed)
            net = baseline_network(cfg, data)
            acc = train_baseline(net, data, epochs=epochs, lr=args.lr, weight_decay=4e-5, seed=args.seed,
                                 recipe=recipe)
        else:
            net = copy.deepcopy(base)
            start_cpg_task(net, data, 1.0)
            _, acc = cpg_finetune(net, data, epochs=epochs, lr=args.lr, lr_mask=1e-4, weight_decay=4e-5,
                                  seed=args.seed, baseline=0.0, width=1.0, max_width=1.0, recipe=recipe)
    finally:
        root.removeHandler(lines)
    seconds = time.perf_counter() - start
    print(f"  {mode:>8} {recipe:>8} {epochs:3d} epochs: {acc:.4f} in {seconds:6.1f} s"
          + (f" (range test {lines.range_test[0]:.1f} s: peak lr {lines.range_test[1]:.3g})" if recipe == "fast"
             else ""), flush=True)
    return acc, seconds, *lines.range_test


def prepare(config, root):
    """Write a config's data under `root` unless it is there (demo_conv reads the demo's)."""
    folder = {"demo_conv": "demo"}.get(config, config)
    if not os.path.isdir(os.path.join(root, folder)):
        if folder == "demo":
            make_demo(["--data_root", root])
        else:
            make_digits(["--data_root", root, "--config", config])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default=None, help="where the configs' data are written (default: a temporary "
                                                     "folder)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--modes", nargs="+", default=["baseline", "cpg"], choices=["baseline", "cpg"])
    p.add_argument("--epochs", type=int, default=100, help="epochs of the original recipe (its default)")
    p.add_argument("--fast_epochs", type=int, default=30, help="epochs of the fast recipe")
    p.add_argument("--backbone_epochs", type=int, default=30, help="epochs of the CPG backbone task (original)")
    p.add_argument("--lr", type=float, default=1e-2, help="the original recipe's SGD learning rate (its default)")
    p.add_argument("--batch_size", type=int, default=32, help="training batch size (the stages' default)")
    p.add_argument("--seed", type=int, default=2, help="seed (the stages' default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root_logger = logging.getLogger()                        # the trainer's "root" logger: only Lines reads it
    for handler in list(root_logger.handlers):
        root_logger.removeHandler(handler)
    root_logger.setLevel(logging.INFO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or tmp
        for config in args.configs:
            prepare(config, root)
            cfg = load_dataset_config(config, root)
            print(f"\n{config}: batch {args.batch_size}, seed {args.seed}", flush=True)
            base = backbone(cfg, args) if "cpg" in args.modes else None
            for mode in args.modes:
                original, _, _, _ = train(cfg, mode, "original", args.epochs, args, base)
                fast, t_fast, t_test, chosen = train(cfg, mode, "fast", args.fast_epochs, args, base)
                rows.append((config, mode, original, fast, chosen, t_test / t_fast))
    print(f"\n| config | training | original, {args.epochs} epochs | fast, {args.fast_epochs} epochs | share | "
          f"peak lr chosen | range test, share of the fast run's time |\n|---|---|---|---|---|---|---|")
    for config, mode, original, fast, chosen, share in rows:
        print(f"| {config} | {mode} | {original:.4f} | {fast:.4f} | {100 * fast / max(original, 1e-9):.1f} % | "
              f"{chosen:.3g} | {100 * share:.1f} % |")


if __name__ == "__main__":
    main()
