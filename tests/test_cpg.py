"""CPG: gradual pruning reaches every layer's target, pruned weights stay zero, target training (with and without
growth, same- and cross-modal) leaves the backbone task's logits bit-identical, exit codes, ratio choice."""
import json

import pytest
import torch

from CPG_MM_main_normal import main as cpg_main
from models import cpg
from models.build import Network
from tests.conftest import run_main, run_stage_script, unreachable_copy
from utils.pipeline.compacting import choose_ratio
from utils.checkpoint import load_checkpoint, read_json
from utils.layout import Layout
from utils.manifest import task_checkpoint
from utils.config import load_dataset_config
from utils.data import task_loaders
from utils.trainer import GradualPruner, Trainer, make_optimizers


def checkpoint_in(folder):
    return task_checkpoint(folder, "the test wrote none")


def run_cpg(demo_root, *args):
    return run_main(cpg_main, ["--dataset_config", "demo", "--data_root", str(demo_root), "--batch_size", "8",
                               *map(str, args)])


def logits(demo_root, task, tmp_path, *extra, **where):
    out = tmp_path / f"logits_{task}_{len(list(tmp_path.glob('logits_*')))}.pt"
    flag, value = next(iter(where.items()))
    assert run_cpg(demo_root, "--mode", "inference", "--dataset", task, f"--{flag}", value, "--logits_out", out,
                   *extra) == 0
    return torch.load(out)


@pytest.fixture(scope="module")
def demo_root(demo_root, tmp_path_factory):
    """The demo data, where no image task can reach an accuracy of 1.0 (conftest.unreachable_copy)."""
    return unreachable_copy(demo_root, tmp_path_factory.mktemp("unreachable") / "data")


@pytest.fixture(scope="module")
def backbone(demo_root, tmp_path_factory):
    """group1 trained from scratch and pruned to 0.5: the backbone checkpoint and the baseline file.

    The pruning step is made to end at the sparsity upper bound, so that its exit code is known whatever the
    training accuracy: at max width (x1.0) with the unpruned accuracy below a baseline of 1.0 (which no model reaches
    on this data) and --total_num_tasks 2, one task remains and the task may keep round(1/2, 1) = 0.5: stop at 0.5
    (6). Widths are given explicitly: the flags' defaults are not what these tests are about."""
    tmp = tmp_path_factory.mktemp("backbone")
    base = tmp / "baseline.txt"
    base.write_text(json.dumps({g: "0.5000" for g in [f"group{i}" for i in range(1, 9)]}))
    unreachable = tmp / "unreachable.txt"
    unreachable.write_text(json.dumps({"group1": "1.0000"}))
    r = tmp / "group1"
    common = ["--dataset", "group1", "--pruning_ratio_to_acc_record_file", r / "gradual_prune" / "record.txt",
              "--log_path", r / "train.log", "--max_allowed_network_width_multiplier", 1.0]
    # at max width (x1.0) finetuning is done whatever the accuracy: 0
    assert run_cpg(demo_root, "--mode", "finetune", "--epochs", 4, "--save_folder", r / "scratch", "--jsonfile", base,
                   *common) == 0
    assert run_cpg(demo_root, "--mode", "prune", "--epochs", 2, "--lr", 1e-3, "--initial_sparsity", 0.0,
                   "--target_sparsity", 0.5, "--pruning_interval", 1, "--load_folder", r / "scratch",
                   "--save_folder", r / "gradual_prune", "--jsonfile", unreachable, "--total_num_tasks", 2,
                   *common) == 6
    assert set(read_json(r / "gradual_prune" / "record.txt")) == {"0.0", "0.5"}     # the stopping step is kept
    return dict(ckpt=checkpoint_in(r / "gradual_prune" / "0.5"), baseline=base, root=tmp)


@pytest.mark.parametrize("target", ["group2", "group5"])   # same modality, cross-modal
def test_target_training_leaves_backbone_logits_bit_identical(demo_root, backbone, tmp_path, target):
    before = logits(demo_root, "group1", tmp_path, load_checkpoint=backbone["ckpt"])
    out = tmp_path / "target"
    rc = run_cpg(demo_root, "--mode", "finetune", "--dataset", target, "--epochs", 2, "--load_checkpoint",
                 backbone["ckpt"], "--save_folder", out, "--jsonfile", backbone["baseline"],
                 "--max_allowed_network_width_multiplier", 1.0, "--pruning_ratio_to_acc_record_file", out / "rec.txt")
    assert rc == 0                      # at max width (x1.0) the step is done whatever its accuracy
    after = logits(demo_root, "group1", tmp_path, load_folder=out)
    assert torch.equal(before, after)
    ckpt = load_checkpoint(checkpoint_in(out))
    assert ckpt["dataset_history"] == ["group1", target]
    assert set(read_json(out / "rec.txt")) == {"0.0"}


def test_amp_fast_recipe_target_training_leaves_backbone_logits_bit_identical(demo_root, backbone, tmp_path):
    """With --amp (bf16 autocast) in training and evaluation and the fast recipe (Adam), the cross-modal target
    changes nothing the backbone task computes: its bf16 logits are the same bits before and after."""
    before = logits(demo_root, "group1", tmp_path, "--amp", load_checkpoint=backbone["ckpt"])
    assert not torch.equal(before, logits(demo_root, "group1", tmp_path, load_checkpoint=backbone["ckpt"]))
    out = tmp_path / "target"
    rc = run_cpg(demo_root, "--mode", "finetune", "--dataset", "group5", "--epochs", 2, "--amp", "--recipe", "fast",
                 "--load_checkpoint",
                 backbone["ckpt"], "--save_folder", out, "--jsonfile", backbone["baseline"],
                 "--max_allowed_network_width_multiplier", 1.0)
    assert rc == 0                      # at max width (x1.0) the step is done whatever its accuracy
    assert torch.equal(before, logits(demo_root, "group1", tmp_path, "--amp", load_folder=out))


def test_forced_growth_adds_parameters_and_keeps_backbone_logits(demo_root, backbone, tmp_path):
    before = logits(demo_root, "group1", tmp_path, load_checkpoint=backbone["ckpt"])
    unreachable = tmp_path / "baseline.txt"
    unreachable.write_text(json.dumps({"group1": "0.5000", "group2": "1.0000"}))
    sizes = []
    for width, expected_rc in ((1.0, 2), (1.5, 2), (2.0, 0)):
        out = tmp_path / f"w{width}"
        rc = run_cpg(demo_root, "--mode", "finetune", "--dataset", "group2", "--epochs", 1, "--load_checkpoint",
                 backbone["ckpt"], "--save_folder", out, "--jsonfile", unreachable, "--network_width_multiplier",
                 width, "--max_allowed_network_width_multiplier", 2.0)
        assert rc == expected_rc
        net = Network.from_checkpoint(load_checkpoint(checkpoint_in(out)))
        sizes.append(net.num_parameters())
        assert net.model.width_multiplier == width
        assert torch.equal(before, logits(demo_root, "group1", tmp_path, load_folder=out))
    assert sizes[0] < sizes[1] < sizes[2]


def test_a_target_on_a_backbone_that_owns_every_weight_owns_none_and_exits_5(demo_root, backbone, tmp_path):
    """The unpruned backbone (group1 owns all its weights) at max width (x1.0) leaves the target nothing of its own:
    nothing to prune (5). On the pruned backbone the same step is done (0: the tests above)."""
    unpruned = checkpoint_in(backbone["root"] / "group1" / "scratch")
    out = tmp_path / "target"
    assert run_cpg(demo_root, "--mode", "finetune", "--dataset", "group2", "--epochs", 1, "--load_checkpoint",
                   unpruned, "--save_folder", out, "--jsonfile", backbone["baseline"],
                   "--max_allowed_network_width_multiplier", 1.0) == 5
    assert "task2 ratio: 0.000" in (out / "train.log").read_text()


def test_every_prunable_layer_reaches_target_sparsity_and_pruned_weights_stay_zero(demo_root, backbone):
    net = Network.from_checkpoint(load_checkpoint(backbone["ckpt"]))
    sparsity = cpg.layer_sparsity(net.model, "image", 1)
    assert len(sparsity) > 5 and all(abs(s - 0.5) <= 0.01 for s in sparsity.values()), sparsity
    # unused: the text k/v projection is neither pruned nor counted
    assert not any("projections.text" in name for name in sparsity)
    text_kv = net.model.kv.projections["text"]
    assert int(cpg.ownership(text_kv).mask.sum()) == 0 and cpg.raw_weight(text_kv).abs().sum() > 0

    # continue pruning 0.5 -> 0.8 and check, before every step, that every freed weight is exactly zero
    cfg = load_dataset_config("demo", demo_root)
    train, test, _ = task_loaders(cfg, "group1", 8, 100)
    net.activate("group1")
    net.set_trainable("group1")
    trainer = Trainer(net, "group1", "cpu", train, test)
    optimizer, _ = make_optimizers(net, "group1", 1e-2, 0.0)
    pruner = GradualPruner(net, "group1", 0.5, 0.8, 0, 2 * len(train), frequency=3)
    layers = cpg.used_layers(net.model, "image").values()

    def check(*_):
        for layer in layers:
            assert cpg.raw_weight(layer)[cpg.ownership(layer).mask == 0].abs().sum() == 0
    handle = net.model.register_forward_pre_hook(check)
    for epoch in (1, 2):
        trainer.train_epoch(epoch, optimizer, None, 4e-5, pruner)
    handle.remove()
    check()
    assert all(abs(s - 0.8) <= 0.01 for s in cpg.layer_sparsity(net.model, "image", 1).values())


def test_exit_code_3_without_baseline_file_and_255_without_record(demo_root, tmp_path):
    assert run_cpg(demo_root, "--mode", "finetune", "--dataset", "group1", "--epochs", 1, "--save_folder", tmp_path,
               "--jsonfile", tmp_path / "missing.txt") == 3
    base = tmp_path / "b.txt"
    base.write_text('{"group1": "0.5"}')
    assert run_cpg(demo_root, "--mode", "prune", "--dataset", "group1", "--save_folder", tmp_path, "--jsonfile", base,
               "--pruning_ratio_to_acc_record_file", tmp_path / "none.txt", "--load_folder", tmp_path) == 255


RECORD = {"0.0": 0.80, "0.1": 0.80, "0.5": 0.79, "0.9": 0.70, "0.95": 0.60}
# The ratio rule's cases at ALLOW_ACC_LOSS 0.001: (record, baseline accuracy, backbone at its maximum width, the
# ratio chosen; None: scratch). test_stages runs the chooser stage on those of a tiny backbone's two ratios.
RATIO_CASES = [
    (RECORD, 0.795, False, "0.1"),
    (RECORD, 0.789, False, "0.5"),
    (RECORD, 0.90, False, None),
    # below baseline at max width: the unpruned accuracy is the criterion (the original chose 0.95 outright)
    (RECORD, 0.90, True, "0.1"),
    ({"0.0": 0.80, "0.5": 0.7995}, 0.80, False, "0.5"),       # within ALLOW_ACC_LOSS of the baseline
    ({"0.0": 0.80, "0.5": 0.79}, 0.80, True, None),            # beyond it: scratch (the unpruned 0.0)
    ({"0.0": 0.80, "0.5": 0.7995}, 0.90, True, "0.5"),        # at max width: within 0.001 of the unpruned
    ({"0.0": 0.80, "0.5": 0.7995}, 0.90, False, None),        # below it: the baseline is the criterion
]


@pytest.mark.parametrize("record, baseline, at_max_width, chosen", RATIO_CASES)
def test_ratio_choice_rule(record, baseline, at_max_width, chosen):
    assert choose_ratio(record, baseline, 0.001, at_max_width=at_max_width) == chosen


def test_stage_scripts_backbone_record_and_choice(demo_root, tmp_path, monkeypatch, capsys, root_logging, one_thread):
    """wo_backbone.sh (its Python side, in this process; the scripts' bash side: test_stages) -> record.txt with the
    11 keys of the script's default schedule and every stage checkpoint at its sparsity; then the chooser's script
    places the chosen checkpoint in gradual_prune/."""
    work = tmp_path / "work"
    lay = Layout(work, "demo")
    lay.logs.mkdir(parents=True)
    lay.baseline_acc_file.write_text('{"group1": "0.6000"}')
    env = {"MMPAB_DATA_ROOT": str(demo_root), "MMPAB_WORK_DIR": str(work), "TASK_IDS": "1", "EPOCHS": "6",
           "NR_EPOCH_FOR_EACH_PRUNE": "1", "PRUNING_INTERVAL": "1", "BATCH_SIZE": "8"}
    monkeypatch.chdir(tmp_path)
    assert run_stage_script(monkeypatch, ["wo_backbone", "demo"], env) == 0, capsys.readouterr()
    record = read_json(lay.backbone("group1").record)
    keys = ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "0.95"]
    assert list(record) == keys
    for key in keys[1:]:
        net = Network.from_checkpoint(load_checkpoint(checkpoint_in(lay.backbone("group1").prune_stage(key))))
        assert all(abs(s - float(key)) <= 0.01 for s in cpg.layer_sparsity(net.model, "image", 1).values())
    assert "In validate()-> Val Ep. #1 loss:" in lay.backbone("group1").log.read_text()
    assert run_stage_script(monkeypatch, ["select_pruning_ratio_of_backbone", "demo"], env) == 0, capsys.readouterr()
    assert "We choose pruning ratio" in lay.backbone("group1").log.read_text()
    chosen = task_checkpoint(lay.backbone("group1").gradual_prune, "-", manifest=lay.choice_manifest("group1"))
    assert chosen.parent == lay.backbone("group1").gradual_prune.resolve()


def test_target_script_widens_on_exit_2_up_to_max_width(demo_root, backbone, tmp_path, monkeypatch, capsys,
                                                        root_logging):
    """w_backbone_MM.sh (its Python side, in this process) acts on exit code 2: 1.0 -> 1.5 -> 2.0, and the final
    checkpoint really is wider."""
    work = tmp_path / "work"
    lay = Layout(work, "demo")
    gp = lay.backbone("group1").gradual_prune
    gp.mkdir(parents=True)
    (gp / backbone["ckpt"].name).write_bytes(backbone["ckpt"].read_bytes())
    lay.result_csv.write_text("target_id,task_id\n2,1\n")
    lay.logs.mkdir()
    lay.baseline_acc_file.write_text('{"group1": "0.5", "group2": "1.0"}')
    assert run_stage_script(monkeypatch, ["w_backbone_MM", "demo"], {"MMPAB_DATA_ROOT": demo_root,
                                                                      "MMPAB_WORK_DIR": work, "EPOCHS": "1",
                                                                      "BATCH_SIZE": "8"}) == 0
    out = capsys.readouterr().out
    assert "expanding the network to width x1.5" in out and "expanding the network to width x2.0" in out
    net = Network.from_checkpoint(load_checkpoint(checkpoint_in(lay.target("group1", "group2").scratch)))
    assert net.model.width_multiplier == 2.0 and net.history == ["group1", "group2"]
    summary = lay.target_acc_csv.read_text().splitlines()
    assert summary[0] == "target,backbone,width,target_acc,baseline_acc" and summary[1].startswith("group2,group1,2.0,")
