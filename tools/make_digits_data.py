"""Write config `digits`: scikit-learn's copy of the UCI handwritten digits (1,797 real 8 x 8 scans, shipped inside
the scikit-learn package, so nothing is downloaded) as two image tasks in the ImageFolder layout.

    task     classes
    group1   the digits 0-4
    group2   the digits 5-9

`--config digits5` writes the same scans as five tasks of two digits each (0-1, 2-3, ..., 8-9), a sequence long
enough for the sequence run (run_pickaback/sequence.sh digits5); any config whose num_groups divides 10 works.

Each class is split 80/20 into train/test with a seeded permutation. Pixels (0-16 ink levels) are scaled to 0-255
and written as RGB PNGs. Used to check that training learns on real images (tools/benchmark_recipe.py), and small
enough for every stage on a laptop: `python tools/make_digits_data.py && bash run_pickaback/baseline.sh digits`.

Layout: <root>/digits/image/{train,test}/group<k>/<digit>/<index>.png
"""
import argparse
import shutil

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.config import load_dataset_config
from utils.errors import UserError, report_user_errors

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default=None, help="data root (default: $MMPAB_DATA_ROOT or data/)")
    p.add_argument("--config", default="digits", help="the config to write: digits (2 tasks) or digits5 (5 tasks)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class 80/20 train/test split")
    p.add_argument("--test_fraction", type=float, default=0.2, help="share of each class in the test split")
    return p.parse_args(argv)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    if not 0.0 < args.test_fraction < 1.0:
        raise UserError(f"--test_fraction {args.test_fraction} must lie between 0 and 1.")
    from sklearn.datasets import load_digits
    cfg = load_dataset_config(args.config, args.data_root, check_folders=False)
    per_task, extra = divmod(10, len(cfg.groups))
    if extra or per_task != cfg.num_classes:
        raise UserError(f"config '{cfg.name}' has {len(cfg.groups)} tasks of {cfg.num_classes} classes: the 10 digits "
                        f"split into consecutive tasks only when num_groups divides 10 and num_classes = 10 / "
                        f"num_groups.")
    groups = {group: range(i * per_task, (i + 1) * per_task) for i, group in enumerate(cfg.groups)}
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)          # [n, 8, 8]
    rng = np.random.default_rng(args.seed)
    for split in ("train", "test"):
        shutil.rmtree(cfg.data_root / cfg.raw[f"{split}_path"], ignore_errors=True)
    written = {"train": 0, "test": 0}
    for group, labels in groups.items():
        for label in tqdm(labels, desc=f"writing {group}", leave=False, disable=None):
            indices = rng.permutation(np.flatnonzero(digits.target == label))
            n_test = int(round(args.test_fraction * len(indices)))
            for split, part in (("test", indices[:n_test]), ("train", indices[n_test:])):
                folder = cfg.task_folder(group, split) / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                for i in part:
                    Image.fromarray(images[i]).convert("RGB").save(folder / f"{i:04d}.png")
                written[split] += len(part)
    print(f"wrote {written['train']} training and {written['test']} test images of config '{cfg.name}' under "
          f"{cfg.data_root / cfg.raw['train_path']}")


if __name__ == "__main__":
    main()
