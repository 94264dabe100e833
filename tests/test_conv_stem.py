"""The convolutional image stem (`model: image_stem: conv`, config demo_conv): a pixels network is the original's
(no stem in its configuration or weights); under CPG the stem's convolutions are masked, pruned and picked like every
linear layer, so that one network learns image, text and image tasks in turn without changing what an earlier task
computes; the backbone search's swap and the k/v transfer carry the stem with the rest of a task's image reader;
bad stem settings stop with one sentence."""
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from models import cpg
from models.build import Network
from packnet_models_pickaback.inference import reader_keys, reader_state, swap_reader
from packnet_models_pickaback.kv_transfer import graft_reader
from tests.conftest import REPO, env_for
from tests.test_sequence import logits_and_accuracy
from utils.checkpoint import load_checkpoint
from utils.config import load_dataset_config
from utils.data import model_config
from utils.errors import UserError
from utils.layout import Layout
from utils.manifest import Manifest
from utils.pipeline import run_stage

ORDER = ["group1", "group5", "group2"]                                  # image, text, image
STEM = "adapters.image.stem.0"


@pytest.fixture(scope="module")
def conv_sequence(demo_root, tmp_path_factory):
    """demo_conv's baselines of the three tasks and a sequence run over them (pruned to 0.5 after each), one
    thread: the kept checkpoint of each step."""
    work = tmp_path_factory.mktemp("conv_sequence")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_stage("baseline", "demo_conv", env_for(demo_root, work, TASK_IDS="1 5 2", FINETUNE_EPOCHS="8"))
        run_stage("sequence", "demo_conv", env_for(demo_root, work, ORDER="1 5 2", EPOCHS="8"))
    finally:
        torch.set_num_threads(threads)
    layout = Layout(work, "demo_conv")
    return [Manifest(layout.sequence_step("default", step).manifest).output("kept") for step in (1, 2, 3)], work


def logits(checkpoint, group, demo_root):
    return logits_and_accuracy(checkpoint, group, demo_root, "demo_conv")[0]


def test_a_pixels_network_is_the_original_one(demo_root):
    """The demo's pixel network: no stem key in its model configuration (so its checkpoints are byte for byte what
    they were before the option) and no stem weight; demo_conv's has both, and its configuration rebuilds it."""
    pixels = model_config(load_dataset_config("demo", demo_root))
    assert not {"image_stem", "stem_channels"} & set(pixels)
    net = Network.new(pixels)
    assert not any(".stem." in key for key in net.model.state_dict())
    assert not {"image_stem", "stem_channels"} & set(net.model.config)
    conv = model_config(load_dataset_config("demo_conv", demo_root))
    assert (conv["image_stem"], conv["stem_channels"]) == ("conv", [16])
    net = Network.new(conv)
    assert net.model.config["stem_channels"] == [16] and STEM in cpg.prunable_layers(net.model)
    assert cpg.layer_modality(STEM) == "image"
    assert STEM in cpg.used_layers(net.model, "image") and STEM not in cpg.used_layers(net.model, "text")


def test_one_conv_network_learns_image_text_image_and_no_earlier_task_changes(conv_sequence, demo_root, one_thread):
    conv_sequence, work = conv_sequence
    for i, group in enumerate(ORDER):
        reference = logits(conv_sequence[i], group, demo_root)
        for later in conv_sequence[i + 1:]:
            assert torch.equal(logits(later, group, demo_root), reference), (group, later)
    first, last = (Network.load(p) for p in (conv_sequence[0], conv_sequence[2]))
    assert cpg.layer_sparsity(first.model, "image", 1)[STEM] == pytest.approx(0.5, abs=0.02)    # compacted
    stem = cpg.ownership(last.model.get_submodule(STEM))
    owners = set(stem.mask.unique().tolist())
    assert {1, 3} <= owners and 2 not in owners           # the text task never owns an image weight
    assert "3" in stem.piggymasks                         # the third task picks over the first one's filters
    assert last.num_parameters() > Network.new(model_config(load_dataset_config("demo", demo_root))).num_parameters()
    # the stem does not grow, and no image task is worse for it: each reaches its baseline at its own step, the last
    # one on a stem that the first task's compacting left it and the filters it picks
    rows = pd.read_csv(Layout(work, "demo_conv").sequence_csv)
    for step, group in ((1, "group1"), (3, "group2")):
        row = rows[(rows.step == step) & (rows.task == group)].iloc[0]
        assert row.accuracy >= row.baseline_acc > 0.5, row
    assert last.model.get_submodule(STEM).weight.shape == first.model.get_submodule(STEM).weight.shape


def test_the_swap_and_the_transfer_carry_the_stem_with_the_image_reader(conv_sequence, tmp_path):
    conv_sequence, _ = conv_sequence
    image = Network.load(conv_sequence[0])                               # group1 alone
    keys = reader_keys(image.model, "image")
    assert {f"{STEM}.parametrizations.weight.original", f"{STEM}.bias"} <= set(keys)
    assert not any(".piggymasks." in key for key in keys)
    reader = reader_state(image, "group1")
    assert torch.equal(reader[f"{STEM}.parametrizations.weight.original"], image.model.get_submodule(STEM).weight)

    text = Network.load(conv_sequence[1])                                # group1 then group5
    swapped = swap_reader(text, "group5", reader, "image")               # group5 reads images through group1's reader
    with swapped.active("group5"):
        assert torch.equal(swapped.model.get_submodule(STEM).weight, reader[f"{STEM}.parametrizations.weight.original"])

    # a text-only backbone (group5's baseline) takes group1's image reader, stem included, as the k/v transfer does
    backbone = Path(shutil.copy(conv_sequence[1], tmp_path / "backbone.pth.tar"))
    ckpt = load_checkpoint(backbone)
    copied = graft_reader(ckpt, backbone.name, conv_sequence[0], "group1")
    assert f"{STEM}.parametrizations.weight.original" in copied and f"{STEM}.bias" in copied
    assert torch.equal(ckpt["model_state_dict"][f"{STEM}.parametrizations.weight.original"],
                       reader[f"{STEM}.parametrizations.weight.original"])


@pytest.mark.parametrize("model, words", [
    ({"image_stem": "resnet"}, "has model image_stem: 'resnet'"),
    ({"stem_channels": [16]}, "has model stem_channels but no conv stem"),
    ({"image_stem": "conv", "stem_channels": [16, 0]}, "has model stem_channels: [16, 0]"),
    ({"image_stem": "conv", "stem_channels": 16}, "has model stem_channels: 16"),
])
def test_bad_stem_settings_are_one_sentence(demo_root, tmp_path, model, words):
    section = yaml.safe_load((REPO / "utils" / "dataset_config.yaml").read_text())["demo"]
    section["model"] = {**section["model"], **model}
    path = tmp_path / "dataset_config.yaml"
    path.write_text(yaml.safe_dump({"demo": section}))
    with pytest.raises(UserError) as error:
        load_dataset_config("demo", demo_root, config_file=path)
    assert words in str(error.value) and "\n" not in str(error.value)
