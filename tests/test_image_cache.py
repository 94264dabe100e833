"""The image cache: images are decoded once into uint8 tensors whose normalised values equal what PIL + torchvision
gave per item (within float rounding); later loads decode nothing; any changed file rebuilds it; crop, flip and
normalisation run per batch on the loader's device, drawn from the seeded global generator."""
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO, demo_config_file
from utils import images as images_mod
from utils.config import load_dataset_config
from utils.data import DeviceLoader, image_task, task_dataset, task_loaders
from utils.errors import UserError
from utils.images import BatchTransform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def close(a, b):
    """Equal to float rounding (the batch transform scales and shifts once where Normalize subtracts and divides)."""
    return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=1e-6)


def write_image(path, size, mode="RGB", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path, quality=90)


@pytest.fixture
def mixed(demo_root, tmp_path):
    """A copy of the demo data whose group1 also holds a JPEG, a grey PNG and an RGBA PNG of other sizes, with a
    config that resizes to 12 x 10 (so the resize really interpolates)."""
    root = tmp_path / "data"
    shutil.copytree(demo_root / "demo", root / "demo")
    folder = root / "demo" / "image" / "train" / "group1"
    write_image(folder / "blue" / "big.jpg", (37, 23))
    write_image(folder / "red" / "grey.png", (5, 9), mode="L", seed=1)
    write_image(folder / "red" / "alpha.png", (16, 16), mode="RGBA", seed=2)
    cfg = load_dataset_config("demo", root, config_file=demo_config_file(tmp_path, resize=[12, 10], mean=MEAN, std=STD))
    return cfg, folder


def torchvision_folder(cfg, folder, flip=False):
    """The pipeline before the cache: ImageFolder, Resize, (RandomHorizontalFlip,) ToTensor, Normalize per item."""
    from torchvision import datasets, transforms
    steps = [transforms.Resize(tuple(cfg.raw["resize"]))] + ([transforms.RandomHorizontalFlip(1.0)] if flip else [])
    steps += [transforms.ToTensor(), transforms.Normalize(cfg.raw["mean"], cfg.raw["std"])]
    return datasets.ImageFolder(str(folder), transform=transforms.Compose(steps))


def test_cached_items_equal_what_pil_and_torchvision_gave(mixed):
    cfg, folder = mixed
    task, old = image_task(cfg, "group1", "train"), torchvision_folder(cfg, folder)
    assert task.samples == old.samples and task.classes == old.classes and task.targets == old.targets
    assert task.images.dtype == torch.uint8 and task.images.shape == (len(old), 3, 12, 10)
    for i in range(len(old)):
        assert close(task[i]["x"], old[i][0]) and int(task[i]["y"]) == old[i][1]


def test_a_second_load_decodes_nothing_and_imports_no_torchvision(mixed, monkeypatch):
    cfg, _ = mixed
    first = image_task(cfg, "group1", "train", raw=True)
    image_task(cfg, "group1", "test", raw=True)

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was opened although its cache exists")
    monkeypatch.setattr(images_mod.Image, "open", no_decoding)
    second = image_task(cfg, "group1", "train", raw=True)
    assert torch.equal(first.images, second.images) and first.samples == second.samples
    code = ("import sys; from utils.config import load_dataset_config; from utils.data import task_loaders; "
            f"task_loaders(load_dataset_config('demo', {str(cfg.data_root)!r}, config_file={str(cfg.config_file)!r}), "
            "'group1', 8, 8); assert 'torchvision' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_changed_file_changes_the_key_and_is_decoded_again(mixed, caplog):
    cfg, folder = mixed
    before = image_task(cfg, "group1", "train", raw=True)
    index = [p for p, _ in before.samples].index(str(folder / "blue" / "big.jpg"))
    write_image(folder / "blue" / "big.jpg", (37, 23), seed=7)
    with caplog.at_level(logging.INFO):
        after = image_task(cfg, "group1", "train", raw=True)
    assert any("cached" in r.getMessage() for r in caplog.records)
    assert len(list((cfg.data_root / ".cache").glob("image_*.pt"))) == 2
    assert not torch.equal(after.images[index], before.images[index])
    others = [i for i in range(len(before)) if i != index]
    assert torch.equal(after.images[others], before.images[others])


def test_an_unreadable_cache_file_is_rebuilt_with_a_warning(mixed, caplog):
    cfg, _ = mixed
    first = image_task(cfg, "group1", "test", raw=True)
    (cache,) = (cfg.data_root / ".cache").glob("image_*.pt")
    cache.write_bytes(b"torn")
    with caplog.at_level(logging.WARNING):
        again = image_task(cfg, "group1", "test", raw=True)
    assert torch.equal(first.images, again.images)
    assert any(str(cache) in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)


def test_images_of_different_sizes_without_resize_name_the_section(mixed, tmp_path):
    cfg, folder = mixed
    cfg = load_dataset_config("demo", cfg.data_root, config_file=demo_config_file(tmp_path, resize=None))
    with pytest.raises(UserError) as e:
        image_task(cfg, "group1", "train")
    message = str(e.value)
    assert str(folder) in message and "differ in size" in message and f"section 'demo' of {cfg.config_file}" in message
    assert "add resize" in message and "\n" not in message


def test_skipped_files_are_reported_again_from_the_cache(mixed, tmp_path, monkeypatch):
    cfg, folder = mixed
    bad = folder / "red" / "red_001.png"
    bad.write_bytes(b"garbage")
    skipping = load_dataset_config("demo", cfg.data_root, config_file=demo_config_file(
        tmp_path, resize=[12, 10], skip_corrupt_images=True))
    assert str(bad) not in [p for p, _ in image_task(skipping, "group1", "train").samples]
    monkeypatch.setattr(images_mod.Image, "open", lambda *a, **k: pytest.fail("decoded although cached"))
    with pytest.raises(UserError, match="cannot be read") as e:          # the cache does not hide it
        image_task(load_dataset_config("demo", cfg.data_root, config_file=demo_config_file(tmp_path, resize=[12, 10])),
                   "group1", "train")
    assert str(bad) in str(e.value) and "skip_corrupt_images: true" in str(e.value)


def test_flip_on_the_device_flips_exactly_the_drawn_samples_and_follows_the_seed(mixed):
    cfg, folder = mixed
    task = image_task(cfg, "group1", "train", raw=True)
    x = task.images[:16]
    flip = BatchTransform(MEAN, STD, flip=True)
    torch.manual_seed(3)
    out = flip(x)
    torch.manual_seed(3)
    drawn = torch.rand(16) < 0.5
    assert 0 < drawn.sum() < 16
    plain, mirrored = BatchTransform(MEAN, STD)(x), torch.stack([i[0] for i in torchvision_folder(cfg, folder, True)])
    assert close(out[drawn], mirrored[:16][drawn]) and torch.equal(out[~drawn], plain[~drawn])
    torch.manual_seed(3)
    assert torch.equal(flip(x), out)


def test_random_crop_takes_a_window_of_the_zero_padded_image():
    x = torch.randint(0, 256, (6, 3, 10, 10), dtype=torch.uint8)
    crop = BatchTransform([0, 0, 0], [1, 1, 1], crop=8, padding=2)
    torch.manual_seed(0)
    out = crop(x)
    torch.manual_seed(0)
    top, left = torch.randint(0, 7, (6,)), torch.randint(0, 7, (6,))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2)).float() / 255
    assert out.shape == (6, 3, 8, 8)
    for k in range(6):
        assert close(out[k], padded[k, :, top[k]:top[k] + 8, left[k]:left[k] + 8])


def test_loaders_deliver_normalised_batches_on_the_asked_device(mixed):
    cfg, folder = mixed
    train, test, classes = task_loaders(cfg, "group1", 8, 100, device="meta")
    assert isinstance(train, DeviceLoader) and classes == 3 and len(train) == len(train.loader)
    assert train.sampler is train.loader.sampler and train.generator is train.loader.generator
    batch = next(iter(train))
    assert batch["x"].device.type == batch["y"].device.type == "meta" and batch["x"].dtype == torch.float32
    _, test, _ = task_loaders(cfg, "group1", 8, 100)
    old = torch.stack([item[0] for item in torchvision_folder(cfg, folder.parent.parent / "test" / "group1")])
    assert close(torch.cat([b["x"] for b in test]), old)


def test_few_shot_subsets_and_text_tasks_still_load(demo_root):
    cfg = load_dataset_config("demo", demo_root)
    train, _, _ = task_loaders(cfg, "group1", 4, 100, train_per_class=2)
    assert len(train.dataset) == 6 and sum(len(b["y"]) for b in train) == 6
    text = task_dataset(cfg, "group5", "test")
    assert text[0]["x"].dtype == torch.float32 and "mask" in text[0]
