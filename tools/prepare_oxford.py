"""Prepare Oxford-102 flowers with captions for config 'oxford' (replaces the original's oxford.ipynb).

Six fixed groups of four classes. Per class the caption-CSV rows (in file order) are split 80/20 with sklearn's
train_test_split (random_state = --seed, 42 as in the original), and the same split serves the image and its caption.
Images go to image/{train,test}/group<k>/class_000NN/ and captions to text/{train,test}/group<k+6>/class_000NN/
<stem>.txt, the layout utils/dataset_config.yaml reads (the original notebook wrote caption/ and group1..6, which
the yaml does not read).

Two raw layouts are read (--layout; by default the one the folder has):
  flat           the original's: every image in one folder (images/ or jpg/ under --raw_dir, or --raw_dir itself),
                 each image's class taken from the CSV's label (class_00051);
  class_folders  images in folders named NN or class_000NN, under any split subfolder (train/, valid/, ...), pooled.
A CSV row name without an extension gets `.jpg`, as in the original. A CSV row of the six groups' classes whose image
is missing is an error; an image no CSV row names is left out with a warning (the original read only the CSV's rows).

    python tools/prepare_oxford.py --raw_dir ~/downloads/oxford-102-flower-pytorch --captions_csv image_caption.csv
"""
import logging
import re
from pathlib import Path

from tqdm import tqdm

from tools._prepare_common import (copy_file, image_files, make_parser, output_roots, prepare_output,
                                   read_captions_csv, require_dir, setup_logging, some, warn_layout, write_text)
from utils.errors import UserError, report_user_errors

GROUPS = [[51, 72, 82, 60], [77, 65, 58, 56], [46, 74, 37, 80], [73, 41, 83, 95], [89, 81, 75, 76], [94, 88, 78, 43]]
TEXT_GROUP_OFFSET = len(GROUPS)
TEST_SIZE = 0.2
CLASS_FOLDER = re.compile(r"^(?:class_)?0*(\d+)$")
LAYOUTS = ("auto", "flat", "class_folders")
FLAT_FOLDERS = ("images", "jpg", ".")  # under --raw_dir: the Kaggle folder's images/, 102flowers.tgz's jpg/, itself
log = logging.getLogger("prepare_oxford")


def class_folder_name(class_id):
    return f"class_{class_id:05d}"


def class_id_of(name):
    """51 for 'class_00051', '51' or '051'; None for anything else."""
    m = CLASS_FOLDER.match(str(name).strip())
    return int(m.group(1)) if m else None


def find_flat_folder(raw_dir, exclude=()):
    """The folder among FLAT_FOLDERS that directly holds image files, or None."""
    for name in FLAT_FOLDERS:
        folder = (raw_dir / name).resolve()
        if folder.is_dir() and not _inside(folder, exclude) and image_files(folder):
            return folder
    return None


def find_class_folders(raw_dir, exclude=()):
    """class id -> [folders named NN or class_000NN], for the six groups' classes, under any split subfolder.

    Folders under `exclude` (the output, should it lie inside the raw folder) are not searched.
    """
    wanted = {c for g in GROUPS for c in g}
    folders = {}
    for folder in sorted(p for p in raw_dir.rglob("*") if p.is_dir()):
        class_id = class_id_of(folder.name)
        if class_id in wanted and not _inside(folder, exclude):
            folders.setdefault(class_id, []).append(folder)
    return folders


def _inside(folder, exclude):
    return any(folder.is_relative_to(e) for e in exclude)


def choose_layout(raw_dir, layout, exclude=()):
    """('flat', folder) or ('class_folders', {class id: [folders]}): the layout asked for, or the one the raw folder
    has (a UserError when it has both or neither)."""
    raw_dir = require_dir(raw_dir, "raw Oxford folder", "pass --raw_dir pointing at the Kaggle oxford-102 folder")
    flat = find_flat_folder(raw_dir, exclude) if layout in ("auto", "flat") else None
    folders = find_class_folders(raw_dir, exclude) if layout in ("auto", "class_folders") else {}
    if layout == "auto" and flat and folders:
        example = min(f for fs in folders.values() for f in fs)
        raise UserError(f"raw Oxford folder {raw_dir} has both a flat folder of images ({flat}) and class folders "
                        f"({example}, ...): pass --layout flat or --layout class_folders to say which to read.")
    if flat:
        return "flat", flat
    if folders or layout == "class_folders":
        return "class_folders", folders
    if layout == "flat":
        raise UserError(f"raw Oxford folder {raw_dir} has no flat folder of images (images/, jpg/ or image files "
                        f"directly inside): pass --raw_dir pointing at the folder that holds images/.")
    raise UserError(f"raw Oxford folder {raw_dir} has neither a flat folder of images (images/, jpg/ or image files "
                    f"directly inside, labelled by the CSV) nor class folders named NN or class_000NN: pass --raw_dir "
                    f"pointing at the Kaggle oxford-102 folder.")


def pool_class_images(raw_dir, folders):
    """class id -> {file name: path} over every folder of the class; a UserError naming the classes without images."""
    pooled = {}
    for class_id, class_folders in folders.items():
        for folder in class_folders:
            for f in image_files(folder):
                pooled.setdefault(class_id, {}).setdefault(f.name, f)
    missing = sorted({c for g in GROUPS for c in g} - set(pooled))
    if missing:
        raise UserError(f"raw Oxford folder {raw_dir} has no images for class(es) "
                        f"{', '.join(class_folder_name(c) for c in missing)}: pass --raw_dir pointing at the "
                        f"oxford-102 folder (class folders such as flower_data/train/51, or the original's flat "
                        f"images/ folder).")
    return pooled


def class_rows(df, csv_path):
    """class id -> [(image file name, caption)] of the six groups' classes, in CSV order."""
    labels = df["label"].map(class_id_of)
    rows = {}
    for class_id in (c for g in GROUPS for c in g):
        of_class = labels == class_id
        rows[class_id] = [(with_extension(image), caption)
                          for image, caption in zip(df["image"][of_class], df["caption"][of_class], strict=True)]
        if len(rows[class_id]) < 2:
            raise UserError(f"captions CSV {csv_path} has {len(rows[class_id])} row(s) with label "
                            f"{class_folder_name(class_id)}: give it one row per image of that class (columns "
                            f"image,label,caption).")
    return rows


def locate_images(layout, images, rows, df, csv_path, where):
    """class id -> {file name: path} of every CSV row's image; a UserError naming a row whose image is missing, a
    warning naming the images that no CSV row names (they are left out).

    images: {file name: path} of the flat folder `where`, or {class id: {file name: path}} of the class folders.
    """
    if layout == "flat":
        unlabelled = sorted(set(images) - {with_extension(image) for image in df["image"]})
        if unlabelled:
            log.warning("%d image(s) in %s have no row in %s and are left out: %s", len(unlabelled), where,
                        csv_path, some(unlabelled))
        located = {}
        for class_id, entries in rows.items():
            for image, _ in entries:
                if image not in images:
                    raise UserError(f"image {image} of {class_folder_name(class_id)} in {csv_path} is not in {where}:"
                                    f" fix the CSV row or pass the matching --raw_dir.")
                located.setdefault(class_id, {})[image] = images[image]
        return located
    for class_id, entries in rows.items():
        for image, _ in entries:
            if image not in images[class_id]:
                raise UserError(f"image {image} of {class_folder_name(class_id)} in {csv_path} is not in any class "
                                f"folder {class_id} under {where}: fix the CSV row or pass the matching --raw_dir.")
        unlabelled = sorted(set(images[class_id]) - {image for image, _ in entries})
        if unlabelled:
            log.warning("%d image(s) of %s have no row in %s and are left out: %s", len(unlabelled),
                        class_folder_name(class_id), csv_path, some(unlabelled))
    return images


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
                         "the Kaggle oxford-102 folder: images in one flat folder (images/, jpg/ or the folder "
                         "itself) labelled by the CSV, or class folders named NN or class_000NN under any split "
                         "subfolder (pooled)")
    parser.add_argument("--captions_csv", default=None,
                        help="CSV with columns image,label,caption, label like class_00051 "
                             "(default: <raw_dir>/image_caption.csv)")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto",
                        help="raw layout: flat (one folder of images, classes from the CSV, as the original), "
                             "class_folders, or auto (the one the folder has; default)")
    args = parser.parse_args(argv)
    setup_logging()

    cfg, roots = output_roots("oxford", args, ("image", "text"))
    layout, where = choose_layout(args.raw_dir, args.layout, exclude=roots.values())
    raw_dir = Path(args.raw_dir).resolve()
    if layout == "flat":
        images = {f.name: f for f in image_files(where)}
    else:
        images, where = pool_class_images(raw_dir, where), raw_dir
    log.info("reading the %s layout in %s", layout, where)
    csv_path = Path(args.captions_csv) if args.captions_csv else Path(args.raw_dir) / "image_caption.csv"
    df = read_captions_csv(csv_path)
    labelled = class_rows(df, csv_path)
    pooled = locate_images(layout, images, labelled, df, csv_path, where)
    splits = {class_id: split_rows(r, args.seed) for class_id, r in labelled.items()}  # {split: [(image, caption)]}

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
