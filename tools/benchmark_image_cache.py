"""Benchmark: how much faster one epoch of an image task loads from the decoded-image cache (uint8 tensors; crop,
flip and normalisation per batch on the device) than the original's way (torchvision ImageFolder: PIL decodes,
resizes, flips and normalises every image, every epoch), and what the one-time cache build costs. It writes
synthetic JPEGs of a photo's size (500 x 375, quality 90, seeded) into a temporary ImageFolder and times one epoch
of the train loader (batch 32, no workers; the best of three, both ways) at the oxford size (64 x 64) and the CUB
size (224 x 224). Prints the numbers.

    python tools/benchmark_image_cache.py --images 200 --device cpu
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from tqdm import tqdm

from utils.config import load_dataset_config
from utils.data import image_task, task_loaders
from utils.errors import report_user_errors
from utils.runtime import select_device

SIZES = {"oxford": [64, 64], "CUB": [224, 224]}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLASSES = 4


def write_images(folder, count, seed, source=(500, 375)):
    """`count` JPEGs in CLASSES class folders: smooth random colour fields with noise, so they compress (and
    decode) like photos rather than like pure noise."""
    rng = np.random.default_rng(seed)
    for i in tqdm(range(count), desc=f"writing {folder.parent.name} JPEGs", leave=False, disable=None):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(source, Image.BICUBIC)
        pixels = np.asarray(coarse, np.int16) + rng.integers(-12, 13, (source[1], source[0], 3))
        path = folder / f"c{i % CLASSES}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def config(root, resize):
    sections = {"bench": {"train_path": "bench/train", "test_path": "bench/test", "subfolder": True,
                          "num_classes": CLASSES, "num_groups": 1, "resize": resize, "random_horizontal_flip": True,
                          "mean": MEAN, "std": STD, "DATASETS": [None, "task"]}}
    path = root / f"config_{resize[0]}.yaml"
    path.write_text(yaml.safe_dump(sections))
    return load_dataset_config("bench", root, config_file=path)


def old_loader(cfg, batch_size):
    """The original's train pipeline: PIL decode + Resize + RandomHorizontalFlip + ToTensor + Normalize per item."""
    from torchvision import datasets, transforms
    steps = transforms.Compose([transforms.Resize(tuple(cfg.raw["resize"])), transforms.RandomHorizontalFlip(),
                                transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    folder = datasets.ImageFolder(str(cfg.task_folder("task", "train")), transform=steps)
    return torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=True, num_workers=0)


def epoch_seconds(batches, device):
    """One pass over `batches`, each batch's pixels on `device` (as the trainer needs them)."""
    start = time.perf_counter()
    for batch in batches:
        x = batch["x"] if isinstance(batch, dict) else batch[0]
        x.to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@report_user_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="training images to write and load (default 200)")
    p.add_argument("--device", default="cpu", help="where the batches go: cpu, cuda, cuda:N or auto")
    p.add_argument("--batch_size", type=int, default=32, help="batch size")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (PIL decodes on one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    import torchvision  # noqa: F401  (imported before timing: both ways use it, the cache build only to resize)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "bench" / "train" / "task", args.images, args.seed)
        write_images(root / "bench" / "test" / "task", CLASSES, args.seed + 1)
        print(f"{args.images} synthetic 500x375 JPEGs (quality 90), batch {args.batch_size}, no workers, "
              f"device {device}, {args.threads} torch thread(s)", flush=True)
        for name, resize in SIZES.items():
            cfg = config(root, resize)
            start = time.perf_counter()
            image_task(cfg, "task", "train", raw=True)                       # decodes and writes the cache
            build_s = time.perf_counter() - start
            train, _, _ = task_loaders(cfg, "task", args.batch_size, 100, seed=args.seed, device=device)
            new_s = min(epoch_seconds(train, device) for _ in range(3))
            host_s = min(epoch_seconds(train.loader, torch.device("cpu")) for _ in range(3))
            old_s = min(epoch_seconds(old_loader(cfg, args.batch_size), device) for _ in range(3))
            print(f"{name} size {resize[0]}x{resize[1]}:", flush=True)
            print(f"  cache build (once):                 {build_s * 1000:9.1f} ms", flush=True)
            print(f"  epoch, PIL + torchvision per image: {old_s * 1000:9.1f} ms", flush=True)
            print(f"  epoch, cache + batch transform:     {new_s * 1000:9.1f} ms", flush=True)
            print(f"    of which uint8 batches on the host: {host_s * 1000:7.1f} ms (the rest runs on the device)",
                  flush=True)
            print(f"  speed-up per epoch: {old_s / new_s:.1f}x", flush=True)


if __name__ == "__main__":
    main()
