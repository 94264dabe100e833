"""Network: one record per task and one active task. Evaluating an earlier task inside `with net.active(task)`
computes exactly what that task's own checkpoint computes, leaving the block restores the task that was active, and
a checkpoint round trip (state -> from_checkpoint -> state) gives the same dict."""
import pytest
import torch
import torch.nn.functional as F

from models import cpg
from models.build import Network, TaskRecord
from models.perceiver_io import ActiveTask
from utils.checkpoint import load_checkpoint, save_checkpoint

CONFIG = dict(num_freq_bands=2, max_freq=4.0, depth=1, num_latents=8, latent_dim=32, cross_heads=1,
              cross_dim_head=16, latent_heads=2, latent_dim_head=16, ff_mult=2, text_dim=16, max_text_length=6)
IMAGES = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(1))        # [b, c, h, w]
TEXTS = torch.randn(6, 6, 16, generator=torch.Generator().manual_seed(2))           # [b, n, text_dim]
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


def train(net, task, x, steps=3):
    """A few SGD steps of `task` under the CPG constraints, then its shared parameters become its own."""
    net.activate(task)
    net.set_trainable(task)
    optimizer = torch.optim.SGD([p for p in net.model.parameters() if p.requires_grad], lr=0.1)
    layers = list(cpg.prunable_layers(net.model).values())
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(net.model(x), LABELS).backward()
        cpg.constrain_gradients(layers, 0.0, prune_mode=False)
        optimizer.step()
    net.claim_shared(task)


def state(net):
    return net.state(epoch=1, dataset_config="demo", text_encoder="encoder")


def assert_same_state(a, b):
    assert list(a) == list(b)
    for key in a:
        if isinstance(a[key], dict) and a[key] and all(isinstance(v, torch.Tensor) for v in a[key].values()):
            assert list(a[key]) == list(b[key]), key
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture
def two_tasks(tmp_path):
    """group1 (image) trained and pruned, saved as the backbone; then group2 (text, grown to x1.5) started on it
    and trained. Returns (net, backbone path)."""
    torch.manual_seed(0)
    net = Network.new(CONFIG)
    net.start_task("group1", "image", 3)
    train(net, "group1", IMAGES)
    cpg.prune_to(net.model, "image", 1, 0.5)
    backbone = tmp_path / "backbone.pth.tar"
    save_checkpoint(state(net), backbone)
    net.start_task("group2", "text", 3, width_multiplier=1.5)
    train(net, "group2", TEXTS)
    return net, backbone


@torch.no_grad()
def test_earlier_task_in_a_block_is_its_checkpoint_and_the_active_task_comes_back(two_tasks):
    net, backbone = two_tasks
    net.model.eval()
    expected = Network.from_checkpoint(load_checkpoint(backbone))
    expected.activate("group1")
    expected.model.eval()
    before = net.model(TEXTS)                                     # group2, the active task
    with net.active("group1") as task_id:
        assert task_id == 1 and net.model.active == ActiveTask("group1", 1, "image")
        assert torch.equal(net.model(IMAGES), expected.model(IMAGES))
    assert net.model.active == ActiveTask("group2", 2, "text")
    assert torch.equal(net.model(TEXTS), before)
    with pytest.raises(RuntimeError), net.active("group1"):      # restored also when the block fails
        raise RuntimeError
    assert net.model.active == ActiveTask("group2", 2, "text")
    # one active task: every module that depends on it holds the model's, none a copy
    holders = [net.model.kv, *net.model.feedforwards(), *map(cpg.ownership, cpg.prunable_layers(net.model).values())]
    assert all(m.active is net.model.active for m in holders)


def test_one_record_per_task_and_a_checkpoint_round_trip_gives_the_same_dict(two_tasks):
    net, _ = two_tasks
    assert net.tasks == [
        TaskRecord("group1", "image", 3, {"network_width_multiplier": 1.0, "modality": "image"}),
        TaskRecord("group2", "text", 3, {"network_width_multiplier": 1.5, "modality": "text"})]
    assert net.growth == [{"task_id": 2, "hidden": CONFIG["latent_dim"] * CONFIG["ff_mult"] // 2}]
    saved = state(net)
    assert list(saved) == ["model_state_dict", "masks", "dataset_history", "dataset2num_classes",
                           "shared_layer_info", "model_config", "growth", "modalities", "shared_owners", "epoch",
                           "dataset_config", "text_encoder"]
    assert saved["dataset_history"] == net.history == ["group1", "group2"]
    assert saved["modalities"] == {"group1": "image", "group2": "text"}
    assert_same_state(saved, state(Network.from_checkpoint(saved)))
