"""What the three dataset preparers share: arguments, output folders, CSV reading, copying, checks.

The preparers write the layout `utils/dataset_config.yaml` reads: `<dataset>/image/{train,test}/<group>/<class>/<file>`
and, for captioned datasets, `<dataset>/text/{train,test}/<group>/<class>/<stem>.txt`.
"""
import argparse
import logging
import shutil
from pathlib import Path

import pandas as pd

from utils.config import load_dataset_config
from utils.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CAPTION_COLUMNS = ("image", "label", "caption")
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def make_parser(description, config_name, raw_help, seed_help="seed of the per-class 80/20 train/test split"):
    """The arguments every preparer takes; a preparer adds its own before parsing."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw_dir", required=True, help=raw_help)
    parser.add_argument("--out_dir", default=None,
                        help=f"folder to write image/{{train,test}}/... (and text/...) into; default: the folders of "
                             f"config '{config_name}' in utils/dataset_config.yaml under the data root")
    parser.add_argument("--data_root", default=None,
                        help="data root the config's relative paths resolve against (default: $MMPAB_DATA_ROOT, "
                             "else data/ in the repository); ignored when --out_dir is given")
    parser.add_argument("--seed", type=int, default=42, help=f"{seed_help} (default: 42)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the output split folders (image/train, image/test, text/train, text/test) before "
                             "writing; without it the preparer refuses to write into a non-empty output folder")
    return parser


def setup_logging():
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def output_roots(config_name, args, modalities):
    """Map (modality, split) to the folder to write, and return the loaded config with it.

    Without --out_dir the config's own folders (under the data root) are used; with it, `<out_dir>/<modality>/<split>`.
    """
    cfg = load_dataset_config(config_name, data_root=args.data_root, check_folders=False)
    roots = {}
    for modality in modalities:
        for split in ("train", "test"):
            if args.out_dir:
                roots[(modality, split)] = Path(args.out_dir).resolve() / modality / split
            else:
                roots[(modality, split)] = cfg.split_root(modality, split)
    return cfg, roots


def prepare_output(roots, overwrite, log):
    """Refuse a non-empty output unless --overwrite, in which case the split folders are emptied first."""
    for root in roots.values():
        if root.exists() and not root.is_dir():
            raise UserError(f"output path {root} exists and is not a folder: remove it or pass another --out_dir.")
        if root.is_dir() and any(root.iterdir()):
            if not overwrite:
                raise UserError(f"output folder {root} is not empty: pass --overwrite to replace it, or choose "
                                f"another --out_dir.")
            log.info("removing previous output %s", root)
            shutil.rmtree(root)
    for root in roots.values():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create output folder {root} ({e.strerror}): pass a writable --out_dir or "
                            f"--data_root.") from None


def require_dir(path, what, fix):
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{what} {path} does not exist or is not a folder: {fix}.")
    return path.resolve()


def read_captions_csv(path):
    """Read an `image,label,caption` CSV as strings (empty captions stay empty strings, not NaN)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"captions CSV {path} does not exist: pass --captions_csv pointing at the image_caption.csv "
                        f"with columns image,label,caption.")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"captions CSV {path} cannot be parsed ({e.__class__.__name__}): fix it so that it is a "
                        f"CSV with header image,label,caption.") from None
    missing = [c for c in CAPTION_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"captions CSV {path} has no column(s) {', '.join(missing)} (it has "
                        f"{', '.join(map(str, df.columns)) or 'none'}): give it the header image,label,caption.")
    return df


def image_files(folder):
    """The image files directly inside `folder`, sorted by name (hidden files skipped)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def copy_file(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def write_text(dst, text):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text.strip() + "\n", encoding="utf-8")


def warn_layout(cfg, image_groups, text_groups, log):
    """Warn when the produced groups are not the image/text groups the config declares (e.g. on a partial dataset)."""
    declared_image = [g for g in cfg.groups if g not in cfg.text_groups]
    declared_text = list(cfg.text_groups)
    if list(image_groups) != declared_image or list(text_groups) != declared_text:
        log.warning("prepared %d image and %d text groups (%s) but config '%s' in %s declares %d image and %d text "
                    "groups (%s); edit DATASETS/text_groups there before training on this data",
                    len(image_groups), len(text_groups), _span(list(image_groups) + list(text_groups)), cfg.name,
                    cfg.config_file, len(declared_image), len(declared_text), _span(cfg.groups))


def some(names, limit=5):
    """`names` for one sentence: all of them up to `limit`, else the first `limit` and how many more."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


def _span(groups):
    if len(groups) <= 4:
        return ", ".join(groups) or "none"
    return f"{groups[0]}..{groups[-1]}"
