"""The dataset preparers (tools/prepare_{cub,oxford,mscoco}.py) make the original's tasks in the layout
utils/dataset_config.yaml reads.

The group -> class lists below are the original notebooks' (their output on the real datasets), written out here, so
the preparers are checked against the original and not against themselves; the raw downloads are tiny copies in the
real formats with the real class names (tests/fixtures_raw.py).
"""
import importlib.util
import logging
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.model_selection import train_test_split

from tests import fixtures_raw
from tests.conftest import assert_one_sentence, run_main
from utils.config import load_dataset_config
from utils.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_test_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_cub = load_tool("prepare_cub")
prepare_oxford = load_tool("prepare_oxford")
prepare_mscoco = load_tool("prepare_mscoco")


def prepare(tool, *args):
    """Run a preparer in this process (faster than a subprocess); a UserError surfaces as SystemExit(1)."""
    tool.main([str(a) for a in args])


def fails(tool, capsys, *args):
    """A preparer's one `error:` sentence (it must exit 1 without a traceback)."""
    code = run_main(tool.main, [str(a) for a in args])
    err = capsys.readouterr().err
    return assert_one_sentence(err, code)


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def names(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def stems(folder):
    return sorted(p.stem for p in Path(folder).iterdir())


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---- CUB ---------------------------------------------------------------------------------------------------------
def ids(text):
    """'001,002,044-048' -> [1, 2, 44, 45, 46, 47, 48]."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


# the original cub.ipynb's 27 image groups on the full CUB-200-2011 (class numbers); 197-200 were the incomplete chunk
ORIGINAL_CUB_GROUPS = [ids(g) for g in (
    "001,002,004,009,010", "011,013,014,021,026", "027,029,030,031,035", "036,038,040,041,042", "044-048",
    "049-053", "054,055,056,057,059", "061,062,064,067,068", "069-073", "074,076,077,079,080", "081,082,083,085,086",
    "088-092", "094,095,096,098,099", "100,102,103,104,106", "109,110,111,112,114", "116,118,120,121,122",
    "123,127,128,129,130", "131,132,133,134,136", "137,138,139,140,142", "143-147", "148,150,152,154,155",
    "156,158,159,161,162", "163,164,165,167,170", "171-175", "176,177,180,182,183", "184,185,186,188,189", "191-195")]
CUB_WITH_60 = {c for g in ORIGINAL_CUB_GROUPS for c in g} | {197, 198, 199, 200}     # 139 classes


def cub_name(i):
    return fixtures_raw.CUB_CLASSES[i - 1]


def cub_counts(classes):
    """The original's classes with exactly 60 images; every other class 59 or 61 (both must be dropped)."""
    return {i: 60 if i in CUB_WITH_60 else 59 + 2 * (i % 2) for i in classes}


def test_cub_groups_are_the_originals_on_the_real_class_names():
    counts = {cub_name(i): n for i, n in cub_counts(range(1, 201)).items()}           # the 200 real class folders
    groups, dropped, leftover = prepare_cub.chunk_classes(counts)
    assert len(CUB_WITH_60) == 139 and len(dropped) == 61
    assert groups == [[cub_name(i) for i in g] for g in ORIGINAL_CUB_GROUPS]
    assert groups[0] == ["001.Black_footed_Albatross", "002.Laysan_Albatross", "004.Groove_billed_Ani",
                         "009.Brewer_Blackbird", "010.Red_winged_Blackbird"]
    assert leftover == [cub_name(i) for i in (197, 198, 199, 200)]


def test_cub_groups_are_named_and_numbered_as_the_original_config():
    """Image group k is group<k>, its captions group<28+k>; config cub lists exactly those 54 tasks, each with its
    task id in the original's 56 (group28 and group56 cannot be rebuilt)."""
    image_groups, text_groups = prepare_cub.group_names(27)
    assert image_groups == [f"group{k}" for k in range(1, 28)]
    assert text_groups == [f"group{28 + k}" for k in range(1, 28)]
    cfg = load_dataset_config("cub", check_folders=False)
    assert cfg.groups == image_groups + text_groups and cfg.text_groups == text_groups
    assert {g: int(g.removeprefix("group")) for g in cfg.groups} == cfg.original_task_ids
    assert cfg.task_id("group29") == 28 and cfg.original_task_ids["group29"] == 29
    assert "group28" not in cfg.groups and "group56" not in cfg.groups and cfg.renumbered
    assert not load_dataset_config("oxford", check_folders=False).renumbered


# classes 001..028: the original's groups 1 and 2, 027 (the incomplete last chunk here), 003 and 005 with 59 and 61
# images, the 15 other classes without 60 images with one image each (few files)
CUB_SMALL = {i: n if i in CUB_WITH_60 or i in (3, 5) else 1 for i, n in cub_counts(range(1, 29)).items()}


@pytest.fixture(scope="module")
def cub_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("cub_raw")
    csv_path = fixtures_raw.write_cub(raw, CUB_SMALL)
    return raw, csv_path


@pytest.fixture(scope="module")
def cub_out(cub_raw, tmp_path_factory):
    raw, csv_path = cub_raw
    out = tmp_path_factory.mktemp("cub_out")
    prepare(prepare_cub, "--raw_dir", raw, "--captions_csv", csv_path, "--out_dir", out)
    return out


def test_cub_writes_the_original_groups_with_captions_as_group_28_plus_k(cub_out):
    for split in ("train", "test"):
        assert names(cub_out / "image" / split) == ["group1", "group2"]
        assert names(cub_out / "text" / split) == ["group29", "group30"]
        for k, modality, group in ((1, "image", "group1"), (2, "image", "group2"), (1, "text", "group29"),
                                   (2, "text", "group30")):
            assert names(cub_out / modality / split / group) == [cub_name(i) for i in ORIGINAL_CUB_GROUPS[k - 1]]
    assert not list(cub_out.rglob(cub_name(27)))                       # 60 images, but the incomplete chunk
    assert not list(cub_out.rglob(cub_name(3))) and not list(cub_out.rglob(cub_name(5)))      # 59 and 61 images


def test_cub_captions_use_the_same_48_12_split_as_their_images(cub_out):
    for k in (1, 2):
        for class_dir in (cub_out / "image" / "train" / f"group{k}").iterdir():
            train, test = (stems(cub_out / "image" / s / f"group{k}" / class_dir.name) for s in ("train", "test"))
            assert (len(train), len(test)) == (48, 12)
            assert not set(train) & set(test)
            for split, image_stems in (("train", train), ("test", test)):
                text_dir = cub_out / "text" / split / f"group{k + 28}" / class_dir.name
                assert stems(text_dir) == image_stems
                stem = image_stems[0]
                assert (text_dir / f"{stem}.txt").read_text().strip() == f"caption of {stem}"


def test_cub_is_deterministic_and_the_seed_changes_the_split(cub_raw, cub_out, tmp_path):
    raw, csv_path = cub_raw
    prepare(prepare_cub, "--raw_dir", raw / "CUB_200_2011", "--captions_csv", csv_path, "--out_dir", tmp_path / "a")
    assert files_under(tmp_path / "a") == files_under(cub_out)
    prepare(prepare_cub, "--raw_dir", raw, "--captions_csv", csv_path, "--out_dir", tmp_path / "b", "--seed", "7")
    assert files_under(tmp_path / "b") != files_under(cub_out)


def test_cub_writes_the_config_folders_under_the_data_root_and_warns_on_a_partial_dataset(cub_raw, tmp_path, caplog,
                                                                                          capsys):
    raw, csv_path = cub_raw
    with caplog.at_level(logging.WARNING):
        prepare(prepare_cub, "--raw_dir", raw, "--captions_csv", csv_path, "--data_root", tmp_path)
    assert any("declares 27 image and 27 text groups" in w for w in warnings(caplog))
    assert len(list((tmp_path / "cub" / "image" / "train" / "group2").rglob("*.jpg"))) == 5 * 48
    assert len(list((tmp_path / "cub" / "text" / "test" / "group30").rglob("*.txt"))) == 5 * 12
    # a second run into the same, now non-empty, folders needs --overwrite
    assert "--overwrite" in fails(prepare_cub, capsys, "--raw_dir", raw, "--captions_csv", csv_path,
                                  "--data_root", tmp_path)


def test_cub_image_without_caption_is_a_one_line_error(cub_raw, tmp_path, capsys):
    raw, csv_path = cub_raw
    df = pd.read_csv(csv_path)
    missing = df["image"].iloc[0]
    df.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    error = fails(prepare_cub, capsys, "--raw_dir", raw, "--captions_csv", tmp_path / "short.csv",
                  "--out_dir", tmp_path / "out")
    assert missing in error and "short.csv" in error


def test_cub_missing_raw_folder_is_a_one_line_error_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "prepare_cub.py"), "--raw_dir", tmp_path / "nowhere"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert_one_sentence(result.stderr, result.returncode, "nowhere")


def test_original_task_ids_are_validated(tmp_path):
    section = {"train_path": "x", "test_path": "y", "subfolder": True, "num_classes": 2, "num_groups": 2,
               "mean": [0.5] * 3, "std": [0.5] * 3, "DATASETS": ["None", "group1", "group3"]}
    for bad in ([1, 1], [1], [1, "three"], [0, 3]):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"x": {**section, "original_task_ids": bad}}))
        with pytest.raises(UserError, match="original_task_ids"):
            load_dataset_config("x", config_file=tmp_path / "c.yaml", check_folders=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"x": {**section, "original_task_ids": [1, 3]}}))
    assert load_dataset_config("x", config_file=tmp_path / "c.yaml", check_folders=False).original_task_ids == \
        {"group1": 1, "group3": 3}


def test_the_report_prints_the_original_task_id_of_each_cub_task(tmp_path):
    from utils.report import write_report       # imports torch: only this test pays for it
    path, _ = write_report("cub", tmp_path / "work", tmp_path / "data", evaluate=False)
    text = path.read_text()
    assert "| target | original id | baseline acc |" in text
    assert "| 27 group27 (image) | 27 |" in text and "| 28 group29 (text) | 29 |" in text
    assert "| 54 group55 (text) | 55 |" in text
    assert "The original's tasks 28 and any above 55 have no task here" in text
    numbers = pd.read_csv(path.with_suffix(".csv"))
    row = numbers[(numbers.item == "group29") & (numbers.metric == "original_task_id")]
    assert float(row.value.iloc[0]) == 29
    oxford, _ = write_report("oxford", tmp_path / "work", tmp_path / "data", evaluate=False)
    assert "original id" not in oxford.read_text() and "| 7 group7 (text) |" in oxford.read_text()


# ---- Oxford ------------------------------------------------------------------------------------------------------
# the original oxford.ipynb's six groups (class ids; folders class_000NN)
ORIGINAL_OXFORD_GROUPS = {1: [51, 72, 82, 60], 2: [77, 65, 58, 56], 3: [46, 74, 37, 80], 4: [73, 41, 83, 95],
                          5: [89, 81, 75, 76], 6: [94, 88, 78, 43]}


@pytest.fixture(scope="module")
def oxford_raw(tmp_path_factory):
    """{layout: (raw folder, CSV)}: the same images and CSV as class folders and as the original's flat folder."""
    raws = {}
    for layout in ("class_folders", "flat"):
        raw = tmp_path_factory.mktemp(f"oxford_{layout}")
        raws[layout] = raw, fixtures_raw.write_oxford(raw, layout)
    return raws


@pytest.fixture(scope="module")
def oxford_out(oxford_raw, tmp_path_factory):
    raw, _ = oxford_raw["class_folders"]
    out = tmp_path_factory.mktemp("oxford_out")
    prepare(prepare_oxford, "--raw_dir", raw, "--out_dir", out)  # CSV: raw/image_caption.csv
    return out


def test_oxford_writes_the_original_groups_with_its_seeded_split(oxford_raw, oxford_out):
    out = oxford_out
    df = pd.read_csv(oxford_raw["class_folders"][1], dtype=str)
    for split in ("train", "test"):
        assert names(out / "image" / split) == sorted(f"group{k}" for k in range(1, 7))
        assert names(out / "text" / split) == sorted(f"group{k}" for k in range(7, 13))
    for k, classes in ORIGINAL_OXFORD_GROUPS.items():
        assert names(out / "image" / "train" / f"group{k}") == sorted(f"class_{c:05d}" for c in classes)
        assert names(out / "text" / "test" / f"group{k + 6}") == sorted(f"class_{c:05d}" for c in classes)
        for c in classes:
            rows = df[df["label"] == f"class_{c:05d}"]["image"].tolist()
            train, test = train_test_split(rows, test_size=0.2, random_state=42)
            for split, expected in (("train", train), ("test", test)):
                image_dir = out / "image" / split / f"group{k}" / f"class_{c:05d}"
                assert names(image_dir) == sorted(Path(r).stem + ".jpg" for r in expected)
                text_dir = out / "text" / split / f"group{k + 6}" / f"class_{c:05d}"
                assert stems(text_dir) == stems(image_dir)
    assert not list(out.rglob("class_00001")) and not list(out.rglob("image_09999*"))


def test_oxford_flat_folder_labelled_by_the_csv_gives_the_same_dataset(oxford_raw, oxford_out, tmp_path, caplog):
    raw, csv_path = oxford_raw["flat"]
    with caplog.at_level(logging.WARNING):
        prepare(prepare_oxford, "--raw_dir", raw, "--captions_csv", csv_path, "--out_dir", tmp_path / "flat")
    assert files_under(tmp_path / "flat") == files_under(oxford_out)
    assert [w for w in warnings(caplog) if "image_09999.jpg" in w and "left out" in w]


def test_oxford_image_without_csv_row_is_named_in_a_warning_in_class_folders_too(oxford_raw, tmp_path, caplog):
    raw, _ = oxford_raw["class_folders"]
    with caplog.at_level(logging.WARNING):
        prepare(prepare_oxford, "--raw_dir", raw, "--layout", "class_folders", "--out_dir", tmp_path)
    assert [w for w in warnings(caplog) if "image_09999.jpg" in w and "class_00051" in w]


def test_oxford_csv_row_without_image_is_a_one_line_error(oxford_raw, tmp_path, capsys):
    for layout in ("flat", "class_folders"):
        raw, csv_path = oxford_raw[layout]
        df = pd.read_csv(csv_path, dtype=str)
        extra = pd.DataFrame([{"image": "image_77777", "label": "class_00082", "caption": "a flower"}])
        pd.concat([df, extra]).to_csv(tmp_path / "extra.csv", index=False)
        error = fails(prepare_oxford, capsys, "--raw_dir", raw, "--captions_csv", tmp_path / "extra.csv",
                      "--out_dir", tmp_path / layout)
        assert "image_77777.jpg" in error and "class_00082" in error and "extra.csv" in error
        assert not (tmp_path / layout).exists()


def test_oxford_mixed_or_unknown_layout_is_one_sentence_and_layout_chooses(oxford_raw, oxford_out, tmp_path, capsys):
    raw, csv_path = oxford_raw["flat"]
    mixed = shutil.copytree(raw, tmp_path / "mixed")
    shutil.copytree(oxford_raw["class_folders"][0] / "flower_data", mixed / "flower_data")
    error = fails(prepare_oxford, capsys, "--raw_dir", mixed, "--out_dir", tmp_path / "out")
    assert "both a flat folder of images" in error and "--layout flat" in error
    prepare(prepare_oxford, "--raw_dir", mixed, "--layout", "flat", "--out_dir", tmp_path / "flat")
    assert files_under(tmp_path / "flat") == files_under(oxford_out)
    (tmp_path / "empty").mkdir()
    error = fails(prepare_oxford, capsys, "--raw_dir", tmp_path / "empty", "--captions_csv", csv_path,
                  "--out_dir", tmp_path / "out")
    assert "neither a flat folder of images" in error and "class folders" in error


def test_oxford_csv_without_caption_column_is_a_one_line_error(oxford_raw, tmp_path, capsys):
    raw, csv_path = oxford_raw["class_folders"]
    pd.read_csv(csv_path).drop(columns="caption").to_csv(tmp_path / "bad.csv", index=False)
    error = fails(prepare_oxford, capsys, "--raw_dir", raw, "--captions_csv", tmp_path / "bad.csv",
                  "--out_dir", tmp_path / "out")
    assert "bad.csv" in error and "caption" in error
    assert not (tmp_path / "out").exists()


def test_oxford_missing_class_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "flower_data" / "train" / "51").mkdir(parents=True)
    assert "class_00072" in fails(prepare_oxford, capsys, "--raw_dir", tmp_path, "--out_dir", tmp_path / "out")


# ---- MSCOCO ------------------------------------------------------------------------------------------------------
# the original preprocess_0430.ipynb's NAME_TO_GROUP: 15 groups of 4 of the 80 COCO categories
ORIGINAL_COCO_GROUPS = {
    "Accessory": ["handbag", "umbrella", "backpack", "tie"], "Animal1": ["bird", "sheep", "cow", "horse"],
    "Animal2": ["elephant", "dog", "zebra", "giraffe"], "Appliance": ["sink", "oven", "refrigerator", "microwave"],
    "Electronic": ["cell phone", "tv", "remote", "laptop"], "Food1": ["banana", "carrot", "broccoli", "donut"],
    "Food2": ["orange", "cake", "apple", "pizza"], "Furniture": ["chair", "dining table", "potted plant", "couch"],
    "Indoor": ["book", "vase", "clock", "teddy bear"], "Kitchen": ["bottle", "cup", "bowl", "wine glass"],
    "Outdoor": ["traffic light", "bench", "stop sign", "fire hydrant"],
    "Sports1": ["kite", "skis", "sports ball", "surfboard"],
    "Sports2": ["skateboard", "tennis racket", "baseball glove", "baseball bat"],
    "Vehicle1": ["car", "motorcycle", "boat", "truck"], "Vehicle2": ["bicycle", "bus", "airplane", "train"]}
GROUP_OF = {name: group for group, category_names in ORIGINAL_COCO_GROUPS.items() for name in category_names}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    raw = tmp_path_factory.mktemp("coco_raw")
    expected = fixtures_raw.write_coco(raw)
    out = tmp_path_factory.mktemp("coco_out")
    prepare(prepare_mscoco, "--raw_dir", raw, "--out_dir", out)
    return raw, expected, out


def test_mscoco_groups_are_the_originals_labelled_by_first_annotation(coco):
    raw, expected, out = coco
    written = {p.name: (p.parent.parent.name, p.parent.name) for p in (out / "image").rglob("*.jpg")}
    assert written == {f: (GROUP_OF[c], c) for (_, f), c in expected.items() if c in GROUP_OF}
    assert {category for _, category in written.values()} == set(GROUP_OF)          # all 60 grouped categories
    assert len({c for c in expected.values() if c not in GROUP_OF}) == 20           # person and 19 more: skipped
    assert written["000000000050.jpg"] == ("Animal2", "dog")                        # annotated dog, then car
    assert "000000000049.jpg" not in written                                        # first annotation is a person
    assert (out / "image" / "test" / "Electronic" / "cell phone").is_dir()
    assert not any(p.is_symlink() for p in (out / "image").rglob("*"))


def original_rebalance(train_files, n_test, seed=42, shared=True):
    """The original's rule, written from its description: for each category in sorted order (<Group>/<category>)
    with n_test < ceil(0.2 * n_train), move ceil(0.2 * n_train) - n_test of its train files, sorted by name, drawn
    by Random(seed).sample: ONE generator for all categories (shared=False: a fresh one per category, the rule the
    original did not use). Returns {category: set of the files moved}."""
    rng = random.Random(seed)
    moved = {}
    for folder in sorted(f"{GROUP_OF[c]}/{c}" for c in GROUP_OF):           # the category folders, sorted
        category = folder.split("/")[1]
        files = sorted(train_files.get(category, []))
        deficit = math.ceil(0.2 * len(files)) - n_test.get(category, 0)
        if deficit > 0:
            moved[category] = set((rng if shared else random.Random(seed)).sample(files, deficit))
    return moved


def test_mscoco_rebalance_moves_the_files_the_original_drew(coco):
    raw, expected, out = coco
    train_files, n_test = {}, {}
    for (split, f), c in expected.items():
        if split == "train":
            train_files.setdefault(c, []).append(f)
        else:
            n_test[c] = n_test.get(c, 0) + 1
    moved = original_rebalance(train_files, n_test)
    assert sorted(moved) == ["bird", "cake", "car", "cell phone", "giraffe", "tv"]     # dog: 5 train, 1 test: none
    assert moved != original_rebalance(train_files, n_test, shared=False)               # the fixture tells them apart
    for category, group in GROUP_OF.items():
        train = set(names(out / "image" / "train" / group / category)) if category in train_files else set()
        test = set(names(out / "image" / "test" / group / category))
        assert train == set(train_files.get(category, [])) - moved.get(category, set()), category
        assert test - moved.get(category, set()) == {f for (s, f), c in expected.items() if s == "test" and
                                                     c == category}, category


def test_mscoco_is_deterministic_and_overwrite_replaces(coco, tmp_path):
    raw, _, out = coco
    prepare(prepare_mscoco, "--raw_dir", raw, "--out_dir", tmp_path)
    (tmp_path / "image" / "train" / "stale.txt").write_text("left from an earlier run")
    prepare(prepare_mscoco, "--raw_dir", raw, "--out_dir", tmp_path, "--overwrite")
    assert files_under(tmp_path) == files_under(out)


def test_mscoco_malformed_json_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "raw"
    for folder in ("train2017", "val2017", "annotations"):
        (bad / folder).mkdir(parents=True)
    (bad / "annotations" / "instances_train2017.json").write_text('{"images": [')
    assert "instances_train2017.json" in fails(prepare_mscoco, capsys, "--raw_dir", bad, "--out_dir", tmp_path / "o")


# ---- all -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tool", [prepare_cub, prepare_oxford, prepare_mscoco])
def test_help_works(tool, capsys):
    assert run_main(tool.main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert "--raw_dir" in out and "--overwrite" in out
