"""Prepare MSCOCO 2017 for config 'mscoco' (replaces the original's preprocess_0430.ipynb).

Fifteen groups of four COCO categories (60 of the 80; 'person' and the rest are skipped). The label of an image is the
category of its FIRST annotation in the instances file; images whose label is not in a group are skipped. Images are
copied to image/{train,test}/<Group>/<category>/<file> (train2017 -> train, val2017 -> test; the original notebook
symlinked them into <Group>_image/ folders and wrote val/, renamed test/ by hand). Then, as the original, every
category with fewer than ceil(0.2 * n_train) test images gets the deficit moved from train to test: the categories
are visited in sorted order (<Group>/<category>) and ONE random.Random(--seed) generator, shared by all of them,
draws each category's files with .sample over its train files sorted by name. Image-only, as the config (the
original also wrote every image's captions, which no config reads).

    python tools/prepare_mscoco.py --raw_dir ~/downloads/coco2017
"""
import json
import logging
import math
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from tools._prepare_common import (copy_file, make_parser, output_roots, prepare_output,
                                   require_dir, setup_logging, warn_layout)
from utils.errors import UserError, report_user_errors

GROUPS = {
    "Accessory": ["handbag", "umbrella", "backpack", "tie"],
    "Animal1": ["bird", "sheep", "cow", "horse"],
    "Animal2": ["elephant", "dog", "zebra", "giraffe"],
    "Appliance": ["sink", "oven", "refrigerator", "microwave"],
    "Electronic": ["cell phone", "tv", "remote", "laptop"],
    "Food1": ["banana", "carrot", "broccoli", "donut"],
    "Food2": ["orange", "cake", "apple", "pizza"],
    "Furniture": ["chair", "dining table", "potted plant", "couch"],
    "Indoor": ["book", "vase", "clock", "teddy bear"],  # the older notebook's typo "base" left Indoor with 3 classes
    "Kitchen": ["bottle", "cup", "bowl", "wine glass"],
    "Outdoor": ["traffic light", "bench", "stop sign", "fire hydrant"],
    "Sports1": ["kite", "skis", "sports ball", "surfboard"],
    "Sports2": ["skateboard", "tennis racket", "baseball glove", "baseball bat"],
    "Vehicle1": ["car", "motorcycle", "boat", "truck"],
    "Vehicle2": ["bicycle", "bus", "airplane", "train"],
}
NAME_TO_GROUP = {name: group for group, names in GROUPS.items() for name in names}
SPLITS = {"train": "train2017", "test": "val2017"}  # output split -> COCO split
MIN_TEST_FRACTION = 0.2
COPY_THREADS = 8
log = logging.getLogger("prepare_mscoco")


def load_instances(path):
    """Parse a COCO instances file into (image id -> file name, category id -> name, [(image id, category id)])."""
    if not path.is_file():
        raise UserError(f"annotation file {path} does not exist: pass --raw_dir pointing at the folder that holds "
                        f"train2017/, val2017/ and annotations/ (from annotations_trainval2017.zip).")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"annotation file {path} is not valid JSON ({e.__class__.__name__}): download "
                        f"annotations_trainval2017.zip again and unpack it.") from None
    try:
        images = {img["id"]: img["file_name"] for img in data["images"]}
        categories = {cat["id"]: cat["name"] for cat in data["categories"]}
        annotations = [(ann["image_id"], ann["category_id"]) for ann in data["annotations"]]
    except (KeyError, TypeError) as e:
        raise UserError(f"annotation file {path} is not a COCO instances file (missing {e}): pass the "
                        f"instances_<split>2017.json of the COCO 2017 annotations.") from None
    return images, categories, annotations


def label_images(path):
    """[(file name, category)] for every image whose FIRST annotation (file order) is a grouped category."""
    images, categories, annotations = load_instances(path)
    first = {}
    for image_id, category_id in annotations:
        first.setdefault(image_id, category_id)
    labelled, skipped = [], 0
    for image_id, category_id in first.items():
        name = categories.get(category_id)
        if name in NAME_TO_GROUP and image_id in images:
            labelled.append((images[image_id], name))
        else:
            skipped += 1
    log.info("%s: %d images labelled, %d skipped (first annotation not in a group), %d without annotations",
             path.name, len(labelled), skipped, len(images) - len(first))
    return sorted(labelled)


def rebalance(roots, seed):
    """Move train files to test until each category has at least ceil(0.2 * n_train) test images.

    As the original: the categories in sorted order (<Group>/<category>), one generator for all of them, so a
    category's draw depends on the draws before it; each draw is a sample over the category's train files sorted
    by name. Returns {category: [moved file names]}.
    """
    rng = random.Random(seed)
    moved = {}
    for group, name in sorted((group, name) for group, names in GROUPS.items() for name in names):
        train_dir = roots[("image", "train")] / group / name
        test_dir = roots[("image", "test")] / group / name
        train = sorted(p.name for p in train_dir.iterdir()) if train_dir.is_dir() else []
        n_test = sum(1 for _ in test_dir.iterdir()) if test_dir.is_dir() else 0
        deficit = math.ceil(len(train) * MIN_TEST_FRACTION) - n_test
        if deficit <= 0:
            continue
        test_dir.mkdir(parents=True, exist_ok=True)
        moved[name] = rng.sample(train, deficit)
        for file_name in moved[name]:
            shutil.move(str(train_dir / file_name), str(test_dir / file_name))
        log.info("rebalance %s/%s: %d train, %d test -> moved %d to test", group, name, len(train), n_test, deficit)
    log.info("rebalance moved files of %d categories (%d files)", len(moved), sum(map(len, moved.values())))
    return moved


@report_user_errors
def main(argv=None):
    parser = make_parser(__doc__, "mscoco",
                         "folder holding train2017/, val2017/ and annotations/instances_{train,val}2017.json "
                         "(captions files are not needed: the config is image-only)",
                         seed_help="seed of the rebalance's choice of train files moved to test")
    args = parser.parse_args(argv)
    setup_logging()

    raw_dir = require_dir(args.raw_dir, "raw MSCOCO folder", "pass --raw_dir pointing at the folder that holds "
                                                            "train2017/, val2017/ and annotations/")
    copies = []
    for split, coco_split in SPLITS.items():
        image_dir = require_dir(raw_dir / coco_split, "COCO image folder",
                                f"unpack {coco_split}.zip into {raw_dir}")
        for file_name, name in label_images(raw_dir / "annotations" / f"instances_{coco_split}.json"):
            copies.append((image_dir / file_name, (split, NAME_TO_GROUP[name], name, Path(file_name).name)))
    missing = next((src for src, _ in copies if not src.is_file()), None)
    if missing:
        raise UserError(f"image {missing} named in the annotations does not exist: unpack the complete "
                        f"{missing.parent.name}.zip into {raw_dir}.")

    cfg, roots = output_roots("mscoco", args, ("image",))
    prepare_output(roots, args.overwrite, log)
    jobs = [(src, roots[("image", split)] / group / name / file_name)
            for src, (split, group, name, file_name) in copies]
    with ThreadPoolExecutor(COPY_THREADS) as pool:
        for _ in tqdm(pool.map(lambda job: copy_file(*job), jobs), total=len(jobs), desc="mscoco", unit="img",
                      disable=None):
            pass
    rebalance(roots, args.seed)
    log.info("wrote %d images in %d groups under %s", len(jobs), len(GROUPS), roots[("image", "train")].parent.parent)
    warn_layout(cfg, list(GROUPS), [], log)


if __name__ == "__main__":
    main()
