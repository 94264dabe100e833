"""Tiny raw downloads in the real formats of CUB-200-2011, Kaggle oxford-102-flower-pytorch and COCO 2017.

Used by tests/test_prepare_datasets.py to run the preparers in tools/ on a few hundred 8x8 JPEGs.
"""
import io
import json
from pathlib import Path

import pandas as pd
from PIL import Image

OXFORD_CLASSES = [51, 72, 82, 60, 77, 65, 58, 56, 46, 74, 37, 80, 73, 41, 83, 95, 89, 81, 75, 76, 94, 88, 78, 43]


def _jpeg(color):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


def _write_image(path, index):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_jpeg((index * 37 % 256, index * 91 % 256, index * 13 % 256)))


def cub_class_name(i):
    return f"{i:03d}.Bird_{i}"


def write_cub(root, images_per_class):
    """`root/CUB_200_2011/images/<NNN.Bird_N>/Bird_N_<k>.jpg` plus `root/image_caption.csv`.

    images_per_class: {class number: number of images}. Caption of an image = "caption of <stem>". Every other CSV
    row names the image by its relative path, the rest by the bare file name (the preparer matches by basename).
    """
    rows = []
    for i, n in images_per_class.items():
        name = cub_class_name(i)
        for k in range(n):
            file_name = f"Bird_{i}_{k:04d}.jpg"
            _write_image(Path(root) / "CUB_200_2011" / "images" / name / file_name, i * 100 + k)
            image = f"{name}/{file_name}" if k % 2 else file_name
            rows.append({"image": image, "label": name, "caption": f"caption of {Path(file_name).stem}"})
    csv_path = Path(root) / "image_caption.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path


def write_oxford(root, images_per_class=5):
    """`root/flower_data/{train,valid}/<id>/image_NNNNN.jpg` plus `root/image_caption.csv` (labels class_000NN).

    The last image of each class lies in valid/ (the preparer pools split folders); half the CSV rows give the image
    name without `.jpg`. Class 1 is a distractor that is in no group.
    """
    rows, number = [], 0
    for class_id in OXFORD_CLASSES + [1]:
        for k in range(images_per_class):
            number += 1
            file_name = f"image_{number:05d}.jpg"
            split = "valid" if k == images_per_class - 1 else "train"
            _write_image(Path(root) / "flower_data" / split / str(class_id) / file_name, number)
            image = file_name if number % 2 else Path(file_name).stem
            rows.append({"image": image, "label": f"class_{class_id:05d}", "caption": f"flower {number}"})
    csv_path = Path(root) / "image_caption.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path


COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"},
                   {"id": 77, "name": "cell phone"}, {"id": 86, "name": "vase"}]


def write_coco(root):
    """`root/{train2017,val2017}/*.jpg` and `root/annotations/instances_{train,val}2017.json`.

    train: car 10 images (and 0 in val: 2 move), cell phone 6 (0 in val: ceil(1.2) = 2 move), dog 5 (1 in val: none
    moves), one image whose first annotation is a person (skipped although it also shows a car), one image annotated
    dog then car (label dog; its annotations come after others in the file, and the car one first by id), one image
    without annotations (skipped). val: one dog, one vase.
    Returns the expected label of every labelled image: {(split, file name): category}.
    """
    root = Path(root)
    expected = {}
    specs = {"train": [("car", 10), ("cell phone", 6), ("dog", 4)], "val": [("dog", 1), ("vase", 1)]}
    cat_id = {c["name"]: c["id"] for c in COCO_CATEGORIES}
    for split, classes in specs.items():
        images, annotations, number = [], [], 0
        base = 1000 if split == "val" else 0

        def add_image(base=base, split=split, images=images):      # (called within this iteration)
            nonlocal number
            number += 1
            image_id = base + number
            file_name = f"{image_id:012d}.jpg"
            _write_image(root / f"{split}2017" / file_name, image_id)
            images.append({"id": image_id, "file_name": file_name, "width": 8, "height": 8})
            return image_id, file_name

        for name, n in classes:
            for _ in range(n):
                image_id, file_name = add_image()
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id[name]})
                expected[("train" if split == "train" else "test", file_name)] = name
        if split == "train":
            person_id, _ = add_image()
            annotations.append({"id": 9001, "image_id": person_id, "category_id": cat_id["person"]})
            annotations.append({"id": 9002, "image_id": person_id, "category_id": cat_id["car"]})
            multi_id, multi_file = add_image()
            annotations.append({"id": 9004, "image_id": multi_id, "category_id": cat_id["dog"]})
            annotations.append({"id": 9003, "image_id": multi_id, "category_id": cat_id["car"]})
            expected[("train", multi_file)] = "dog"
            add_image()  # no annotations
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        instances = {"images": images, "annotations": annotations, "categories": COCO_CATEGORIES}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(instances))
    return expected
