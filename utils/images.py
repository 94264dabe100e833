"""Image task splits, decoded once into a uint8 tensor cache, and their per-batch transforms on tensors.

Each split's images are decoded with PIL, converted to RGB and resized with the config's `transforms.Resize` once,
and stored with their labels as one uint8 tensor [N, 3, H, W] in `<data_root>/.cache/image_<key>.pt`; the key
covers a version, the size and every file's name, label and content, so any change rebuilds it. An epoch then
reads tensors only: the random crop, the random horizontal flip and the normalisation run per batch, on the run's
device (`BatchTransform`). (The original decoded and resized every image with PIL in every epoch.)
"""
import errno
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from utils import checkpoint
from utils.errors import UserError

log = logging.getLogger(__name__)
IMAGE_CACHE_VERSION = 1
# torchvision's ImageFolder extensions, copied: a load from the cache then needs no torchvision (~1.3 s per process)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
PIL_ERRORS = (OSError, SyntaxError, ValueError)             # PIL's errors for broken, truncated or unknown files


# ---- the files -------------------------------------------------------------------------------------------------
def walk(folder):
    """[(folder, subfolders, files)] of every folder under `folder`, sorted, links followed (the walk of torchvision's
    ImageFolder; the text loader and the data fingerprint check the same links). A link that leads back into
    `folder`'s tree or to one of its own folders (following it would read files twice, or without end) or to itself
    is a UserError naming it; links that lead out of the tree (data kept elsewhere) are followed."""
    tree = os.path.realpath(folder)
    walked = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        for name in dirs + files:                                 # before os.walk goes into any of them
            path = os.path.join(top, name)
            if os.path.islink(path):
                check_link(path, tree)
        walked.append((top, sorted(dirs), sorted(files)))
    return sorted(walked)


def check_link(path, tree):
    """A UserError when the link `path` (under the data folder `tree`, a real path) is a loop: it leads to itself, into
    `tree`, or to a folder that holds it."""
    try:
        target = os.path.realpath(path, strict=True)
    except OSError as e:
        if e.errno != errno.ELOOP:
            return                       # a link to nothing: the loader names it as a file it cannot read
        raise UserError(f"the link {path} leads to itself (a loop of links): delete it.") from None
    holder = os.path.realpath(os.path.dirname(path))
    inside = target == tree or target.startswith(tree + os.sep)
    if inside or holder == target or holder.startswith(target + os.sep):
        raise UserError(f"the link {path} leads back into {tree if inside else 'a folder that holds it'} (to "
                        f"{target}), so its files would be read twice or without end: delete the link, or replace it "
                        f"with a copy of what it should add.")


def image_samples(folder):
    """(classes, [(path, label)]) in torchvision ImageFolder's order: class folders sorted by name (label = index),
    the files with an image extension under each, walked in sorted order."""
    folder = str(folder)
    walked = walk(folder)
    classes = walked[0][1] if walked else []
    samples = []
    for label, name in enumerate(classes):
        inside = os.path.join(folder, name)
        for root, _, files in walked:
            if root == inside or root.startswith(inside + os.sep):
                samples += [(os.path.join(root, f), label) for f in files if f.lower().endswith(IMG_EXTENSIONS)]
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if not classes or empty:
        what = f"class folders without images ({', '.join(empty)})" if classes else "no class folders"
        raise UserError(f"image folder {folder} has {what}: re-run the dataset preparer.")
    return classes, samples


def unreadable_images(paths):
    """{path: error} of the files PIL cannot open and verify. Cheap: verify() checks the file's structure (for PNG
    every chunk's checksum) without decoding the pixels."""
    bad = {}
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except PIL_ERRORS as e:
            bad[path] = e.__class__.__name__
    return bad


def check_unreadable(cfg, folder, bad, warn=True):
    """Stop on unreadable files (their names and error class names in `bad`), or (`warn`) warn about each and go on
    when the config says skip_corrupt_images: true."""
    if bad and not cfg.raw.get("skip_corrupt_images"):
        path, error = next(iter(bad.items()))
        more = f" ({len(bad) - 1} more in {folder})" if len(bad) > 1 else ""
        raise UserError(f"image file {path}{more} cannot be read ({error}): replace or delete it, or set "
                        f"skip_corrupt_images: true in section '{cfg.name}' of {cfg.config_file} to skip such files.")
    for path, error in bad.items() if warn else ():
        log.warning(f"skipping unreadable image file {path} ({error}): skip_corrupt_images is true in section "
                    f"'{cfg.name}' of {cfg.config_file}")


# ---- decoding once ---------------------------------------------------------------------------------------------
def cached_size(cfg, train):
    """The size the cache stores: the config's resize, except for training with `crop`, which (as before) crops
    the images at their own size."""
    if train and cfg.raw.get("crop"):
        return None
    return list(cfg.raw["resize"]) if cfg.raw.get("resize") else None


def decode(path, resize=None):
    """uint8 [3, H, W]: the pixels ImageFolder's loader, `resize` and ToTensor give (before ToTensor's / 255)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    if resize is not None:
        image = resize(image)
    return torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1)


def build_cache(cfg, folder, samples, size):
    """{'images': uint8 [N, 3, H, W], 'labels': [N], 'skipped': [[index, error]]} of the readable samples. A file
    whose header verifies but whose pixels do not decode (e.g. a truncated JPEG) is caught here too."""
    bad = unreadable_images(path for path, _ in samples)          # cheap: stop before decoding anything
    check_unreadable(cfg, folder, bad, warn=False)                 # (cached_images warns about what it skips)
    resize = None
    if size:
        from torchvision import transforms                           # the exact resize the config asks for
        resize = transforms.Resize(tuple(size))
    images, labels, skipped = [], [], []
    for i, (path, label) in enumerate(tqdm(samples, desc=f"decoding images of {Path(folder).name}", leave=False,
                                           disable=None)):
        error = bad.get(path)
        if error is None:
            try:
                images.append(decode(path, resize))
                labels.append(label)
                continue
            except PIL_ERRORS as e:
                error = e.__class__.__name__
        skipped.append([i, error])
    check_unreadable(cfg, folder, {samples[i][0]: e for i, e in skipped if samples[i][0] not in bad}, warn=False)
    if not images:
        raise UserError(f"image folder {folder} has no readable image: replace its files or re-run the dataset "
                        f"preparer.")
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        first, other = sorted(shapes)[:2]
        raise UserError(f"the images in {folder} differ in size ({first[2]}x{first[1]} and {other[2]}x{other[1]} "
                        f"pixels) and section '{cfg.name}' of {cfg.config_file} does not resize them for this split: "
                        f"add resize: [height, width] to it.")
    return {"images": torch.stack(images), "labels": torch.tensor(labels), "skipped": skipped}


def cached_images(cfg, folder, samples, size, cache_file):
    """The cache of `samples` from `cache_file`, built (and written) first when it is missing or unreadable. The
    files it left out are reported (again, when it was read): nothing else is re-read."""
    cached = checkpoint.load_or_build(cache_file, lambda: build_cache(cfg, folder, samples, size),
                                      f"decoded images of {folder}")
    check_unreadable(cfg, folder, {samples[i][0]: error for i, error in cached["skipped"]})
    return cached


# ---- per-batch transforms on tensors ---------------------------------------------------------------------------
class BatchTransform:
    """What the torchvision transforms did to each PIL image, on a uint8 batch [B, 3, H, W] on its own device:
    random crop (with zero padding) and random horizontal flip when training, then ToTensor + Normalize in their
    order ((x / 255 - mean) / std in float32, equal to theirs within float rounding). Random draws come from torch's
    global CPU generator, one per batch, so seeded runs reproduce and a resumed run (which restores it) continues."""

    def __init__(self, mean, std, flip=False, crop=None, padding=4, source="the dataset config"):
        self.mean, self.std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.flip, self.crop, self.padding, self.source = flip, crop, padding, source
        self.stats = {}

    @classmethod
    def of(cls, cfg, train):
        return cls(cfg.raw["mean"], cfg.raw["std"], flip=train and bool(cfg.raw.get("random_horizontal_flip")),
                   crop=cfg.raw.get("crop") if train else None, padding=cfg.raw.get("padding", 4),
                   source=f"section '{cfg.name}' of {cfg.config_file}")

    def normalise(self, x):
        if x.device not in self.stats:       # (x / 255 - mean) / std as one scale and one shift per channel
            scale, shift = 1.0 / (255.0 * self.std), -self.mean / self.std
            self.stats[x.device] = (scale.to(x.device).view(-1, 1, 1), shift.to(x.device).view(-1, 1, 1))
        scale, shift = self.stats[x.device]
        # three passes over the batch instead of ToTensor + Normalize's four; equal to theirs within 1e-6
        return x.to(torch.float32).mul_(scale).add_(shift)

    def __call__(self, x):
        if self.crop:
            x = random_crop(x, self.crop, self.padding, self.source)
        if self.flip:
            x = random_flip(x)
        return self.normalise(x)


def random_flip(x):
    """Each image of the batch mirrored left-right with probability 1/2. The draws stay on the CPU, so no device
    sync; one flip per drawn image is ~10x faster on a CPU than one gather or where() over the whole batch."""
    y = x.clone()
    for i in (torch.rand(len(x)) < 0.5).nonzero().flatten().tolist():
        y[i] = x[i].flip(-1)
    return y


def random_crop(x, size, padding, source="the dataset config"):
    """A random size x size window of each image after zero padding on every side (RandomCrop's fill=0)."""
    if padding:
        x = F.pad(x, (padding,) * 4)
    b, c, h, w = x.shape
    if size > h or size > w:
        raise UserError(f"crop {size} of {source} is larger than the padded training images ({h}x{w} pixels): "
                        f"lower it.")
    top = torch.randint(0, h - size + 1, (b,)).to(x.device)
    left = torch.randint(0, w - size + 1, (b,)).to(x.device)
    steps = torch.arange(size, device=x.device)
    rows, cols = (top[:, None] + steps)[:, None, :, None], (left[:, None] + steps)[:, None, None, :]
    batch = torch.arange(b, device=x.device).view(-1, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, -1, 1, 1)
    return x[batch, channel, rows, cols]


# ---- the dataset -----------------------------------------------------------------------------------------------
class ImageTask(Dataset):
    """Decoded images of one task split; items are {'x': uint8 [3, H, W], 'y': label} (`transform` None) or
    {'x': transform(x)} (e.g. normalised float [3, H, W], for code that reads items one by one)."""

    def __init__(self, classes, samples, images, labels, transform=None):
        self.classes, self.samples, self.images, self.labels = classes, samples, images, labels
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x[None])[0]
        return {"x": x, "y": self.labels[i]}
