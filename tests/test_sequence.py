"""The sequence run: one network learns image and text tasks in turn; nothing an earlier task learned changes, the
accuracy matrix is what the kept checkpoints score, finished steps are skipped, a killed step resumes bit-identical,
ORDER=similar follows the search's table, and bad input stops before anything is trained."""
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from models.build import Network
from tests.conftest import env_for, unreachable_copy
from utils import trainer
from utils.checkpoint import read_json
from utils.config import load_dataset_config
from utils.data import load_task
from utils.errors import UserError
from utils.layout import Layout, TaskFolder
from utils.manifest import Manifest
from utils.pipeline import run_stage
from utils.pipeline import sequence as sequence_module
from utils.pipeline.context import Run
from utils.pipeline.settings import stage_settings

ORDER = "1 5 2"                                                   # image, text, image


def sequence_env(demo_root, work, **extra):
    return env_for(demo_root, work, ORDER=ORDER, **extra)


@pytest.fixture(scope="module")
def sequence_run(tiny_run, demo_root, tmp_path_factory):
    """conftest's tiny_run (baselines, search table) with a 3-task sequence run on it, on one thread."""
    work = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("sequence") / "work"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run_stage("sequence", "demo", sequence_env(demo_root, work, EPOCHS="2"))
    torch.set_num_threads(threads)
    return work


def kept(work, step, run="default"):
    return Manifest(Layout(work, "demo").sequence_step(run, step).manifest).output("kept")


def logits_and_accuracy(checkpoint, group, demo_root, config="demo"):
    cfg = load_dataset_config(config, demo_root)
    data = load_task(cfg, group, batch_size=16, seed=2, device="cpu")
    net = Network.load(checkpoint)
    _, acc, logits = trainer.Trainer(net, group, data.device, None, data.test_loader).evaluate(return_logits=True)
    return logits, acc


def test_every_earlier_task_computes_bit_identical_logits_after_every_later_task(sequence_run, demo_root, one_thread):
    groups = [f"group{t}" for t in ORDER.split()]
    net = Network.load(kept(sequence_run, 3))
    assert net.history == groups and {net.record(g).modality for g in groups} == {"image", "text"}
    for i, group in enumerate(groups, 1):
        reference, _ = logits_and_accuracy(kept(sequence_run, i), group, demo_root)
        for j in range(i + 1, len(groups) + 1):
            later, _ = logits_and_accuracy(kept(sequence_run, j), group, demo_root)
            assert torch.equal(later, reference), (group, j)


def test_the_accuracy_matrix_is_what_each_kept_checkpoint_scores(sequence_run, demo_root, one_thread):
    rows = pd.read_csv(Layout(sequence_run, "demo").sequence_csv)
    rows = rows[rows.run == "default"]
    assert sorted(zip(rows.step, rows.position, strict=True)) == [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3)]
    accs = read_json(Layout(sequence_run, "demo").baseline_acc_file)
    for r in rows.itertuples():
        _, acc = logits_and_accuracy(kept(sequence_run, r.step), r.task, demo_root)
        assert r.accuracy == round(acc, 4) and r.baseline_acc == float(accs[r.task])
        assert r.accuracy == rows[(rows.step == r.position) & (rows.task == r.task)].accuracy.item()   # F = 0
    last = rows[rows.step == 3]
    assert (last.params == Network.load(kept(sequence_run, 3)).num_parameters()).all()
    assert last.owned.sum() + last.free.iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert last.separate_params.iloc[0] > last.params.iloc[0]                  # one network, not three


def test_a_rerun_skips_every_step_and_keeps_the_csv(sequence_run, demo_root, caplog, tmp_path):
    work = Path(shutil.copytree(sequence_run, tmp_path / "work"))
    csv = Layout(work, "demo").sequence_csv
    before = csv.read_text()
    caplog.set_level("INFO")
    run_stage("sequence", "demo", sequence_env(demo_root, work, EPOCHS="2"))
    assert caplog.text.count("finished with these settings, skipped") == 3
    assert "Finetune stage" not in caplog.text and csv.read_text() == before


def test_a_changed_order_is_redone_from_the_first_step_that_differs(sequence_run, demo_root, caplog, tmp_path):
    work = Path(shutil.copytree(sequence_run, tmp_path / "work"))
    caplog.set_level("INFO")
    run_stage("sequence", "demo", env_for(demo_root, work, ORDER="1 5 6", EPOCHS="2"))
    skipped = [r.message for r in caplog.records if "skipped" in r.message]
    assert len(skipped) == 2 and re.search(r"step 3/3: task 6 \(group6, text\): redone: inputs changed \(.*order\)",
                                           caplog.text)


def test_a_step_killed_inside_resumes_bit_identical(sequence_run, demo_root, tmp_path, monkeypatch, one_thread):
    class KilledError(Exception):
        pass
    work = Path(shutil.copytree(sequence_run, tmp_path / "work"))
    shutil.rmtree(Layout(work, "demo").checkpoints / "CPG_sequence")
    validate = trainer.Trainer.validate

    def stopping(self, at, *args, **kwargs):
        if self.task == "group5" and at == 2:                     # the second step's finetuning, at its last epoch
            raise KilledError
        return validate(self, at, *args, **kwargs)
    monkeypatch.setattr(trainer.Trainer, "validate", stopping)
    with pytest.raises(KilledError):
        run_stage("sequence", "demo", sequence_env(demo_root, work, EPOCHS="2"))
    monkeypatch.setattr(trainer.Trainer, "validate", validate)
    assert (Layout(work, "demo").sequence_step("default", 2).scratch / "resume.pt").is_file()
    run_stage("sequence", "demo", sequence_env(demo_root, work, EPOCHS="2"))
    for step in (1, 2, 3):
        assert kept(work, step).read_bytes() == kept(sequence_run, step).read_bytes(), step


def fake_table(order):
    """A search table in which a task is the more similar to another the closer they are in `order`."""
    pos = {t: i for i, t in enumerate(order)}
    return pd.DataFrame([{"target_id": t, "task_id": k, "ddv_cos": 0.0, "ddv_euc": 0.0, "sim_cos": 0.0,
                          "sim_euc": 1.0 / (1 + abs(pos[t] - pos[k]))} for t in order for k in order if t != k])


def test_order_similar_takes_next_the_task_most_similar_to_those_learned(demo_root):
    run = Run.from_environment("demo", env_for(demo_root, demo_root))
    wanted = [3, 7, 1, 8, 2, 6, 4, 5]
    s = stage_settings("sequence", {"ORDER": "similar", "FIRST": "3"})
    assert sequence_module.sequence_order(run, s, fake_table(wanted)) == wanted
    assert sequence_module.sequence_order(run, s.replace(order="random", seed=4), None) != list(range(1, 9))
    assert sorted(sequence_module.sequence_order(run, s.replace(order="random", seed=4), None)) == list(range(1, 9))


@pytest.mark.parametrize("extra, words", [({"ORDER": "1 9"}, "names task 9, but config 'demo' has tasks 1..8"),
                                          ({"ORDER": "1 2 1"}, "names task 1 more than once"),
                                          ({"ORDER": "1 x"}, "ORDER='1 x' must be config, similar, random or a list"),
                                          ({"ORDER": "similar", "FIRST": "9"}, "FIRST=9 is not one of the tasks")])
def test_a_bad_order_stops_before_anything_is_trained(tiny_run, demo_root, tmp_path, extra, words):
    work = Path(shutil.copytree(tiny_run, tmp_path / "work"))
    with pytest.raises(UserError, match=words):
        run_stage("sequence", "demo", env_for(demo_root, work, **extra))
    assert not (Layout(work, "demo").checkpoints / "CPG_sequence").exists()


def test_a_missing_baseline_or_search_table_is_one_sentence(tiny_run, demo_root, tmp_path):
    work = Path(shutil.copytree(tiny_run, tmp_path / "work"))
    lay = Layout(work, "demo")
    accs = read_json(lay.baseline_acc_file)
    lay.baseline_acc_file.write_text(json.dumps({k: v for k, v in accs.items() if k != "group5"}))
    with pytest.raises(UserError) as error:
        run_stage("sequence", "demo", sequence_env(demo_root, work))
    assert error.value.exit_code == 3 and "has no accuracy for group5" in str(error.value)
    lay.table_csv.unlink()
    with pytest.raises(UserError, match="need the backbone search's table .* run run_pickaback/find_backbone.sh demo"):
        run_stage("sequence", "demo", env_for(demo_root, work, ORDER="similar"))
    assert not (lay.checkpoints / "CPG_sequence").exists()


def test_no_free_weight_at_the_maximum_width_is_one_sentence_keeping_the_earlier_tasks(tiny_run, demo_root, tmp_path,
                                                                                       monkeypatch):
    work = Path(shutil.copytree(tiny_run, tmp_path / "work"))
    data = unreachable_copy(demo_root, tmp_path / "data")             # a baseline of 1.0 is out of reach there
    lay = Layout(work, "demo")
    lay.baseline_acc_file.write_text(json.dumps({**read_json(lay.baseline_acc_file), "group1": "0.3",
                                                 "group2": "1.0"}))
    monkeypatch.setattr(sequence_module, "choose_ratio", lambda *args: None)   # task 1 keeps every weight
    with pytest.raises(UserError, match=r"task 2 \(group2\) found no free weight in the network at its maximum width "
                                        r"x1.0 .* raise MAX_NETWORK_WIDTH_MULTIPLIER"):
        run_stage("sequence", "demo", env_for(data, work, ORDER="1 2", MAX_NETWORK_WIDTH_MULTIPLIER="1.0"))
    assert Manifest(lay.sequence_step("default", 1).manifest).read() is not None
    assert Manifest(lay.sequence_step("default", 2).manifest).read() is None
    assert pd.read_csv(lay.sequence_csv).step.tolist() == [1]               # the rows of the task learned are kept


def test_sequence_step_alone_reproduces_a_step_of_the_sequence_run(sequence_run, demo_root, tmp_path, one_thread):
    """The step as a function, as a client would call it: step 2 of the run, from step 1's kept checkpoint into a
    folder of its own, keeps the same checkpoint with the same results."""
    work = Path(shutil.copytree(sequence_run, tmp_path / "work"))
    env = sequence_env(demo_root, work, EPOCHS="2")
    run, s = Run.from_environment("demo", env), stage_settings("sequence", env)
    plan = sequence_module.sequence_plan(run, s)
    step = sequence_module.sequence_step(run, s, TaskFolder(tmp_path / "step2"), plan.order[:2], kept(work, 1),
                                         plan.criteria[plan.order[1]], max(s.total_num_tasks, len(plan.order)))
    assert step.kept.is_relative_to((tmp_path / "step2").resolve())
    assert step.kept.read_bytes() == kept(sequence_run, 2).read_bytes()
    recorded = Manifest(Layout(sequence_run, "demo").sequence_step("default", 2).manifest).results()
    assert {**step.results, "seconds": 0} == {**recorded, "seconds": 0}
