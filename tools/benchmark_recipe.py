"""Does the fast recipe learn as well in far fewer epochs? The baseline trainer on real images, both recipes.

    python tools/benchmark_recipe.py                         # digits, original 100 epochs vs fast 30
    python tools/benchmark_recipe.py --fast_epochs 20 --device cuda --amp

The data is config `digits` (tools/make_digits_data.py: scikit-learn's handwritten digits, 8 x 8 scans shipped with
the package), written to --data_root (default: a temporary folder) and read through the loaders every stage uses.
Each task is trained as the baseline stage trains it (utils.trainer.train_baseline, seed --seed): with the original
recipe (SGD at --lr, x0.1 at 50 % and 80 %) for --epochs, and with the fast recipe (Adam, warm-up, cosine) for
--fast_epochs, and also the original recipe for --fast_epochs (the same budget). It prints the test accuracy along
the way, the final accuracies, the fast one as a share of the original's, and the wall time of each run.
"""
import argparse
import logging
import os
import re
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")
from packnet_models import baseline_network
from tools.make_digits_data import main as make_digits
from utils.config import load_dataset_config
from utils.data import load_task
from utils.trainer import train_baseline

VAL_LINE = re.compile(r"Val Ep. #(\d+) loss: [\d.]+, accuracy: ([\d.]+)")


class Curve(logging.Handler):
    """{epoch: test accuracy} from the trainer's per-epoch validation log lines."""

    def __init__(self):
        super().__init__()
        self.points = {}

    def emit(self, record):
        if m := VAL_LINE.search(record.getMessage()):
            self.points[int(m.group(1))] = float(m.group(2)) / 100


def train(cfg, task, recipe, epochs, args):
    data = load_task(cfg, task, batch_size=args.batch_size, seed=args.seed, device=args.device, amp=args.amp)
    curve = Curve()
    root = logging.getLogger()
    root.addHandler(curve)
    start = time.perf_counter()
    try:
        net = baseline_network(cfg, data)
        acc = train_baseline(net, data, epochs=epochs, lr=args.lr, weight_decay=4e-5, seed=args.seed, recipe=recipe)
    finally:
        root.removeHandler(curve)
    seconds = time.perf_counter() - start
    marks = sorted({max(1, round(f * epochs)) for f in (0.1, 0.2, 0.3, 0.5, 0.8, 1.0)})
    path = ", ".join(f"ep {e}: {curve.points[e]:.3f}" for e in marks)
    print(f"  {recipe:>8} {epochs:3d} epochs: {acc:.4f} in {seconds:6.1f} s   ({path})", flush=True)
    return acc, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default=None, help="where config 'digits' is written (default: a temporary folder)")
    p.add_argument("--tasks", nargs="+", default=["group1", "group2"], help="tasks of config digits")
    p.add_argument("--epochs", type=int, default=100, help="epochs of the original recipe (its default)")
    p.add_argument("--fast_epochs", type=int, default=30, help="epochs of the fast recipe")
    p.add_argument("--lr", type=float, default=1e-2, help="the original recipe's SGD learning rate (its default)")
    p.add_argument("--batch_size", type=int, default=32, help="training batch size (the stages' default)")
    p.add_argument("--seed", type=int, default=2, help="seed (the stages' default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    args = p.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    root_logger = logging.getLogger()                        # the trainer's "root" logger: only the curve reads it
    for handler in list(root_logger.handlers):
        root_logger.removeHandler(handler)
    root_logger.setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or tmp
        make_digits(["--data_root", root])
        cfg = load_dataset_config("digits", root)
        for task in args.tasks:
            print(f"\ndigits {task} ({cfg.num_classes} classes), batch {args.batch_size}, seed {args.seed}:")
            original, t_original = train(cfg, task, "original", args.epochs, args)
            short, _ = train(cfg, task, "original", args.fast_epochs, args)
            fast, t_fast = train(cfg, task, "fast", args.fast_epochs, args)
            print(f"  fast recipe in {100 * args.fast_epochs / args.epochs:.0f} % of the epochs reaches "
                  f"{100 * fast / original:.1f} % of the original recipe's {args.epochs}-epoch accuracy "
                  f"(the original recipe with the same {args.fast_epochs} epochs: {100 * short / original:.1f} %); "
                  f"time {t_fast / t_original:.2f}x")


if __name__ == "__main__":
    main()
