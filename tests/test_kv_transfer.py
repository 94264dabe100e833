"""The k/v transfer (transfer_kv_perceiver_io.py) copies the target's reader of its modality into the backbone for
real, and leaves everything the backbone's own task computes with untouched.

Fake "CPG backbones" are tiny networks with a pruned k/v projection, saved where the select stage puts them.
"""
import os
from pathlib import Path

import pytest
import torch

import transfer_kv_perceiver_io as transfer_kv
from models import cpg
from models.build import Network
from packnet_models_pickaback import kv_layer_name, reader_keys
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.config import load_dataset_config
from utils.data import model_config
from utils.layout import Layout

CONFIG = model_config(load_dataset_config("demo", check_folders=False))     # the network the demo config describes
MODALITY = {f"group{i}": "image" if i <= 4 else "text" for i in range(1, 9)}      # the demo config's tasks


def folder(root, stage, group):
    layout = Layout(Path("."), "demo", checkpoint_root=Path(root))
    return layout.backbone(group).gradual_prune if stage == "backbone" else layout.baseline(group).root


def make_model(root, group, stage="backbone", epoch=20, sparsity=0.5):
    """A single-task network of `group` whose layers are pruned to `sparsity` (a chosen CPG backbone)."""
    torch.manual_seed(int(group.removeprefix("group")))
    net = Network.new(CONFIG)
    net.start_task(group, MODALITY[group], 3)
    cpg.prune_to(net.model, MODALITY[group], 1, sparsity)
    net.claim_shared(group)
    path = folder(root, stage, group) / f"checkpoint-{epoch}.pth.tar"
    save_checkpoint(net.state(epoch=epoch, dataset_config="demo", text_encoder="none"), path)
    return path


def logits(ckpt, task):
    """Logits of `task` from a checkpoint on fixed inputs of its modality."""
    net = Network.from_checkpoint(ckpt)
    net.activate(task)
    net.model.eval()
    g = torch.Generator().manual_seed(0)
    if net.modalities[task] == "image":
        return net.model(torch.randn(3, 3, 8, 8, generator=g))
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3, [True] * 5 + [False]])
    return net.model(torch.randn(3, 6, CONFIG["text_dim"], generator=g), mask=mask)


@pytest.fixture(autouse=True)
def own_work_dir(tmp_path, monkeypatch):
    """The entry point's stage log (logs_perceiver_io/transfer_kv_demo.log) in the test's folder, not the checkout."""
    monkeypatch.setenv("MMPAB_WORK_DIR", str(tmp_path))


def run_transfer(root, rows, capsys=None):
    csv = Path(root) / "pickaback_demo_result.csv"
    csv.write_text("target_id,task_id\n" + "".join(f"{t},{k}\n" for t, k in rows))
    return transfer_kv.main(["--dataset_config", "demo", "--csv_path", str(csv), "--checkpoint_root", str(root),
                             "--log_path", str(Path(root) / "transfer.log")])


@pytest.mark.parametrize("target, backbone", [(5, 1), (2, 6)])            # text on image, image on text
def test_cross_modal_transfer_copies_the_targets_reader_and_keeps_the_backbone(tmp_path, target, backbone):
    t_group, k_group = f"group{target}", f"group{backbone}"
    k_path, t_path = make_model(tmp_path, k_group), make_model(tmp_path, t_group)
    (out,) = run_transfer(tmp_path, [(target, backbone)])
    assert out == k_path.parent / f"checkpoint-20_kv_transfer_{target}.pth.tar"
    k_ckpt, t_ckpt, new = load_checkpoint(k_path), load_checkpoint(t_path), load_checkpoint(out)

    modality, layer = MODALITY[t_group], kv_layer_name(MODALITY[t_group])
    copied = reader_keys(Network.from_checkpoint(k_ckpt).model, modality)
    assert new["kv_transfer"] == {"target": t_group, "target_id": target, "backbone": k_group,
                                  "source_checkpoint": os.path.relpath(t_path, out.parent),
                                  "copied": copied}
    for key in copied:                                     # the target's tensors, as the target computes with them
        expected = t_ckpt["model_state_dict"][key]
        if key.startswith(layer):
            expected = expected * (t_ckpt["masks"][layer] > 0)
            assert (t_ckpt["masks"][layer] == 0).any()                       # the target's k/v really is pruned
        assert torch.equal(new["model_state_dict"][key], expected)
        assert not torch.equal(new["model_state_dict"][key], k_ckpt["model_state_dict"][key])
    for key, tensor in k_ckpt["model_state_dict"].items():
        if key not in copied:
            assert torch.equal(new["model_state_dict"][key], tensor), key
    assert all(torch.equal(new["masks"][name], mask) for name, mask in k_ckpt["masks"].items())
    assert (new["masks"][layer] == 0).all()                                  # free: the target trainer takes it
    assert {k: v for k, v in new.items() if k not in ("model_state_dict", "masks", "kv_transfer")} == \
        {k: v for k, v in k_ckpt.items() if k not in ("model_state_dict", "masks")}
    assert torch.equal(logits(new, k_group), logits(k_ckpt, k_group))

    net = Network.from_checkpoint(new)                     # what the target trainer does first: start the task
    net.start_task(t_group, modality, 3)
    kv = net.model.get_submodule(layer)
    assert (cpg.ownership(kv).mask == net.task_id(t_group)).all()
    assert torch.equal(kv.weight, new["model_state_dict"][f"{layer}.parametrizations.weight.original"])


def test_same_modality_transfer_copies_nothing_and_keeps_the_backbone(tmp_path):
    k_path = make_model(tmp_path, "group1")
    make_model(tmp_path, "group2")
    (out,) = run_transfer(tmp_path, [(2, 1)])
    k_ckpt, new = load_checkpoint(k_path), load_checkpoint(out)
    assert out.name == "checkpoint-20_kv_transfer_2.pth.tar"
    assert new["kv_transfer"] == {"target": "group2", "target_id": 2, "backbone": "group1",
                                  "source_checkpoint": None, "copied": []}
    assert new["model_state_dict"].keys() == k_ckpt["model_state_dict"].keys()
    assert all(torch.equal(new["model_state_dict"][k], v) for k, v in k_ckpt["model_state_dict"].items())
    assert torch.equal(logits(new, "group1"), logits(k_ckpt, "group1"))
    assert "share the modality: nothing copied" in (tmp_path / "transfer.log").read_text()


def test_a_target_without_a_cpg_backbone_gives_its_baseline_reader(tmp_path):
    make_model(tmp_path, "group1", epoch=100)                                # the chooser kept scratch
    baseline = make_model(tmp_path, "group7", stage="baseline", epoch=15, sparsity=0.0)
    (out,) = run_transfer(tmp_path, [(7, 1)])
    assert out.name == "checkpoint-100_kv_transfer_7.pth.tar"
    new = load_checkpoint(out)
    assert (out.parent / new["kv_transfer"]["source_checkpoint"]).resolve() == baseline.resolve()
    key = f"{kv_layer_name('text')}.parametrizations.weight.original"
    assert torch.equal(new["model_state_dict"][key], load_checkpoint(baseline)["model_state_dict"][key])
    assert f"from its baseline {baseline}" in (tmp_path / "transfer.log").read_text()


def test_a_missing_backbone_names_the_stages_to_run(tmp_path, capsys):
    make_model(tmp_path, "group5")
    with pytest.raises(SystemExit) as exit_info:
        run_transfer(tmp_path, [(5, 3)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "run_pickaback/wo_backbone.sh demo" in err and "select_pruning_ratio_of_backbone.sh demo" in err
    assert not list(tmp_path.rglob("*_kv_transfer_*"))
