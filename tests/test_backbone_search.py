"""The backbone search (pickaback_perceiverIO.py, utils_pickaback/, packnet_models_pickaback/) finds the model that
decides like the target, across modalities through the k/v swap, and keeps its result files clean.

Runs on the demo config with untrained baselines built in-process (one per task, seeded differently) and small
profiles, so the whole file takes seconds.
"""
import shutil
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import pickaback_perceiverIO as pickaback
from models import cpg
from models.build import Network
from packnet_models_pickaback import InferenceModel, kv_layer_name, load_network
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.layout import Layout
from utils.manifest import task_checkpoint
from utils.config import load_dataset_config
from utils.data import model_config, task_dataset
from utils_pickaback.candidates import Candidate, Networks, Target, pick, profile_targets, search
from utils_pickaback.modeldiff import (ProfileSettings, candidate_ddv, class_balanced_sample, collate, mutation_search,
                                       output_diversity, similarity, task_generator)

IMAGE_TARGET, TEXT_TARGET = 1, 6          # demo: groups 1-4 are images, 5-8 texts


def checkpoint_in(folder):
    return task_checkpoint(folder, "the test wrote none")


def baseline_folder(checkpoint_root, group):
    return Layout(Path("."), "demo", checkpoint_root=Path(checkpoint_root)).baseline(group).root


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo(demo_root, tmp_path_factory, one_thread):
    """The shared demo data and an untrained baseline checkpoint per task."""
    root, data = tmp_path_factory.mktemp("search"), demo_root
    cfg = load_dataset_config("demo", data)
    config = model_config(cfg)
    for task_id, group in enumerate(cfg.groups, 1):
        torch.manual_seed(task_id)
        net = Network.new(config)
        net.start_task(group, cfg.modality(group), cfg.num_classes)
        net.claim_shared(group)
        save_checkpoint(net.state(epoch=1, dataset_config="demo", text_encoder=cfg.text_encoder),
                        baseline_folder(root / "checkpoints", group) / "checkpoint-1.pth.tar")
    return SimpleNamespace(data=data, checkpoints=root / "checkpoints", cfg=cfg)


@pytest.fixture
def checkpoints(demo, tmp_path):
    """A private copy of the baselines that a test may change."""
    return Path(shutil.copytree(demo.checkpoints, tmp_path / "checkpoints"))


def run_search(demo, checkpoint_root, out_dir, *args):
    return pickaback.main(["--dataset_config", "demo", "--data_root", str(demo.data),
                           "--checkpoint_root", str(checkpoint_root), "--out_dir", str(out_dir), "--device", "cpu",
                           "--profile_size", "12", "--iterations", "20", *map(str, args)])


def table(out_dir):
    return pd.read_csv(Path(out_dir) / "pickback_demo_table.csv")


def result(out_dir):
    return pd.read_csv(Path(out_dir) / "pickaback_demo_result.csv")


def row(frame, target, task):
    return frame[(frame.target_id == target) & (frame.task_id == task)].iloc[0]


def as_other_modality(ckpt, group, modality):
    """The same trained network relabelled as task `group` of `modality`: its own reader of `modality` is the
    untrained, unused one, so it can only read the target's inputs through the k/v swap."""
    old = ckpt["dataset_history"][0]
    ckpt = dict(ckpt)
    ckpt["model_state_dict"] = {k.replace(f"heads.{old}.", f"heads.{group}."): v
                                for k, v in ckpt["model_state_dict"].items()}
    ckpt["dataset_history"] = [group]
    ckpt["dataset2num_classes"] = {group: ckpt["dataset2num_classes"][old]}
    ckpt["modalities"] = {group: modality}
    masks = dict(ckpt["masks"])
    for m in ("image", "text"):
        masks[kv_layer_name(m)] = torch.full_like(masks[kv_layer_name(m)], int(m == modality))
    ckpt["masks"] = masks
    return ckpt


# ---- similarity ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target, clone_into", [(IMAGE_TARGET, 3), (TEXT_TARGET, 8)])
def test_a_copy_of_the_target_is_selected_with_similarity_one(demo, checkpoints, tmp_path, target, clone_into):
    source = checkpoint_in(baseline_folder(checkpoints, demo.cfg.task_name(target)))
    shutil.copy(source, baseline_folder(checkpoints, demo.cfg.task_name(clone_into)) / "checkpoint-1.pth.tar")
    picks = run_search(demo, checkpoints, tmp_path, "--target_id", target)
    assert picks == {target: clone_into}
    clone = row(table(tmp_path), target, clone_into)
    assert clone.sim_euc == pytest.approx(1.0, abs=1e-9) and clone.sim_cos == pytest.approx(1.0, abs=1e-9)
    others = table(tmp_path).query("task_id != @clone_into")
    assert (others.sim_euc < 1.0 - 1e-6).all()
    assert result(tmp_path).values.tolist() == [[target, clone_into]]


@pytest.mark.parametrize("target, clone_into", [(IMAGE_TARGET, 5), (TEXT_TARGET, 2)])
def test_cross_modal_candidates_read_the_targets_inputs_through_the_kv_swap(demo, checkpoints, tmp_path, target,
                                                                           clone_into):
    """A candidate of the other modality whose network behind the k/v is the target's scores 1.0: it reads the
    target's profile through the target's adapter and k/v, which its ownership mask would otherwise zero."""
    cfg = demo.cfg
    source = load_checkpoint(checkpoint_in(baseline_folder(checkpoints, cfg.task_name(target))))
    other = "text" if cfg.modality(cfg.task_name(target)) == "image" else "image"
    clone_group = cfg.task_name(clone_into)
    save_checkpoint(as_other_modality(source, clone_group, other),
                    baseline_folder(checkpoints, clone_group) / "checkpoint-1.pth.tar")
    picks = run_search(demo, checkpoints, tmp_path, "--target_id", target)
    rows = table(tmp_path)
    assert len(rows) == 7 and rows[["ddv_cos", "ddv_euc", "sim_cos", "sim_euc"]].notna().all().all()
    assert row(rows, target, clone_into).sim_euc == pytest.approx(1.0, abs=1e-9)
    assert picks == {target: clone_into}


def test_kv_swap_makes_the_targets_projection_the_candidates_own(demo):
    target = InferenceModel.load(checkpoint_in(baseline_folder(demo.checkpoints, "group1")))
    candidate = InferenceModel.load(checkpoint_in(baseline_folder(demo.checkpoints, "group5")))
    before = {k: v.clone() for k, v in candidate.net.model.state_dict().items()}
    swapped = candidate.reading(target.reader(), "image")
    layer = swapped.net.model.get_submodule(kv_layer_name("image"))
    assert (cpg.ownership(layer).mask == swapped.net.task_id("group5")).all()
    swapped.net.activate("group5")
    assert torch.equal(layer.weight, target.reader()[f"{kv_layer_name('image')}.parametrizations.weight.original"])
    inputs = collate(task_dataset(demo.cfg, "group1", "test"), range(6))
    logits = swapped(inputs)
    assert swapped.modality == "image" and logits.std(dim=0).min() > 0      # outputs depend on the input
    assert all(torch.equal(before[k], v) for k, v in candidate.net.model.state_dict().items())
    assert candidate.modality == "text"


# ---- selection rules and filters ------------------------------------------------------------------------------
def test_selection_original_picks_the_largest_distance(demo, tmp_path):
    paper = run_search(demo, demo.checkpoints, tmp_path / "similar", "--target_id", "all")
    original = run_search(demo, demo.checkpoints, tmp_path / "original", "--target_id", "all", "--selection",
                          "original")
    rows = table(tmp_path / "original")
    assert rows.equals(table(tmp_path / "similar"))
    for target, block in rows.groupby("target_id"):
        assert original[target] == block.loc[block.ddv_euc.idxmax(), "task_id"]
        assert paper[target] == block.loc[block.sim_euc.idxmax(), "task_id"]
    assert result(tmp_path / "original").set_index("target_id").task_id.to_dict() == original


@pytest.mark.parametrize("which, expected", [("same", {2, 3, 4}), ("cross", {5, 6, 7, 8})])
def test_candidates_are_restricted_by_modality(demo, tmp_path, which, expected):
    picks = run_search(demo, demo.checkpoints, tmp_path, "--target_id", IMAGE_TARGET, "--candidates", which)
    assert set(table(tmp_path).task_id) == expected and picks[IMAGE_TARGET] in expected


def test_rerunning_a_target_replaces_its_rows(demo, tmp_path):
    run_search(demo, demo.checkpoints, tmp_path, "--target_id", 3)
    run_search(demo, demo.checkpoints, tmp_path, "--target_id", 2)
    first = table(tmp_path)
    run_search(demo, demo.checkpoints, tmp_path, "--target_id", 2, "--candidates", "same")
    rows = table(tmp_path)
    assert rows.query("target_id == 3").reset_index(drop=True).equals(
        first.query("target_id == 3").reset_index(drop=True))
    assert sorted(rows.query("target_id == 2").task_id) == [1, 3, 4]
    assert result(tmp_path).target_id.tolist() == [2, 3]
    assert list(rows.columns) == ["target_id", "task_id", "ddv_cos", "ddv_euc", "sim_cos", "sim_euc"]


def test_a_seeded_search_is_reproducible(demo, tmp_path):
    for run in ("a", "b"):
        run_search(demo, demo.checkpoints, tmp_path / run, "--target_id", TEXT_TARGET, "--seed", 5)
    run_search(demo, demo.checkpoints, tmp_path / "c", "--target_id", TEXT_TARGET, "--seed", 6)
    a = (tmp_path / "a" / "pickback_demo_table.csv").read_text()
    assert a == (tmp_path / "b" / "pickback_demo_table.csv").read_text()
    assert a != (tmp_path / "c" / "pickback_demo_table.csv").read_text()


def test_a_missing_baseline_names_the_stage_to_run(demo, checkpoints, tmp_path, capsys):
    shutil.rmtree(baseline_folder(checkpoints, "group4"))
    with pytest.raises(SystemExit) as exit_info:
        run_search(demo, checkpoints, tmp_path, "--target_id", 1)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "group4" in err and "run run_pickaback/baseline.sh demo first" in err
    assert not (tmp_path / "pickaback_demo_result.csv").exists()


# ---- any networks: candidates named by (holder, checkpoint, task head) ------------------------------------------
SETTINGS = ProfileSettings(size=12, iterations=20)


@pytest.fixture(scope="module")
def client(demo, tmp_path_factory):
    """A client's CPG network that learned group1 (image, pruned to half) and then group5 (text, grown, on freshly
    initialised free weights): `first` is the network after group1 alone, `both` after both tasks."""
    folder, cfg = tmp_path_factory.mktemp("client"), demo.cfg
    torch.manual_seed(11)
    net = Network.new(model_config(cfg))
    paths = {}
    for name, group, modality, width in (("first", "group1", "image", 1.0), ("both", "group5", "text", 1.5)):
        net.start_task(group, modality, cfg.num_classes, width_multiplier=width, reinit_free=True)
        if modality == "image":
            cpg.prune_to(net.model, modality, 1, 0.5)
        net.claim_shared(group)
        paths[name] = folder / f"{name}.pth.tar"
        save_checkpoint(net.state(epoch=1, dataset_config="demo", text_encoder=cfg.text_encoder), paths[name])
    return SimpleNamespace(**paths)


def baseline_of(demo, task_id):
    return checkpoint_in(baseline_folder(demo.checkpoints, demo.cfg.task_name(task_id)))


def target_of(demo, task_id):
    return Target(task_id, baseline_of(demo, task_id), partial(task_dataset, demo.cfg, f"group{task_id}", "test"))


def test_each_head_of_a_multi_task_network_is_scored_through_its_own_head_and_masks(demo, client):
    """Both heads of one network and a baseline, against an image and a text target (so each head is cross-modal
    for one of them): every row is what that head alone scores against the target's profile, each checkpoint is
    opened once per phase, and the rows follow the targets, then the candidates, as given."""
    targets = [target_of(demo, IMAGE_TARGET), target_of(demo, TEXT_TARGET)]
    candidates = [Candidate("client", client.both, "group1"), Candidate("client", client.both, "group5"),
                  Candidate("baseline", baseline_of(demo, 2))]
    opened = []
    rows = search(targets, candidates, SETTINGS, Networks(open=lambda path, device: opened.append(path) or
                                                          load_network(path, device)))
    assert opened == [targets[0].checkpoint, targets[1].checkpoint, client.both, candidates[2].checkpoint]
    assert [(r.target, r.candidate, r.task) for r in rows] == \
        [(t, c, head) for t in targets for c, head in zip(candidates, ("group1", "group5", "group2"), strict=True)]
    alone = [InferenceModel.load(client.first), InferenceModel.load(client.both, task="group5"),
             InferenceModel.load(candidates[2].checkpoint)]
    assert alone[0].task == "group1" and alone[0].net.history == ["group1"]
    for target, profile in zip(targets, profile_targets(targets, SETTINGS, Networks()), strict=True):
        for row, model in zip([r for r in rows if r.target == target], alone, strict=True):
            assert row.scores == similarity(profile.ddv, candidate_ddv(profile.probe, model))   # as a holder would
    assert rows[0].scores != rows[1].scores and rows[3].scores != rows[4].scores


def test_the_pick_follows_the_rule_and_ties_go_to_the_first_candidate(demo, client):
    """The target's own network, held twice, is the most similar; of the two the first given is picked."""
    own = baseline_of(demo, IMAGE_TARGET)
    candidates = [Candidate("client", client.both, "group1"), Candidate("x", own), Candidate("y", own),
                  Candidate("client", client.both, "group5")]
    rows = search([target_of(demo, IMAGE_TARGET)], candidates, SETTINGS)
    assert rows[1].scores == rows[2].scores and rows[1].scores["sim_euc"] == pytest.approx(1.0, abs=1e-9)
    assert list(pick(rows)) == [IMAGE_TARGET]
    assert pick(rows)[IMAGE_TARGET] is rows[1] and pick(rows[::-1])[IMAGE_TARGET] is rows[2]
    assert pick(rows, "original")[IMAGE_TARGET] is max(rows, key=lambda r: r.scores["ddv_euc"])


# ---- profiling inputs ------------------------------------------------------------------------------------------
def test_profiling_inputs_are_a_seeded_class_balanced_sample():
    labels = [0] * 10 + [1] * 10 + [2] * 10
    chosen = class_balanced_sample(labels, 12, task_generator(2, 1))
    assert sorted(labels[i] for i in chosen) == [0] * 4 + [1] * 4 + [2] * 4
    assert chosen == class_balanced_sample(labels, 12, task_generator(2, 1))
    assert chosen != class_balanced_sample(labels, 12, task_generator(3, 1))
    assert chosen != sorted(chosen)                                          # pairs (i, i + n/2) mix classes


def test_mutation_search_raises_diversity_without_autograd(demo):
    model = InferenceModel.load(checkpoint_in(baseline_folder(demo.checkpoints, "group6")))
    dataset = task_dataset(demo.cfg, "group6", "test")
    inputs = collate(dataset, class_balanced_sample(dataset.targets, 12, task_generator(2, 6)))
    before = float(output_diversity(model(inputs)))
    mutated, score = mutation_search(model, inputs, 0.1, 30, task_generator(2, 6))
    assert score > before
    assert score == pytest.approx(float(output_diversity(model(mutated))), rel=1e-4)
    assert not mutated["x"].requires_grad and mutated["x"].grad_fn is None
    assert torch.equal(mutated["mask"], inputs["mask"]) and not torch.equal(mutated["x"], inputs["x"])
    changed = (mutated["x"] != inputs["x"]).any(dim=-1)                      # [n, tokens]
    assert not (changed & ~inputs["mask"]).any()                             # padding is never mutated
