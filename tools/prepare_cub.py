"""Prepare CUB-200-2011 with captions for config 'cub' (replaces the original's cub.ipynb).

Keeps the classes with exactly 60 images, sorts them and chunks them into groups of 5 (the incomplete last chunk is
dropped: 27 groups on the full dataset, as the original notebook made). Each class is split 80/20 (48/12) with a
seeded split, and the captions use the SAME split as their images (the original notebook split the images and the
captions with two separate, unseeded shuffles).

Names follow the original's config: image group k is group<k>, and the captions of image group k are text group
group<28+k>, so the full dataset gives image groups group1..group27 and text groups group29..group55 (the original
notebook named the caption groups group1..group27, which its config did not read). The original's config also
declares group28 (image) and group56 (its captions); its notebook makes no 28th group and it cannot be rebuilt, so
those two are not tasks here, and config 'cub' lists the other 54 with their original task ids
(`original_task_ids`: task ids 28..54 are the original's 29..55).

    python tools/prepare_cub.py --raw_dir ~/downloads --captions_csv ~/downloads/image_caption.csv
"""
import logging
from pathlib import Path

from tqdm import tqdm

from tools._prepare_common import (copy_file, image_files, make_parser, output_roots, prepare_output,
                                   read_captions_csv, require_dir, setup_logging, warn_layout, write_text)
from utils.errors import UserError, report_user_errors

IMAGES_PER_CLASS = 60
CLASSES_PER_GROUP = 5
TEST_SIZE = 0.2
# the original's config: image groups group1..group28, their captions group29..group56 (caption group k = 28 + k)
ORIGINAL_IMAGE_GROUPS = 28
log = logging.getLogger("prepare_cub")


def find_images_dir(raw_dir):
    """Accept the folder holding CUB_200_2011/ or CUB_200_2011/ itself."""
    raw_dir = require_dir(raw_dir, "raw CUB folder", "pass --raw_dir pointing at the folder that holds "
                                                    "CUB_200_2011/images")
    for candidate in (raw_dir / "CUB_200_2011" / "images", raw_dir / "images"):
        if candidate.is_dir():
            return candidate
    raise UserError(f"raw CUB folder {raw_dir} has neither CUB_200_2011/images nor images/: pass --raw_dir pointing "
                    f"at the folder that holds CUB_200_2011/images/<NNN.Name>/*.jpg.")


def chunk_classes(counts):
    """The original's grouping: of {class folder: number of images}, the classes with exactly 60 images, sorted by
    name, in consecutive groups of 5 (the incomplete last chunk dropped). Returns (groups, dropped, leftover)."""
    kept = sorted(name for name, n in counts.items() if n == IMAGES_PER_CLASS)
    groups = [kept[i:i + CLASSES_PER_GROUP] for i in range(0, len(kept) - CLASSES_PER_GROUP + 1, CLASSES_PER_GROUP)]
    return groups, sorted(set(counts) - set(kept)), kept[len(groups) * CLASSES_PER_GROUP:]


def make_groups(images_dir):
    """The groups of the class folders in `images_dir` (chunk_classes); returns ([[class, ...], ...], files)."""
    files = {d.name: image_files(d) for d in sorted(images_dir.iterdir()) if d.is_dir()}
    groups, dropped, leftover = chunk_classes({name: len(f) for name, f in files.items()})
    if dropped:
        log.info("dropping %d classes without exactly %d images: %s", len(dropped), IMAGES_PER_CLASS,
                 ", ".join(dropped))
    if leftover:
        log.info("dropping the incomplete last chunk: %s", ", ".join(leftover))
    if not groups:
        raise UserError(f"raw CUB folder {images_dir} has fewer than {CLASSES_PER_GROUP} classes with exactly "
                        f"{IMAGES_PER_CLASS} images: pass --raw_dir pointing at the complete CUB_200_2011 download.")
    if len(groups) > ORIGINAL_IMAGE_GROUPS:
        raise UserError(f"raw CUB folder {images_dir} gives {len(groups)} groups, more than the original's "
                        f"numbering has room for ({ORIGINAL_IMAGE_GROUPS}): pass --raw_dir pointing at the "
                        f"CUB_200_2011 download itself.")
    return groups, files


def group_names(num_image_groups):
    """(image groups, text groups) as the original's config names them: group<k> and its captions group<28+k>."""
    return ([f"group{k}" for k in range(1, num_image_groups + 1)],
            [f"group{ORIGINAL_IMAGE_GROUPS + k}" for k in range(1, num_image_groups + 1)])


def caption_index(df, csv_path):
    """basename of `image` -> caption (the first row wins when an image appears twice)."""
    index = {}
    for image, caption in zip(df["image"], df["caption"], strict=True):
        index.setdefault(Path(image.replace("\\", "/")).name, caption)
    if len(index) < len(df):
        log.warning("%s has %d rows for images that already had a caption; the first caption of each is used",
                    csv_path, len(df) - len(index))
    return index


def split_class(files, seed):
    from sklearn.model_selection import train_test_split  # imported late: it is slow and input errors come first
    train, test = train_test_split(files, test_size=TEST_SIZE, random_state=seed)
    return {"train": sorted(train), "test": sorted(test)}


@report_user_errors
def main(argv=None):
    parser = make_parser(__doc__, "cub",
                         "folder holding CUB_200_2011/images/<NNN.Name>/*.jpg (or the CUB_200_2011 folder itself)")
    parser.add_argument("--captions_csv", default=None,
                        help="CSV with columns image,label,caption, one row per image, matched by file name "
                             "(default: <raw_dir>/image_caption.csv)")
    args = parser.parse_args(argv)
    setup_logging()

    images_dir = find_images_dir(args.raw_dir)
    csv_path = Path(args.captions_csv) if args.captions_csv else Path(args.raw_dir) / "image_caption.csv"
    captions = caption_index(read_captions_csv(csv_path), csv_path)
    groups, files = make_groups(images_dir)
    for class_name in (c for g in groups for c in g):
        for f in files[class_name]:
            if f.name not in captions:
                raise UserError(f"image {class_name}/{f.name} has no caption in {csv_path}: add a row for it "
                                f"(columns image,label,caption) or pass the matching --captions_csv.")

    cfg, roots = output_roots("cub", args, ("image", "text"))
    prepare_output(roots, args.overwrite, log)
    image_groups, text_groups = group_names(len(groups))

    total = sum(len(files[c]) for g in groups for c in g)
    with tqdm(total=total, desc="cub", unit="img", disable=None) as bar:
        for image_group, text_group, classes in zip(image_groups, text_groups, groups, strict=True):
            for class_name in classes:
                for split, split_files in split_class(files[class_name], args.seed).items():
                    for f in split_files:
                        copy_file(f, roots[("image", split)] / image_group / class_name / f.name)
                        write_text(roots[("text", split)] / text_group / class_name / f"{f.stem}.txt",
                                   captions[f.name])
                        bar.update()

    log.info("wrote %d image groups (%s) and %d text groups (%s, the captions of image group k are group<28+k> as in "
             "the original's config) under %s", len(image_groups), f"{image_groups[0]}..{image_groups[-1]}",
             len(text_groups), f"{text_groups[0]}..{text_groups[-1]}", roots[("image", "train")].parent.parent)
    warn_layout(cfg, image_groups, text_groups, log)


if __name__ == "__main__":
    main()
