"""The dataset preparers (tools/prepare_{cub,oxford,mscoco}.py) produce the layout utils/dataset_config.yaml reads.

Runs them on tiny raw downloads in the real formats (tests/fixtures_raw.py).
"""
import importlib.util
import logging
import math
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from tests import fixtures_raw

REPO = Path(__file__).resolve().parent.parent


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_test_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_cub = load_tool("prepare_cub")
prepare_oxford = load_tool("prepare_oxford")
prepare_mscoco = load_tool("prepare_mscoco")


def run_main(tool, args):
    """Run a preparer in this process (faster than a subprocess); a UserError would surface as SystemExit(1)."""
    tool.main([str(a) for a in args])


def run_script(name, *args):
    return subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def names(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def stems(folder):
    return sorted(p.stem for p in Path(folder).iterdir())


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


# ---- CUB ---------------------------------------------------------------------------------------------------------
# 13 classes: 004 has 59 images (dropped); the 12 others have 60 -> groups of 5: {1,2,3,5,6}, {7,8,9,10,11},
# and {12,13} is the incomplete last chunk (dropped).
CUB_COUNTS = {i: (59 if i == 4 else 60) for i in range(1, 14)}


@pytest.fixture(scope="module")
def cub_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("cub_raw")
    csv_path = fixtures_raw.write_cub(raw, CUB_COUNTS)
    return raw, csv_path


@pytest.fixture(scope="module")
def cub_out(cub_raw, tmp_path_factory):
    raw, csv_path = cub_raw
    out = tmp_path_factory.mktemp("cub_out")
    run_main(prepare_cub, ["--raw_dir", raw, "--captions_csv", csv_path, "--out_dir", out])
    return out


def test_cub_keeps_classes_with_60_images_in_sorted_groups_of_five(cub_out):
    name = fixtures_raw.cub_class_name
    for split in ("train", "test"):
        assert names(cub_out / "image" / split) == ["group1", "group2"]
        assert names(cub_out / "image" / split / "group1") == [name(i) for i in (1, 2, 3, 5, 6)]
        assert names(cub_out / "image" / split / "group2") == [name(i) for i in (7, 8, 9, 10, 11)]


def test_cub_captions_are_text_groups_k_plus_the_image_group_count_with_the_same_split(cub_out):
    for split in ("train", "test"):
        assert names(cub_out / "text" / split) == ["group3", "group4"]
    for k in (1, 2):
        for class_dir in (cub_out / "image" / "train" / f"group{k}").iterdir():
            train, test = (stems(cub_out / "image" / s / f"group{k}" / class_dir.name) for s in ("train", "test"))
            assert (len(train), len(test)) == (48, 12)
            assert not set(train) & set(test)
            for split, image_stems in (("train", train), ("test", test)):
                text_dir = cub_out / "text" / split / f"group{k + 2}" / class_dir.name
                assert stems(text_dir) == image_stems
                stem = image_stems[0]
                assert (text_dir / f"{stem}.txt").read_text().strip() == f"caption of {stem}"


def test_cub_is_deterministic_and_the_seed_changes_the_split(cub_raw, cub_out, tmp_path):
    raw, csv_path = cub_raw
    run_main(prepare_cub, ["--raw_dir", raw / "CUB_200_2011", "--captions_csv", csv_path, "--out_dir", tmp_path / "a"])
    assert files_under(tmp_path / "a") == files_under(cub_out)
    run_main(prepare_cub, ["--raw_dir", raw, "--captions_csv", csv_path, "--out_dir", tmp_path / "b", "--seed", "7"])
    assert files_under(tmp_path / "b") != files_under(cub_out)


def test_cub_warns_when_the_group_count_differs_from_the_config(cub_raw, tmp_path, caplog):
    raw, csv_path = cub_raw
    with caplog.at_level(logging.WARNING):
        run_main(prepare_cub, ["--raw_dir", raw, "--captions_csv", csv_path, "--out_dir", tmp_path])
    assert any("declares 27 image and 27 text groups" in r.getMessage() for r in caplog.records)


def test_cub_script_writes_into_the_config_folders_under_the_data_root(cub_raw, tmp_path):
    raw, csv_path = cub_raw
    result = run_script("prepare_cub", "--raw_dir", raw, "--captions_csv", csv_path, "--data_root", tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "cub" / "image" / "train" / "group2").rglob("*.jpg"))) == 5 * 48
    assert len(list((tmp_path / "cub" / "text" / "test" / "group4").rglob("*.txt"))) == 5 * 12
    # a second run into the same, now non-empty, folders needs --overwrite
    assert_one_line_error(run_script("prepare_cub", "--raw_dir", raw, "--captions_csv", csv_path,
                                     "--data_root", tmp_path), "--overwrite")


def test_cub_image_without_caption_is_a_one_line_error(cub_raw, tmp_path):
    raw, csv_path = cub_raw
    df = pd.read_csv(csv_path)
    df[df["image"] != "Bird_2_0000.jpg"].to_csv(tmp_path / "short.csv", index=False)
    result = run_script("prepare_cub", "--raw_dir", raw, "--captions_csv", tmp_path / "short.csv",
                        "--out_dir", tmp_path / "out")
    assert_one_line_error(result, "Bird_2_0000.jpg", "short.csv")


def test_cub_missing_raw_folder_is_a_one_line_error(tmp_path):
    assert_one_line_error(run_script("prepare_cub", "--raw_dir", tmp_path / "nowhere"), "nowhere")


# ---- Oxford ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oxford_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("oxford_raw")
    csv_path = fixtures_raw.write_oxford(raw)
    return raw, csv_path


def test_oxford_fixed_groups_same_split_for_images_and_captions(oxford_raw, tmp_path):
    raw, csv_path = oxford_raw
    run_main(prepare_oxford, ["--raw_dir", raw, "--out_dir", tmp_path / "a"])  # CSV: raw/image_caption.csv
    out = tmp_path / "a"
    df = pd.read_csv(csv_path, dtype=str)
    groups = prepare_oxford.GROUPS
    assert groups[0] == [51, 72, 82, 60] and groups[5] == [94, 88, 78, 43]
    for split in ("train", "test"):
        assert names(out / "image" / split) == sorted(f"group{k}" for k in range(1, 7))
        assert names(out / "text" / split) == sorted(f"group{k}" for k in range(7, 13))
    for k, classes in enumerate(groups, start=1):
        assert names(out / "image" / "train" / f"group{k}") == sorted(f"class_{c:05d}" for c in classes)
        for c in classes:
            rows = df[df["label"] == f"class_{c:05d}"]["image"].tolist()
            train, test = train_test_split(rows, test_size=0.2, random_state=42)
            for split, expected in (("train", train), ("test", test)):
                image_dir = out / "image" / split / f"group{k}" / f"class_{c:05d}"
                assert names(image_dir) == sorted(Path(r).stem + ".jpg" for r in expected)
                text_dir = out / "text" / split / f"group{k + 6}" / f"class_{c:05d}"
                assert stems(text_dir) == stems(image_dir)
    run_main(prepare_oxford, ["--raw_dir", raw, "--captions_csv", csv_path, "--out_dir", tmp_path / "b"])
    assert files_under(tmp_path / "b") == files_under(out)
    assert not (out / "image" / "train" / "group1" / "class_00001").exists()


def test_oxford_csv_without_caption_column_is_a_one_line_error(oxford_raw, tmp_path):
    raw, csv_path = oxford_raw
    pd.read_csv(csv_path).drop(columns="caption").to_csv(tmp_path / "bad.csv", index=False)
    result = run_script("prepare_oxford", "--raw_dir", raw, "--captions_csv", tmp_path / "bad.csv",
                        "--out_dir", tmp_path / "out")
    assert_one_line_error(result, "bad.csv", "caption")
    assert not (tmp_path / "out").exists()


def test_oxford_missing_class_is_a_one_line_error(tmp_path):
    (tmp_path / "flower_data" / "train" / "51").mkdir(parents=True)
    result = run_script("prepare_oxford", "--raw_dir", tmp_path, "--out_dir", tmp_path / "out")
    assert_one_line_error(result, "class_00072")


# ---- MSCOCO ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    raw = tmp_path_factory.mktemp("coco_raw")
    expected = fixtures_raw.write_coco(raw)
    out = tmp_path_factory.mktemp("coco_out")
    run_main(prepare_mscoco, ["--raw_dir", raw, "--out_dir", out])
    return raw, expected, out


def test_mscoco_labels_by_first_annotation_and_skips_unmapped(coco):
    raw, expected, out = coco
    written = {p.name: (p.parent.parent.name, p.parent.name) for p in (out / "image").rglob("*.jpg")}
    assert {name: category for name, (_, category) in written.items()} == {f: c for (_, f), c in expected.items()}
    assert written["000000000022.jpg"][1] == "dog"  # annotated dog, then car
    assert "000000000021.jpg" not in written  # first annotation is a person
    assert written["000000001002.jpg"] == ("Indoor", "vase")
    assert (out / "image" / "train" / "Electronic" / "cell phone").is_dir()
    assert not any(p.is_symlink() for p in (out / "image").rglob("*"))


def test_mscoco_rebalance_moves_the_deficit_chosen_by_seeded_sample(coco):
    raw, expected, out = coco
    for group, name, n_train, n_test in (("Vehicle1", "car", 10, 0), ("Electronic", "cell phone", 6, 0),
                                         ("Animal2", "dog", 5, 1), ("Indoor", "vase", 0, 1)):
        originals = sorted(f for (split, f), c in expected.items() if split == "train" and c == name)
        deficit = max(0, math.ceil(0.2 * n_train) - n_test)
        moved = set(random.Random(42).sample(originals, deficit)) if deficit else set()
        train = {p.name for p in (out / "image" / "train" / group / name).glob("*")}
        test = {p.name for p in (out / "image" / "test" / group / name).glob("*")}
        assert train == set(originals) - moved
        assert len(test) == n_test + deficit and moved <= test


def test_mscoco_is_deterministic_and_overwrite_replaces(coco, tmp_path):
    raw, _, out = coco
    run_main(prepare_mscoco, ["--raw_dir", raw, "--out_dir", tmp_path])
    (tmp_path / "image" / "train" / "stale.txt").write_text("left from an earlier run")
    run_main(prepare_mscoco, ["--raw_dir", raw, "--out_dir", tmp_path, "--overwrite"])
    assert files_under(tmp_path) == files_under(out)


def test_mscoco_malformed_json_is_a_one_line_error(tmp_path):
    bad = tmp_path / "raw"
    for folder in ("train2017", "val2017", "annotations"):
        (bad / folder).mkdir(parents=True)
    (bad / "annotations" / "instances_train2017.json").write_text('{"images": [')
    result = run_script("prepare_mscoco", "--raw_dir", bad, "--out_dir", tmp_path / "out")
    assert_one_line_error(result, "instances_train2017.json")


# ---- all -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["prepare_cub", "prepare_oxford", "prepare_mscoco"])
def test_help_works(name):
    result = run_script(name, "--help")
    assert result.returncode == 0 and "--raw_dir" in result.stdout and "--overwrite" in result.stdout
