"""Prepare Oxford-102 flowers with captions for config 'oxford' (replaces the original's oxford.ipynb).

Six fixed groups of four classes. Per class the caption-CSV rows are split 80/20 with sklearn's train_test_split
(random_state = --seed, 42 as in the original), and the same split serves the image and its caption. Images go to
image/{train,test}/group<k>/class_000NN/ and captions to text/{train,test}/group<k+6>/class_000NN/<stem>.txt, the
layout utils/dataset_config.yaml reads (the original notebook wrote caption/ and group1..6, which the yaml does not
read).

    python tools/prepare_oxford.py --raw_dir ~/downloads/oxford-102-flower-pytorch --captions_csv image_caption.csv
"""
import logging
import re
from pathlib import Path

from tqdm import tqdm

from tools._prepare_common import (copy_file, image_files, make_parser, output_roots, prepare_output,
                                   read_captions_csv, require_dir, setup_logging, warn_layout, write_text)
from utils.errors import UserError, report_user_errors

GROUPS = [[51, 72, 82, 60], [77, 65, 58, 56], [46, 74, 37, 80], [73, 41, 83, 95], [89, 81, 75, 76], [94, 88, 78, 43]]
TEXT_GROUP_OFFSET = len(GROUPS)
TEST_SIZE = 0.2
CLASS_FOLDER = re.compile(r"^(?:class_)?0*(\d+)$")
log = logging.getLogger("prepare_oxford")


def class_folder_name(class_id):
    return f"class_{class_id:05d}"


def class_id_of(name):
    """51 for 'class_00051', '51' or '051'; None for anything else."""
    m = CLASS_FOLDER.match(str(name).strip())
    return int(m.group(1)) if m else None


def find_class_images(raw_dir, exclude=()):
    """class id -> {file name: path}, pooling every split subfolder (train/, valid/, ...) that has the class.

    Folders under `exclude` (the output, should it lie inside the raw folder) are not searched.
    """
    raw_dir = require_dir(raw_dir, "raw Oxford folder", "pass --raw_dir pointing at the Kaggle "
                                                       "oxford-102-flower-pytorch folder")
    wanted = {c for g in GROUPS for c in g}
    pooled = {}
    for folder in sorted(p for p in raw_dir.rglob("*") if p.is_dir()):
        class_id = class_id_of(folder.name)
        if class_id not in wanted or any(folder.is_relative_to(e) for e in exclude):
            continue
        for f in image_files(folder):
            pooled.setdefault(class_id, {}).setdefault(f.name, f)
    missing = sorted(wanted - set(pooled))
    if missing:
        raise UserError(f"raw Oxford folder {raw_dir} has no images for class(es) "
                        f"{', '.join(class_folder_name(c) for c in missing)}: pass --raw_dir pointing at the "
                        f"oxford-102-flower-pytorch folder (class folders such as flower_data/train/51).")
    return pooled


def with_extension(image):
    name = Path(str(image).replace("\\", "/")).name
    return name if Path(name).suffix else f"{name}.jpg"


def split_rows(rows, seed):
    from sklearn.model_selection import train_test_split  # imported late: it is slow and input errors come first
    train, test = train_test_split(rows, test_size=TEST_SIZE, random_state=seed)
    return {"train": train, "test": test}


@report_user_errors
def main(argv=None):
    parser = make_parser(__doc__, "oxford",
                         "the Kaggle oxford-102-flower-pytorch folder; class folders named NN or class_000NN are "
                         "found under any split subfolder and pooled")
    parser.add_argument("--captions_csv", default=None,
                        help="CSV with columns image,label,caption, label like class_00051 "
                             "(default: <raw_dir>/image_caption.csv)")
    args = parser.parse_args(argv)
    setup_logging()

    cfg, roots = output_roots("oxford", args, ("image", "text"))
    pooled = find_class_images(args.raw_dir, exclude=roots.values())
    csv_path = Path(args.captions_csv) if args.captions_csv else Path(args.raw_dir) / "image_caption.csv"
    df = read_captions_csv(csv_path)
    labels = df["label"].map(class_id_of)
    splits = {}  # class id -> {split: [(image file, caption), ...]}
    for class_id in (c for g in GROUPS for c in g):
        of_class = labels == class_id
        rows = [(with_extension(image), caption)
                for image, caption in zip(df["image"][of_class], df["caption"][of_class], strict=True)]
        if len(rows) < 2:
            raise UserError(f"captions CSV {csv_path} has {len(rows)} row(s) with label {class_folder_name(class_id)}:"
                            f" give it one row per image of that class (columns image,label,caption).")
        for image, _ in rows:
            if image not in pooled[class_id]:
                raise UserError(f"image {image} of {class_folder_name(class_id)} in {csv_path} is not in any "
                                f"class folder {class_id} under {args.raw_dir}: fix the CSV row or pass the "
                                f"matching --raw_dir.")
        unused = len(pooled[class_id]) - len({image for image, _ in rows})
        if unused:
            log.warning("%d image(s) of %s have no row in %s and are left out", unused, class_folder_name(class_id),
                        csv_path)
        splits[class_id] = split_rows(rows, args.seed)

    prepare_output(roots, args.overwrite, log)
    image_groups = [f"group{k}" for k in range(1, len(GROUPS) + 1)]
    text_groups = [f"group{k + TEXT_GROUP_OFFSET}" for k in range(1, len(GROUPS) + 1)]

    total = sum(len(r) for s in splits.values() for r in s.values())
    with tqdm(total=total, desc="oxford", unit="img", disable=None) as bar:
        for image_group, text_group, classes in zip(image_groups, text_groups, GROUPS, strict=True):
            for class_id in classes:
                class_name = class_folder_name(class_id)
                for split, rows in splits[class_id].items():
                    for image, caption in rows:
                        copy_file(pooled[class_id][image], roots[("image", split)] / image_group / class_name / image)
                        write_text(roots[("text", split)] / text_group / class_name / f"{Path(image).stem}.txt",
                                   caption)
                        bar.update()

    for split in ("train", "test"):
        counts = [sum(len(splits[c][split]) for c in classes) for classes in GROUPS]
        log.info("%s images per group: %s", split, "/".join(map(str, counts)))
    log.info("wrote image groups group1..group6 and text groups group7..group12 under %s",
             roots[("image", "train")].parent.parent)
    warn_layout(cfg, image_groups, text_groups, log)


if __name__ == "__main__":
    main()
