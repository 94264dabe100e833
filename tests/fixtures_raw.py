"""Tiny raw downloads in the real formats of CUB-200-2011, Oxford-102 (Kaggle) and COCO 2017, with the real names.

Used by tests/test_prepare_datasets.py to run the preparers in tools/. Every image is the same few-byte 8x8 JPEG
(the preparers count and copy files; they do not decode them), so a fixture of thousands of files is written in
well under a second.
"""
import io
import json
from pathlib import Path

import pandas as pd
from PIL import Image

# CUB-200-2011's class folders (classes.txt of the download)
CUB_CLASSES = """
001.Black_footed_Albatross 002.Laysan_Albatross 003.Sooty_Albatross 004.Groove_billed_Ani 005.Crested_Auklet
006.Least_Auklet 007.Parakeet_Auklet 008.Rhinoceros_Auklet 009.Brewer_Blackbird 010.Red_winged_Blackbird
011.Rusty_Blackbird 012.Yellow_headed_Blackbird 013.Bobolink 014.Indigo_Bunting 015.Lazuli_Bunting
016.Painted_Bunting 017.Cardinal 018.Spotted_Catbird 019.Gray_Catbird 020.Yellow_breasted_Chat 021.Eastern_Towhee
022.Chuck_will_Widow 023.Brandt_Cormorant 024.Red_faced_Cormorant 025.Pelagic_Cormorant 026.Bronzed_Cowbird
027.Shiny_Cowbird 028.Brown_Creeper 029.American_Crow 030.Fish_Crow 031.Black_billed_Cuckoo 032.Mangrove_Cuckoo
033.Yellow_billed_Cuckoo 034.Gray_crowned_Rosy_Finch 035.Purple_Finch 036.Northern_Flicker 037.Acadian_Flycatcher
038.Great_Crested_Flycatcher 039.Least_Flycatcher 040.Olive_sided_Flycatcher 041.Scissor_tailed_Flycatcher
042.Vermilion_Flycatcher 043.Yellow_bellied_Flycatcher 044.Frigatebird 045.Northern_Fulmar 046.Gadwall
047.American_Goldfinch 048.European_Goldfinch 049.Boat_tailed_Grackle 050.Eared_Grebe 051.Horned_Grebe
052.Pied_billed_Grebe 053.Western_Grebe 054.Blue_Grosbeak 055.Evening_Grosbeak 056.Pine_Grosbeak
057.Rose_breasted_Grosbeak 058.Pigeon_Guillemot 059.California_Gull 060.Glaucous_winged_Gull 061.Heermann_Gull
062.Herring_Gull 063.Ivory_Gull 064.Ring_billed_Gull 065.Slaty_backed_Gull 066.Western_Gull 067.Anna_Hummingbird
068.Ruby_throated_Hummingbird 069.Rufous_Hummingbird 070.Green_Violetear 071.Long_tailed_Jaeger 072.Pomarine_Jaeger
073.Blue_Jay 074.Florida_Jay 075.Green_Jay 076.Dark_eyed_Junco 077.Tropical_Kingbird 078.Gray_Kingbird
079.Belted_Kingfisher 080.Green_Kingfisher 081.Pied_Kingfisher 082.Ringed_Kingfisher 083.White_breasted_Kingfisher
084.Red_legged_Kittiwake 085.Horned_Lark 086.Pacific_Loon 087.Mallard 088.Western_Meadowlark 089.Hooded_Merganser
090.Red_breasted_Merganser 091.Mockingbird 092.Nighthawk 093.Clark_Nutcracker 094.White_breasted_Nuthatch
095.Baltimore_Oriole 096.Hooded_Oriole 097.Orchard_Oriole 098.Scott_Oriole 099.Ovenbird 100.Brown_Pelican
101.White_Pelican 102.Western_Wood_Pewee 103.Sayornis 104.American_Pipit 105.Whip_poor_Will 106.Horned_Puffin
107.Common_Raven 108.White_necked_Raven 109.American_Redstart 110.Geococcyx 111.Loggerhead_Shrike
112.Great_Grey_Shrike 113.Baird_Sparrow 114.Black_throated_Sparrow 115.Brewer_Sparrow 116.Chipping_Sparrow
117.Clay_colored_Sparrow 118.House_Sparrow 119.Field_Sparrow 120.Fox_Sparrow 121.Grasshopper_Sparrow
122.Harris_Sparrow 123.Henslow_Sparrow 124.Le_Conte_Sparrow 125.Lincoln_Sparrow 126.Nelson_Sharp_tailed_Sparrow
127.Savannah_Sparrow 128.Seaside_Sparrow 129.Song_Sparrow 130.Tree_Sparrow 131.Vesper_Sparrow
132.White_crowned_Sparrow 133.White_throated_Sparrow 134.Cape_Glossy_Starling 135.Bank_Swallow 136.Barn_Swallow
137.Cliff_Swallow 138.Tree_Swallow 139.Scarlet_Tanager 140.Summer_Tanager 141.Artic_Tern 142.Black_Tern
143.Caspian_Tern 144.Common_Tern 145.Elegant_Tern 146.Forsters_Tern 147.Least_Tern 148.Green_tailed_Towhee
149.Brown_Thrasher 150.Sage_Thrasher 151.Black_capped_Vireo 152.Blue_headed_Vireo 153.Philadelphia_Vireo
154.Red_eyed_Vireo 155.Warbling_Vireo 156.White_eyed_Vireo 157.Yellow_throated_Vireo 158.Bay_breasted_Warbler
159.Black_and_white_Warbler 160.Black_throated_Blue_Warbler 161.Blue_winged_Warbler 162.Canada_Warbler
163.Cape_May_Warbler 164.Cerulean_Warbler 165.Chestnut_sided_Warbler 166.Golden_winged_Warbler 167.Hooded_Warbler
168.Kentucky_Warbler 169.Magnolia_Warbler 170.Mourning_Warbler 171.Myrtle_Warbler 172.Nashville_Warbler
173.Orange_crowned_Warbler 174.Palm_Warbler 175.Pine_Warbler 176.Prairie_Warbler 177.Prothonotary_Warbler
178.Swainson_Warbler 179.Tennessee_Warbler 180.Wilson_Warbler 181.Worm_eating_Warbler 182.Yellow_Warbler
183.Northern_Waterthrush 184.Louisiana_Waterthrush 185.Bohemian_Waxwing 186.Cedar_Waxwing
187.American_Three_toed_Woodpecker 188.Pileated_Woodpecker 189.Red_bellied_Woodpecker 190.Red_cockaded_Woodpecker
191.Red_headed_Woodpecker 192.Downy_Woodpecker 193.Bewick_Wren 194.Cactus_Wren 195.Carolina_Wren 196.House_Wren
197.Marsh_Wren 198.Rock_Wren 199.Winter_Wren 200.Common_Yellowthroat
""".split()
assert len(CUB_CLASSES) == 200 and all(c.startswith(f"{i:03d}.") for i, c in enumerate(CUB_CLASSES, start=1))

# the Oxford classes of the original's six groups, in group order (Kaggle folder names are the bare ids)
OXFORD_CLASSES = [51, 72, 82, 60, 77, 65, 58, 56, 46, 74, 37, 80, 73, 41, 83, 95, 89, 81, 75, 76, 94, 88, 78, 43]

# COCO 2017's 80 categories with their ids (instances_*2017.json)
COCO_CATEGORIES = [{"id": i, "name": n} for i, n in (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"),
    (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"),
    (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"),
    (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"))]
assert len(COCO_CATEGORIES) == 80

_JPEGS = []


def _jpeg(index):
    """One of 16 tiny distinct JPEGs, encoded once."""
    if not _JPEGS:
        for i in range(16):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (i * 37 % 256, i * 91 % 256, i * 13 % 256)).save(buf, format="JPEG")
            _JPEGS.append(buf.getvalue())
    return _JPEGS[index % 16]


def _write_image(path, index):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_jpeg(index))


def write_cub(root, images_per_class):
    """`root/CUB_200_2011/images/<NNN.Name>/<Name>_<k>_<n>.jpg` plus `root/image_caption.csv` (label = class folder).

    images_per_class: {class number (1..200): number of images}. Caption of an image = "caption of <stem>". Every
    other CSV row names the image by its relative path, the rest by the bare file name (the preparer matches by
    basename). Returns the CSV's path.
    """
    rows = []
    for i, n in images_per_class.items():
        name = CUB_CLASSES[i - 1]
        species = name.split(".", 1)[1]
        for k in range(n):
            file_name = f"{species}_{k + 1:04d}_{i * 1000 + k}.jpg"
            _write_image(Path(root) / "CUB_200_2011" / "images" / name / file_name, k)
            image = f"{name}/{file_name}" if k % 2 else file_name
            rows.append({"image": image, "label": name, "caption": f"caption of {Path(file_name).stem}"})
    csv_path = Path(root) / "image_caption.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path


def write_oxford(root, layout="class_folders", images_per_class=5):
    """An Oxford-102 download and its `root/image_caption.csv` (image,label,caption; labels class_000NN).

    layout "class_folders": `root/flower_data/{train,valid}/<id>/image_NNNNN.jpg`, the last image of each class in
    valid/ (the preparer pools split folders); "flat": every image in `root/images/` (the original's layout), the
    class only in the CSV. Half the CSV rows give the image name without `.jpg`. Class 1 is a distractor in no
    group. Either layout also holds image_09999.jpg (of class 51), which no CSV row names. Returns the CSV's path.
    """
    rows, number = [], 0
    for class_id in OXFORD_CLASSES + [1]:
        for k in range(images_per_class):
            number += 1
            file_name = f"image_{number:05d}.jpg"
            split = "valid" if k == images_per_class - 1 else "train"
            folder = Path(root) / ("images" if layout == "flat" else Path("flower_data") / split / str(class_id))
            _write_image(folder / file_name, number)
            image = file_name if number % 2 else Path(file_name).stem
            rows.append({"image": image, "label": f"class_{class_id:05d}", "caption": f"flower {number}"})
    unlabelled = Path(root) / ("images" if layout == "flat" else "flower_data/train/51")
    _write_image(unlabelled / "image_09999.jpg", 0)
    csv_path = Path(root) / "image_caption.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path


# train2017: the categories the rebalance moves files of (none in val2017: ceil(0.2 * n) move), and dog (1 in
# val2017: ceil(0.2 * 5) - 1 = 0 move); val2017: one image of every other category, grouped or not
COCO_TRAIN = {"car": 10, "cell phone": 6, "bird": 7, "tv": 8, "giraffe": 9, "cake": 4, "dog": 4}


def write_coco(root):
    """`root/{train2017,val2017}/*.jpg` and `root/annotations/instances_{train,val}2017.json`, real category ids.

    train: the COCO_TRAIN counts, plus one image whose first annotation is a person (skipped although it also shows
    a car), one image annotated dog then car (label dog, so dog has 5; its annotations come after the others in the
    file, and the car one first by id), one image without annotations (skipped). val: one image of each category
    not in COCO_TRAIN except dog, i.e. of 74 categories (person and 19 others in no group: skipped).
    Returns the expected label of every labelled image: {(split, file name): category}.
    """
    root = Path(root)
    expected = {}
    names = [c["name"] for c in COCO_CATEGORIES]
    specs = {"train": list(COCO_TRAIN.items()),
             "val": [(n, 1) for n in names if n not in COCO_TRAIN or n == "dog"]}
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
