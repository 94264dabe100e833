"""The one folder type: a task's working folder has the original's names, and the stages write exactly where
`TaskFolder` says (their records name files in its places only)."""
from pathlib import Path

import pandas as pd

from utils.checkpoint import read_json
from utils.layout import Layout, TaskFolder
from utils.manifest import Manifest


def test_a_task_folder_has_the_original_names():
    folder = TaskFolder(Path("R"))
    named = {"scratch": folder.scratch, "gradual_prune": folder.gradual_prune,
             "gradual_prune/0.5": folder.prune_stage("0.50"), "gradual_prune/record.txt": folder.record,
             "train.log": folder.log, "train.csv": folder.csv, "progress.json": folder.progress,
             "stage.json": folder.manifest, "resume.pt": folder.resume}
    assert {name: path.relative_to("R").as_posix() for name, path in named.items()} == {n: n for n in named}
    assert folder.step_resumes() == [Path("R/scratch/resume.pt")]       # no pruning stage started (none on disk)


def test_the_stages_write_where_their_task_folders_say(tiny_run):
    lay = Layout(tiny_run, "demo")
    baseline = lay.baseline("group1")
    assert Manifest(baseline.manifest).output("checkpoint").parent == baseline.root.resolve() and baseline.log.is_file()
    for group in ("group1", "group5"):
        backbone = lay.backbone(group)
        outputs = Manifest(backbone.manifest).outputs()
        assert outputs.pop("record") == backbone.record.resolve() and set(outputs) == set(read_json(backbone.record))
        assert outputs.pop("0.0").parent == backbone.scratch.resolve()
        assert all(path.parent == backbone.prune_stage(key).resolve() for key, path in outputs.items())
        assert backbone.log.is_file() and backbone.csv.is_file() and not backbone.progress.exists()
    pick = pd.read_csv(lay.result_csv).iloc[0]
    target = lay.target(f"group{pick.task_id}", f"group{pick.target_id}")
    outputs = Manifest(target.manifest).outputs()
    assert outputs == {"checkpoint": outputs["checkpoint"], "record": target.record.resolve()}
    assert outputs["checkpoint"].parent == target.scratch.resolve() and target.log.is_file() and target.csv.is_file()
