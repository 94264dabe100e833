"""Foundation: config validation, data (text-feature cache, padding mask), the one Perceiver IO, checkpoints and
the baseline stage."""
import json
import multiprocessing

import pytest
import torch
import yaml

from models.build import Network
from packnet_main_normal import main as baseline_main
from tests.conftest import REPO, run_main, run_script, run_stage_script
from utils import data as data_mod
from utils.checkpoint import load_checkpoint, read_json, save_checkpoint, update_json
from utils.config import load_dataset_config
from utils.errors import UserError
from utils.layout import Layout

TINY = dict(num_freq_bands=6, max_freq=10.0, depth=1, num_latents=8, latent_dim=32, cross_heads=1,
            cross_dim_head=16, latent_heads=2, latent_dim_head=16, ff_mult=2, text_dim=24, max_text_length=16)


def write_config(tmp_path, name, section):
    path = tmp_path / "dataset_config.yaml"
    path.write_text(yaml.safe_dump({name: section}))
    return path


def demo_section():
    return yaml.safe_load((REPO / "utils" / "dataset_config.yaml").read_text())["demo"]


# ---- configuration -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, words", [
    (lambda s: s.pop("num_classes"), "no key 'num_classes'"),
    (lambda s: s.update(num_groups=5), "num_groups: 5"),
    (lambda s: s.pop("text_train_path"), "text_train_path"),
    (lambda s: s["modality"].update(text_groups=["group9"]), "not in DATASETS"),
])
def test_bad_config_is_one_sentence_naming_file_and_fix(tmp_path, edit, words):
    section = demo_section()
    edit(section)
    path = write_config(tmp_path, "mine", section)
    with pytest.raises(UserError) as e:
        load_dataset_config("mine", config_file=path, check_folders=False)
    assert words in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_group_folder_names_folder_and_preparer(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset_config("oxford", data_root=tmp_path)
    assert str(tmp_path / "oxford" / "image" / "train" / "group1") in str(e.value)
    assert "tools/prepare_oxford.py" in str(e.value)


def test_modality_comes_from_config(demo_root):
    cfg = load_dataset_config("demo", demo_root)
    assert [cfg.modality(g) for g in cfg.groups] == ["image"] * 4 + ["text"] * 4
    oxford = load_dataset_config("oxford", check_folders=False)
    assert oxford.modality("group6") == "image" and oxford.modality("group7") == "text"


def test_get_dataset_name_tool(tmp_path):
    tool = ["python", str(REPO / "tools" / "get_dataset_name.py")]
    out = lambda *a: run_script(tool + list(a), cwd=tmp_path, check=True).stdout.strip()  # noqa: E731
    assert out("oxford", "7") == "group7"
    assert out("oxford", "7", "--modality") == "text"
    assert out("cub", "--num_tasks") == "54"
    assert out("mscoco", "1") == "Accessory"
    bad = run_script(tool + ["oxford", "13"], cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


# ---- model -------------------------------------------------------------------------------------------------------
def test_image_tokens_have_29_channels_and_both_modalities_classify():
    net = Network.new(dict(TINY))
    assert net.model.adapters["image"].out_dim == 29
    assert net.model.kv.projections["image"].in_features == 29
    net.start_task("img", "image", 3)
    assert net.model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    net.start_task("txt", "text", 4)
    assert net.model(torch.randn(2, 10, 24), mask=torch.ones(2, 10, dtype=torch.bool)).shape == (2, 4)


def test_cross_attention_ignores_padding():
    torch.manual_seed(0)
    net = Network.new(dict(TINY))
    net.start_task("txt", "text", 3)
    net.model.eval()
    x = torch.randn(2, 12, 24)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, 7:] = False
    y = x.clone()
    y[:, 7:] = torch.randn(2, 5, 24) * 10
    with torch.no_grad():
        assert torch.allclose(net.model(x, mask=mask), net.model(y, mask=mask), atol=1e-6)
        assert not torch.allclose(net.model(x), net.model(y), atol=1e-3)


def test_heads_are_saved_and_restored_exactly(tmp_path):
    torch.manual_seed(0)
    net = Network.new(dict(TINY))
    net.start_task("a", "image", 3)
    torch.nn.init.normal_(net.model.heads["a"][1].weight)
    path = tmp_path / "ck.pth.tar"
    save_checkpoint(net.state(epoch=1, dataset_config="x", text_encoder="e"), path)
    ckpt = load_checkpoint(path)
    assert {"model_state_dict", "dataset_history", "dataset2num_classes", "masks", "shared_layer_info"} <= set(ckpt)
    assert any(k.startswith("heads.a.") for k in ckpt["model_state_dict"])
    again = Network.from_checkpoint(ckpt)
    again.activate("a")
    net.model.eval(), again.model.eval()
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(net.model(x), again.model(x))


# ---- checkpoints and shared JSON files ---------------------------------------------------------------------------
def test_interrupted_save_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "checkpoint-1.pth.tar"
    save_checkpoint({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        save_checkpoint({"a": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1.pth.tar"]


def _update(args):
    path, key = args
    update_json(path, {key: "0.5000"})


def test_concurrent_updates_of_the_accuracy_file_lose_nothing(tmp_path):
    path = tmp_path / "acc.txt"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_update, [(path, f"group{i}") for i in range(40)])
    assert set(read_json(path)) == {f"group{i}" for i in range(40)}


# ---- text features -----------------------------------------------------------------------------------------------
def test_text_features_are_cached_and_invalidated_by_a_changed_file(demo_root, monkeypatch):
    cfg = load_dataset_config("demo", demo_root)
    first = data_mod.text_task(cfg, "group5", "test")
    calls = []
    real = data_mod.embed_texts
    monkeypatch.setattr(data_mod, "embed_texts", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = data_mod.text_task(cfg, "group5", "test")
    assert calls == [] and torch.equal(first.features, second.features)
    assert first.features.shape[1:] == (cfg.text_max_length, 384) and first.masks.dtype == torch.bool
    sample = sorted((cfg.task_folder("group5", "test") / "red").glob("*.txt"))[0]
    original = sample.read_text()
    try:
        sample.write_text("a completely different caption")
        changed = data_mod.text_task(cfg, "group5", "test")
        assert calls == [1] and not torch.equal(changed.features, first.features)
    finally:
        sample.write_text(original)


# ---- baseline stage ----------------------------------------------------------------------------------------------
def test_baseline_learns_writes_checkpoint_and_accuracy(demo_root, tmp_path):
    acc_file = tmp_path / "baseline_demo_acc.txt"
    for group in ("group1", "group5"):
        rc = run_main(baseline_main, ["--dataset_config", "demo", "--dataset", group, "--epochs", "8",
                                      "--batch_size", "8", "--save_folder", str(tmp_path / group),
                                      "--logfile", str(acc_file), "--data_root", str(demo_root)])
        assert rc == 0
        ckpt = load_checkpoint(tmp_path / group / "checkpoint-8.pth.tar")
        assert ckpt["dataset_history"] == [group] and ckpt["dataset2num_classes"] == {group: 3}
        assert all(m.dtype == torch.uint8 for m in ckpt["masks"].values())
    accs = json.loads(acc_file.read_text())
    assert set(accs) == {"group1", "group5"}
    assert all(isinstance(v, str) and float(v) > 0.6 for v in accs.values()), accs


def test_modality_flag_contradicting_config_is_an_error(demo_root, tmp_path, capsys):
    rc = run_main(baseline_main, ["--dataset_config", "demo", "--dataset", "group1", "--modality", "text",
                                  "--save_folder", str(tmp_path), "--logfile", str(tmp_path / "a.txt"),
                                  "--data_root", str(demo_root)])
    assert rc == 1 and "contradicts" in capsys.readouterr().err


def test_seeded_baseline_runs_reproduce_exactly(demo_root, tmp_path):
    states = []
    for run in ("a", "b"):
        run_main(baseline_main, ["--dataset_config", "demo", "--dataset", "group2", "--epochs", "2", "--batch_size",
                                 "8", "--save_folder", str(tmp_path / run), "--logfile", str(tmp_path / "acc.txt"),
                                 "--data_root", str(demo_root)])
        states.append(load_checkpoint(tmp_path / run / "checkpoint-2.pth.tar")["model_state_dict"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_baseline_script_without_data_is_one_sentence(tmp_path, monkeypatch, capsys, root_logging):
    rc = run_stage_script(monkeypatch, ["baseline", "oxford"],
                          {"MMPAB_DATA_ROOT": tmp_path, "MMPAB_WORK_DIR": tmp_path / "work"})
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert "tools/prepare_oxford.py" in err and str(tmp_path / "oxford") in err


def test_new_image_only_config_section_trains_with_baseline_script(demo_root, tmp_path, monkeypatch, capsys,
                                                                   root_logging):
    section = demo_section()
    for key in ("modality", "text_train_path", "text_test_path", "model"):
        section.pop(key)
    section.update(DATASETS=["None", "group1", "group3"], num_groups=2, resize=[8, 8],
                   model={"num_latents": 8, "latent_dim": 32})                  # small; the rest is the default
    path = write_config(tmp_path, "shapes", section)
    work = tmp_path / "work"
    rc = run_stage_script(monkeypatch, ["baseline", "shapes"],
                          {"MMPAB_CONFIG_FILE": path, "MMPAB_DATA_ROOT": demo_root, "MMPAB_WORK_DIR": work,
                           "FINETUNE_EPOCHS": "1", "BATCH_SIZE": "16"})
    assert rc == 0, capsys.readouterr()
    lay = Layout(work, "shapes")
    assert set(read_json(lay.baseline_acc_file)) == {"group1", "group3"}
    ckpt = load_checkpoint(lay.baseline("group3").root / "checkpoint-1.pth.tar")
    assert ckpt["model_config"]["depth"] == 3 and ckpt["model_config"]["latent_dim"] == 32   # defaults filled in


def test_hidden_state_features_are_a_separate_cache_entry(demo_root):
    cfg = load_dataset_config("demo", demo_root)
    embeddings = data_mod.text_task(cfg, "group6", "test")
    cfg.raw["text_features"] = "hidden_states"
    hidden = data_mod.text_task(cfg, "group6", "test")
    assert hidden.features.shape == embeddings.features.shape
    assert not torch.allclose(hidden.features, embeddings.features)
    assert len(list((demo_root / ".cache").glob("text_*.pt"))) >= 2
