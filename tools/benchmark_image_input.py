"""How well does each image input learn from little data? Raw pixels, the conv stem, and a plain small CNN (the
reference), trained the same way on the same images; prints the test accuracy and the time per epoch of each.

    python tools/benchmark_image_input.py                    # 30 epochs each, on the CPU
    python tools/benchmark_image_input.py --epochs 50 --device cuda

The data sets, all real or the repository's own, nothing downloaded:
    real32   scikit-learn's UCI handwritten digits (1,797 real scans shipped inside the package), all 10 classes,
             upsampled from 8 x 8 to 32 x 32, split 80/20 per class (about 144 training images per class)
    digits   config `digits` (tools/make_digits_data.py: the same scans at 8 x 8), task group1 (digits 0-4)
    demo     config `demo` (tools/make_demo_data.py: 8 x 8 coloured shapes), task group1

The Perceiver IO is config digits' network (for real32 and digits) or the demo's, with `image_stem: pixels` or
`image_stem: conv` (stem_channels [32, 64] at 32 x 32, [32] at 8 x 8), as a single task under its CPG masks; the CNN
is two 3x3 convolutions (32 and 64 channels) with ReLU and 2x2 max-pool, an average pool to 4 x 4 cells and a linear
head.
All are trained with Adam (--lr), a cosine schedule, batch --batch_size, seeded, for --epochs. A benchmark, not a
test.
"""
import argparse
import math
import os
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")
import torch
import torch.nn.functional as F
from torch import nn

from models.build import Network
from tools.make_demo_data import main as make_demo
from tools.make_digits_data import main as make_digits
from utils.config import load_dataset_config
from utils.data import load_task, model_config
from utils.runtime import seed_everything


def real32(seed):
    """(train x, train y, test x, test y) of scikit-learn's digits at 32 x 32, RGB, normalised."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0                 # [n, 1, 8, 8] in 0..1
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - 0.3) / 0.4
    y = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        cut = int(round(0.8 * len(idx)))
        train.append(idx[:cut])
        test.append(idx[cut:])
    train, test = torch.cat(train), torch.cat(test)
    return x[train], y[train], x[test], y[test]


def from_loaders(cfg, task, seed):
    """A config task's (train x, train y, test x, test y), as the stages' loaders give them (no augmentation)."""
    data = load_task(cfg, task, batch_size=64, seed=seed, device="cpu")
    out = []
    for loader in (data.train_loader, data.test_loader):
        xs, ys = zip(*((batch["x"], batch["y"]) for batch in loader), strict=True)
        out += [torch.cat(xs), torch.cat(ys)]
    return out


class SmallCNN(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True))
        self.pool = nn.AdaptiveAvgPool2d(4)              # where the strokes are still matters: 4 x 4 cells
        self.head = nn.Linear(64 * 16, classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def perceiver(config, classes, stem):
    """The config's network with `stem` (None: pixels, else its stem_channels) as one task under its CPG masks."""
    cfg = dict(config)
    if stem:
        cfg.update(image_stem="conv", stem_channels=stem)
    net = Network.new(cfg)
    net.start_task("task", "image", classes)
    net.set_trainable("task")
    return net.model


def train(model, data, args, device):
    """Train `model` on data; (test accuracy, seconds per epoch)."""
    x, y, tx, ty = (t.to(device) for t in data)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    steps = args.epochs * math.ceil(len(x) / args.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(args.seed)
    seconds = 0.0
    for _ in range(args.epochs):
        model.train()
        start = time.perf_counter()
        for idx in torch.randperm(len(x), generator=generator).split(args.batch_size):
            idx = idx.to(device)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(tx[i:i + 256]).argmax(1) == ty[i:i + 256]).sum()) for i in range(0, len(tx), 256))
    return correct / len(tx), seconds / args.epochs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default=None, help="where configs digits and demo are written (default: a "
                                                     "temporary folder)")
    p.add_argument("--sets", nargs="+", default=["real32", "digits", "demo"], choices=["real32", "digits", "demo"])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate for every model")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="benchmark-image-input-") as tmp:
        root = args.data_root or tmp
        digits = load_dataset_config("digits", root, check_folders=False)
        rows = []
        for name in args.sets:
            if name == "real32":
                data, config, stem = real32(args.seed), model_config(digits), [32, 64]
            else:
                if not (os.path.isdir(os.path.join(root, name))):
                    (make_digits if name == "digits" else make_demo)(["--data_root", root])
                cfg = load_dataset_config(name, root)
                data, config, stem = from_loaders(cfg, "group1", args.seed), model_config(cfg), [32]
            classes = int(data[1].max()) + 1
            print(f"{name}: {len(data[0])} training and {len(data[2])} test images of {tuple(data[0].shape[1:])}, "
                  f"{classes} classes", flush=True)
            for label in ("pixels", "conv", "cnn"):
                seed_everything(args.seed)                        # each model starts from the same seed
                model = SmallCNN(classes) if label == "cnn" else \
                    perceiver(config, classes, stem if label == "conv" else None)
                acc, per_epoch = train(model, data, args, device)
                rows.append((name, label, acc, per_epoch))
                print(f"  {label:>6}: accuracy {acc:.4f}, {per_epoch:.3f} s per epoch", flush=True)
    print("\n| data | input | accuracy | s per epoch |\n|---|---|---|---|")
    for name, label, acc, per_epoch in rows:
        print(f"| {name} | {label} | {acc:.4f} | {per_epoch:.3f} |")


if __name__ == "__main__":
    main()
