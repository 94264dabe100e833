"""Speed features keep the method's properties: masks computed once still equal the ownership rule after every
change of task or ownership, the fused piggymask weight has the straight-through gradient, bf16 autocast keeps no
forgetting bit for bit and stays close to float32, and the fast recipe's schedule is what it says, its peak rate the
range test's (seeded, the network put back, recorded in stage.json, reused by a resumed step)."""
import copy
import math

import torch

from models import cpg
from models.build import Network
from utils.runtime import autocast
from utils.pipeline import run_stage
from utils.layout import Layout
from utils.manifest import Manifest
from packnet_models import baseline_network
from utils.config import load_dataset_config
from utils.data import load_task
from utils.trainer import (FAST_WARMUP, RANGE_TEST_DIVISOR, RANGE_TEST_LRS, begin, fast_learning_rate, lr_schedule,
                           range_test, rule)
from tests.conftest import env_for

CONFIG = dict(num_freq_bands=2, max_freq=4.0, depth=1, num_latents=16, latent_dim=64, cross_heads=2,
              cross_dim_head=16, latent_heads=2, latent_dim_head=32, ff_mult=2, text_dim=16, max_text_length=8)


PEAK = 5e-4                     # a peak rate as the range test might choose


def reference_weight(layer):
    """original * keep as the ownership rule defines it, computed from scratch (no cache)."""
    om, w = cpg.ownership(layer), cpg.raw_weight(layer)
    own = om.mask == om.task_id
    earlier = (om.mask > 0) & (om.mask < om.task_id)
    piggymask = om.piggymasks[str(om.task_id)] if str(om.task_id) in om.piggymasks else None
    keep = (own | earlier) if piggymask is None else own | (earlier & (piggymask > cpg.PIGGYMASK_THRESHOLD))
    return w * keep


def assert_weights_follow_masks(net):
    for name, layer in cpg.prunable_layers(net.model).items():
        assert torch.equal(layer.weight, reference_weight(layer)), name


def two_task_network():
    torch.manual_seed(0)
    net = Network.new(CONFIG)
    net.start_task("a", "image", 3)
    cpg.prune_to(net.model, "image", 1, 0.5)
    net.claim_shared("a")
    net.start_task("b", "image", 3)
    for layer in cpg.prunable_layers(net.model).values():       # a piggymask that keeps some earlier weights
        pm = cpg.ownership(layer).piggymasks["2"]
        pm.data = torch.rand(pm.shape, generator=torch.Generator().manual_seed(1)) * 0.01
    return net


def test_cached_masks_follow_every_change_of_task_and_ownership():
    net = two_task_network()
    assert_weights_follow_masks(net)                       # task b, picking over a
    net.activate("a")
    assert_weights_follow_masks(net)                       # a: its own weights only, b's are zero
    net.activate("b")
    cpg.prune_to(net.model, "image", 2, 0.4)               # ownership changes inside the same task
    assert_weights_follow_masks(net)
    cpg.load_masks(net.model, {})                          # everything free
    assert all(torch.count_nonzero(layer.weight) == 0 for layer in cpg.prunable_layers(net.model).values())
    copied = copy.deepcopy(two_task_network())
    cpg.make_finetuning_mask(copied.model, "text", 2)      # a copy's own changes are seen by the copy
    assert_weights_follow_masks(copied)
    rebuilt = Network.from_checkpoint(two_task_network().state(epoch=1, dataset_config="x", text_encoder="y"))
    rebuilt.activate("a")
    assert_weights_follow_masks(rebuilt)


def test_fused_piggymask_weight_has_the_straight_through_gradient():
    torch.manual_seed(0)
    weight = torch.randn(6, 5, requires_grad=True)
    piggymask = (torch.rand(6, 5) * 0.01).requires_grad_()
    mask = torch.randint(0, 4, (6, 5), dtype=torch.uint8)           # task 3: own 3, earlier 1-2, free 0
    own, earlier = (mask == 3).float(), ((mask > 0) & (mask < 3)).float()
    grad = torch.randn(6, 5)
    cpg.PickedWeight.apply(weight, piggymask, own, earlier).backward(grad)
    fused = weight.grad.clone(), piggymask.grad.clone()
    weight.grad = piggymask.grad = None
    binary = (piggymask > cpg.PIGGYMASK_THRESHOLD).float()
    (weight * (own + earlier * (binary + piggymask - piggymask.detach()))).backward(grad)
    assert torch.allclose(fused[0], weight.grad) and torch.allclose(fused[1], piggymask.grad)


def test_bf16_autocast_logits_close_to_float32_and_deterministic():
    net = two_task_network()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = net.model(x)
        with autocast("cpu", True):
            half, again = net.model(x), net.model(x)
    assert half.dtype == torch.bfloat16 and torch.equal(half, again)
    assert not torch.equal(half.float(), full)             # autocast really ran in bf16
    assert torch.allclose(half.float(), full, atol=0.05, rtol=0.05)


def test_fast_recipe_warms_up_then_decays_to_zero():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=PEAK)
    scheduler, per_step = lr_schedule(opt, "fast", epochs=4, steps_per_epoch=25)
    assert per_step
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    warmup = int(FAST_WARMUP * 100)
    assert lrs[:warmup] == sorted(lrs[:warmup]) and math.isclose(max(lrs), PEAK)
    assert lrs[warmup:] == sorted(lrs[warmup:], reverse=True) and lrs[-1] < 0.01 * PEAK
    original, per_step = lr_schedule(torch.optim.SGD([p], lr=0.01), "original", epochs=10, steps_per_epoch=25)
    assert not per_step and original.milestones == {5: 1, 8: 1}


def test_amp_and_fast_recipe_through_the_stage_and_recorded(demo_root, tmp_path):
    """AMP=1 RECIPE=fast trains through the stage, is recorded in the manifest, and the default settings redo it."""
    torch.set_num_threads(1)
    env = env_for(demo_root, tmp_path, TASK_IDS="1", FINETUNE_EPOCHS="2")
    run_stage("baseline", "demo", {**env, "AMP": "1", "RECIPE": "fast"})
    manifest = Manifest(Layout(tmp_path, "demo", "perceiver_io").baseline("group1").manifest)
    first = manifest.read()
    assert first["settings"]["amp"] is True and first["settings"]["recipe"] == "fast"
    assert RANGE_TEST_LRS[0] <= first["results"]["fast_lr"] < RANGE_TEST_LRS[1]         # the range test's choice
    run_stage("baseline", "demo", env)
    assert manifest.read()["settings"]["amp"] is False and manifest.read()["settings"]["recipe"] == "original"


def test_the_range_test_is_seeded_puts_the_network_back_and_takes_its_rule(demo_root, one_thread):
    cfg = load_dataset_config("demo", demo_root)
    data = load_task(cfg, "group1", batch_size=16, seed=2, device="cpu")
    begin(data, 2)
    net = baseline_network(cfg, data)
    before = {k: v.clone() for k, v in net.model.state_dict().items()}
    chosen, history, _ = range_test(net, data, 4e-5, 12, seed=2)
    assert all(torch.equal(before[k], v) for k, v in net.model.state_dict().items())      # the weights put back
    assert len(history["lr"]) == len(history["loss"]) and history["lr"] == sorted(history["lr"])
    assert chosen == rule(history)
    assert range_test(net, data, 4e-5, 12, seed=2)[0] == chosen                           # seeded


def test_the_rule_takes_the_lowest_loss_or_without_a_descent_the_divergence():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert rule({"lr": lrs, "loss": [1.0, 0.8, 0.5, 0.9, 3.0]}) == 1e-2 / RANGE_TEST_DIVISOR     # the lowest loss
    # no step lowered the loss by 1 %: the last rate before it doubled
    assert rule({"lr": lrs, "loss": [1.0, 0.995, 1.2, 1.5, 2.5]}) == 1e-1 / RANGE_TEST_DIVISOR
    assert rule({"lr": lrs, "loss": [1.0, 1.0, 1.0, 1.0, 1.1]}) == 1.0 / RANGE_TEST_DIVISOR    # never diverged
    assert rule({"lr": lrs[:2], "loss": [1.0, 5.0]}) == 1e-4 / RANGE_TEST_DIVISOR              # at the second step


def test_a_resumed_step_keeps_the_rate_it_began_with(demo_root):
    cfg = load_dataset_config("demo", demo_root)
    data = load_task(cfg, "group1", batch_size=16, seed=2, device="cpu")
    phase = {"kind": "baseline"}
    saved = {"phase": phase, "objects": {"optimizer": {"param_groups": [{"initial_lr": 0.00123, "lr": 0.0004}]}}}
    resume = type("Saved", (), {"load": lambda self, mmap=False: saved})()
    assert fast_learning_rate(None, data, 4e-5, 2, 10, phase, resume, None) == 0.00123 == data.fast_lr


def test_under_torchrun_every_rank_trains_at_rank_0s_rate(demo_root, monkeypatch):
    """A rank other than 0 runs no range test: it takes rank 0's rate (all_sum of rank 0's rate and the others' 0)."""
    from utils import distributed
    cfg = load_dataset_config("demo", demo_root)
    data = load_task(cfg, "group1", batch_size=16, seed=2, device="cpu")
    sent = []
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    monkeypatch.setattr(distributed, "all_sum", lambda *values, device: sent.append(values) or (0.0042,))
    assert fast_learning_rate(None, data, 4e-5, 2, 10, {"kind": "baseline"}, None, None) == 0.0042 == data.fast_lr
    assert sent == [(0.0,)]
