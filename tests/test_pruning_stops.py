"""Where the backbone stage (wo_backbone) stops pruning a task and what it keeps: the sparsity upper bound that
leaves room for the remaining tasks (TOTAL_NUM_TASKS), a training accuracy of 95 % or below, a task that owns no
weights, and the pruning stages of an earlier, longer schedule.

The stage tests run one demo task in-process at tiny settings (conftest's TINY: one epoch per step) in a work folder
of their own that holds only the baseline accuracy file the test writes: the backbone stage reads nothing else of
the baseline stage.
"""
import json
import re

import pytest

from models import cpg
from models.build import Network
from tests.conftest import env_for, unreachable_copy
from utils.checkpoint import read_json
from utils.config import load_dataset_config
from utils.data import model_config
from utils.layout import Layout
from utils.manifest import Manifest
from utils.pipeline import run_stage
from utils.trainer import upper_bound_reached

TRAIN_ACC = re.compile(r"In train\(\)-> Train Ep\. #\d+ loss: [\d.]+, accuracy: ([\d.]+),")


pytestmark = pytest.mark.usefixtures("one_thread")


def backbone_stage(demo_root, work, baselines, caplog, **settings):
    """Run wo_backbone in `work` with the baseline accuracies `baselines`; returns the log messages."""
    lay = Layout(work, "demo")
    lay.logs.mkdir(parents=True, exist_ok=True)
    lay.baseline_acc_file.write_text(json.dumps({g: "%.4f" % a for g, a in baselines.items()}))
    caplog.set_level("INFO")
    caplog.clear()
    run_stage("wo_backbone", "demo", env_for(demo_root, work, **settings))
    return [r.getMessage() for r in caplog.records]


def train_accuracies(messages):
    """The training accuracy (%) of every epoch, in order, from the original's per-epoch log lines."""
    return [float(m.group(1)) for m in map(TRAIN_ACC.search, messages) if m]


def network_with_tasks(demo_root, n):
    cfg = load_dataset_config("demo", demo_root)
    net = Network.new(model_config(cfg))
    for group in cfg.groups[:n]:
        net.start_task(group, cfg.modality(group), cfg.num_classes)
    return net


@pytest.mark.parametrize("total, tasks, stops_at, goes_on_at", [
    (5, 1, 0.8, 0.7),       # 4 tasks remain: this one keeps round(1/5, 1) = 0.2
    (5, 2, 0.8, 0.75),      # 3 remain: round(1/4, 1) = 0.2 (not 0.25)
    (3, 1, 0.7, 0.68),      # 2 remain: round(1/3, 1) = 0.3 (not 1/3)
    (2, 1, 0.5, 0.4),       # 1 remains: round(1/2, 1) = 0.5
])
def test_upper_bound_leaves_the_remaining_tasks_their_share_at_max_width_below_the_baseline(demo_root, total, tasks,
                                                                                             stops_at, goes_on_at):
    """Pruning stops at sparsity >= 1 - round(1 / (remaining + 1), 1), remaining = TOTAL_NUM_TASKS - the tasks in
    the network; only at max width with the unpruned accuracy below the baseline."""
    net = network_with_tasks(demo_root, tasks)
    assert len(net.history) == tasks
    below = dict(width=1.0, max_width=1.0, total_num_tasks=total, unpruned_acc=0.6, baseline=0.7)
    assert upper_bound_reached(net, stops_at, **below)
    assert not upper_bound_reached(net, goes_on_at, **below)
    assert not upper_bound_reached(net, 0.99, **{**below, "width": 0.5})             # below max width: no bound
    assert not upper_bound_reached(net, 0.99, **{**below, "unpruned_acc": 0.7})      # baseline reached: no bound


def test_the_stage_stops_pruning_at_the_upper_bound_and_keeps_that_step(demo_root, tmp_path, caplog):
    """TOTAL_NUM_TASKS=2 with one task in the network: it may keep round(1/2, 1) = 0.5 of its weights, so pruning
    stops at 0.5 and the 0.5 -> 0.9 step never runs. At max width (x1.0) with a baseline of 1.0 (which no model reaches
    on this data: conftest.unreachable_copy) the unpruned accuracy is below the baseline, so the bound applies."""
    demo_root = unreachable_copy(demo_root, tmp_path / "data")
    messages = backbone_stage(demo_root, tmp_path, {"group1": 1.0}, caplog, TASK_IDS="1",
                              PRUNING_SCHEDULE="0.5 0.9", TOTAL_NUM_TASKS="2", NETWORK_WIDTH_MULTIPLIER="1.0",
                              MAX_NETWORK_WIDTH_MULTIPLIER="1.0")
    lay = Layout(tmp_path, "demo")
    assert set(read_json(lay.backbone("group1").record)) == {"0.0", "0.5"}
    assert "stop pruning group1 at sparsity 0.5" in messages
    assert any(lay.backbone("group1").prune_stage(0.5).glob("checkpoint-*.pth.tar"))
    assert not lay.backbone("group1").prune_stage(0.9).exists()
    # the premise: group1 trains above 95 % at sparsity 0.5, so the accuracy rule would have gone on to 0.9
    assert train_accuracies(messages)[-1] > 95


def test_pruning_stops_after_the_step_whose_training_accuracy_is_95_percent_or_below(demo_root, tmp_path, caplog):
    """group3 learns little in one epoch: after the 0.0 -> 0.5 step its training accuracy is far below 95 %, so the
    stage records 0.5 and stops; 0.9 is never trained. The baseline 0.0 keeps the upper bound out of it (the
    unpruned accuracy is not below it)."""
    messages = backbone_stage(demo_root, tmp_path, {"group3": 0.0}, caplog, TASK_IDS="3",
                              PRUNING_SCHEDULE="0.5 0.9")
    lay = Layout(tmp_path, "demo")
    assert train_accuracies(messages)[-1] <= 95                               # the premise: the 0.5 step's epoch
    assert set(read_json(lay.backbone("group3").record)) == {"0.0", "0.5"}
    assert "stop pruning group3 at sparsity 0.5" in messages
    assert any(lay.backbone("group3").prune_stage(0.5).glob("checkpoint-*.pth.tar"))
    assert not lay.backbone("group3").prune_stage(0.9).exists()
    assert "Sparsity range: 0.5 -> 0.9" not in messages


def test_a_task_that_owns_no_weights_is_not_pruned(demo_root, tmp_path, caplog, monkeypatch):
    """A task the backbone stage trains from scratch owns every weight of its network, so this stage cannot meet the
    case for real (a target on a backbone that owns every weight does: test_cpg, exit 5). The narrowest stand-in:
    the ownership statistics (models.cpg.mask_statistics, where the trainer reads the task's share from) report a
    task share of 0; weights, masks and training are untouched."""
    real = cpg.mask_statistics
    monkeypatch.setattr(cpg, "mask_statistics", lambda *a, **k: {**real(*a, **k), "task_ratio": 0.0})
    messages = backbone_stage(demo_root, tmp_path, {"group1": 0.0}, caplog, TASK_IDS="1", PRUNING_SCHEDULE="0.5 0.9")
    lay = Layout(tmp_path, "demo")
    assert "group1 owns no weights: nothing to prune" in messages
    assert set(read_json(lay.backbone("group1").record)) == {"0.0"}
    assert not any(m.startswith("Sparsity range:") for m in messages)
    assert not lay.backbone("group1").prune_stage(0.5).exists()
    assert set(Manifest(lay.backbone("group1").manifest).outputs()) == {"0.0", "record"}


def test_a_shorter_schedule_removes_the_pruning_stages_of_the_longer_one(demo_root, tmp_path, caplog):
    """A backbone finished with "0.5 0.9", redone with FORCE=1 and "0.5": the 0.9 stage (folder and checkpoint) is
    gone and neither the record nor the manifest names it, so no later stage can read it."""
    lay = Layout(tmp_path, "demo")
    backbone_stage(demo_root, tmp_path, {"group1": 0.0}, caplog, TASK_IDS="1", PRUNING_SCHEDULE="0.5 0.9")
    assert set(read_json(lay.backbone("group1").record)) == {"0.0", "0.5", "0.9"}     # the premise: 0.9 was written
    assert any(lay.backbone("group1").prune_stage(0.9).glob("checkpoint-*.pth.tar"))
    backbone_stage(demo_root, tmp_path, {"group1": 0.0}, caplog, TASK_IDS="1", PRUNING_SCHEDULE="0.5", FORCE="1")
    assert not lay.backbone("group1").prune_stage(0.9).exists()
    assert set(read_json(lay.backbone("group1").record)) == {"0.0", "0.5"}
    outputs = Manifest(lay.backbone("group1").manifest).outputs()
    assert set(outputs) == {"0.0", "0.5", "record"} and all(p.is_file() for p in outputs.values())
    assert sorted(p.name for p in lay.backbone("group1").gradual_prune.iterdir()) == ["0.5", "record.txt"]
