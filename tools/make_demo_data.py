"""Write the deterministic multimodal demo dataset of config `demo` (4 image + 4 text tasks, 3 classes each).

Every sample is a small picture (the config's `resize`, 8 x 8 pixels) of one coloured shape, drawn at 4x and
downsampled, with Gaussian pixel noise, and a caption of the same picture. The tasks are built from two shared
attributes so that the backbone search has a right answer:

    task     modality  classes by  samples
    group1   image     colour      red / green / blue shapes on a dark background
    group2   image     colour      red / green / blue shapes on a light background (related to group1)
    group3   image     place       a random shape on the left / right / top, in random colours, on black
    group4   image     place       the same places, smaller shapes, other colours (related to group3)
    group5   text      colour      the captions of group1's pictures (same split)
    group6   text      colour      the captions of group2's pictures
    group7   text      place       the captions of group3's pictures
    group8   text      place       the captions of group4's pictures

The place tasks have near-black backgrounds and the config's mean/std (0.1/0.1) map black to about 0, so that the
shape's pixels stand out in the cross-attention; with 100 training samples per class (the default) every task
reaches ~100% test accuracy within 10 epochs at batch 32.

Layout (as the real preparers write): <root>/demo/image/{train,test}/group<k>/<class>/<id>.png and
<root>/demo/text/{train,test}/group<k+4>/<class>/<id>.txt.
"""
import argparse
import shutil

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from utils.config import load_dataset_config
from utils.errors import report_user_errors

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230), "yellow": (230, 220, 40),
           "purple": (160, 60, 200), "orange": (240, 140, 30), "cyan": (40, 210, 220), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
PLACES = {"left": ((0.28, 0.5), "on the left"), "right": ((0.72, 0.5), "on the right"),
          "top": ((0.5, 0.28), "near the top"), "middle": ((0.5, 0.55), "in the middle")}
TEMPLATES = ("a {size} {colour} {shape} {place}", "there is a {colour} {shape} {place}",
             "this picture shows one {size} {shape} {place} coloured {colour}", "a {shape} {place} that is {colour}")
# task: (attribute the classes are, class values, colours to draw from, background, scale range)
TASKS = {
    "group1": ("colour", ("red", "green", "blue"), None, (20, 20, 30), (0.55, 0.8)),
    "group2": ("colour", ("red", "green", "blue"), None, (200, 200, 190), (0.4, 0.7)),
    "group3": ("place", ("left", "right", "top"), ("red", "green", "blue", "yellow"), (10, 10, 10), (0.35, 0.45)),
    "group4": ("place", ("left", "right", "top"), ("purple", "orange", "cyan", "white"), (20, 20, 25), (0.25, 0.35)),
}
DRAW_SCALE, NOISE = 4, 8


def draw(shape, colour, background, scale, centre, pixels):
    size = pixels * DRAW_SCALE
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    r = scale * size / 2
    cx, cy = centre[0] * size, centre[1] * size
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img.resize((pixels, pixels), Image.LANCZOS)


def make_sample(rng, attribute, value, palette, background, scale_range, pixels):
    colour = value if attribute == "colour" else str(rng.choice(palette))
    shape = str(rng.choice(SHAPES))
    place = value if attribute == "place" else "middle"
    scale = float(rng.uniform(*scale_range))
    (x, y), place_words = PLACES[place]
    centre = (x + float(rng.uniform(-0.06, 0.06)), y + float(rng.uniform(-0.06, 0.06)))
    bg = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in background)
    img = draw(shape, COLOURS[colour], bg, scale, centre, pixels)
    noise = rng.normal(0, NOISE, (pixels, pixels, 3))
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
    caption = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(
        size="large" if scale > np.mean(scale_range) else "small", colour=colour, shape=shape, place=place_words)
    return img, caption


@report_user_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default=None, help="data root (default: $MMPAB_DATA_ROOT or data/)")
    p.add_argument("--train_per_class", type=int, default=100, help="training samples per class")
    p.add_argument("--test_per_class", type=int, default=10, help="test samples per class")
    p.add_argument("--seed", type=int, default=0, help="random seed (the data is identical for the same seed)")
    args = p.parse_args(argv)
    cfg = load_dataset_config("demo", args.data_root, check_folders=False)
    image_groups = [g for g in cfg.groups if cfg.modality(g) == "image"]
    text_groups = [g for g in cfg.groups if cfg.modality(g) == "text"]
    for split in ("train", "test"):
        for modality in ("image", "text"):
            shutil.rmtree(cfg.split_root(modality, split), ignore_errors=True)
    rng = np.random.default_rng(args.seed)
    pixels = int((cfg.raw.get("resize") or [16])[0])
    for image_group, text_group in tqdm(list(zip(image_groups, text_groups, strict=False)), desc="demo tasks",
                                        disable=None):
        attribute, values, palette, background, scale_range = TASKS[image_group]
        for split, n in (("train", args.train_per_class), ("test", args.test_per_class)):
            for value in values:
                img_dir = cfg.task_folder(image_group, split) / value
                txt_dir = cfg.task_folder(text_group, split) / value
                img_dir.mkdir(parents=True, exist_ok=True)
                txt_dir.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    img, caption = make_sample(rng, attribute, value, palette, background, scale_range, pixels)
                    img.save(img_dir / f"{value}_{i:03d}.png")
                    (txt_dir / f"{value}_{i:03d}.txt").write_text(caption + "\n", encoding="utf-8")
    print(f"demo data written under {cfg.data_root / 'demo'}")


if __name__ == "__main__":
    main()
