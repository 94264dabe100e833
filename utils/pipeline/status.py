"""Where a run stands, read from its files alone (tools/status.py): nothing is trained, locked or written.

For each stage of run_all and each task the run selects (TASK_IDS), one of

    finished      its record (stage.json and the like) is there and names files of the recorded sizes; with its
                  main figure (accuracy, record and width, chosen ratio, pick, target accuracy) and, when the
                  scripts' current variables differ from the recorded settings, which ones (the stage would redo it)
    running       a live process keeps the task's .running.json marker (utils/pipeline/lifecycle.py); with the
                  epoch its resume state holds
    resumable     no live process, but a resume state or progress file: a rerun continues from there
    interrupted   a process began it and is gone, before any epoch was saved: a rerun starts it again
    not started   nothing of it is there

The settings compared are those that decide whether finished work holds, and so are the inputs that cost nothing
to compute: the config's model section, its other settings and the task's modality (the data's fingerprint without
its file listing), the baseline accuracy and the pair. The stage also compares the data files, the checkpoints'
contents and the files' sha256; this reads only the files' sizes, so it stays fast on a long run.
"""
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from packnet_models_pickaback.kv_transfer import read_pairs
from utils.checkpoint import accuracy, load_checkpoint, read_json
from utils.errors import UserError
from utils.manifest import Manifest, SearchManifest
from utils.pipeline import runlock
from utils.pipeline.settings import RUN_ALL, stage_settings

MISSING = object()
STATES = ("finished", "running", "resumable", "interrupted", "not started")


@dataclass(frozen=True)
class TaskState:
    stage: str
    task: str
    state: str
    detail: str = ""
    redo: str = ""          # why the stage would redo a finished task ("" when it would skip it)


def on_device(marker):
    """ ", on cuda:0 (GPU 2)" for the device and GPU a running marker names; "" for a marker without them."""
    device, gpu = marker.get("device"), marker.get("gpu")
    return (f", on {device}" if device else "") + (f" (GPU {gpu})" if gpu and device != "cpu" else "")


def alive(marker):
    """Whether the process a running marker names is alive (on another host: assumed so, it cannot be checked)."""
    if marker.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(marker["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:                                       # alive, another user's
        return True
    return True


def read_marker(manifest):
    try:
        marker = read_json(manifest.running)
    except UserError:                                             # half-written by a process that died
        return None
    return marker if isinstance(marker, dict) and "pid" in marker else None


def resume_epoch(path, epochs_of):
    """'after epoch e of E of <step>' of the resume state at `path` (read memory-mapped: its tensors are not
    loaded), or None when there is none."""
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path, mmap=True)
        phase, epoch = dict(state["phase"]), int(state["epoch"])
    except (UserError, KeyError, TypeError, ValueError):          # a damaged state: the rerun ignores it
        return f"an unreadable resume state {path.name}"
    step = {"finetune": f"finetuning at width x{phase.get('width', 1.0):g}",
            "prune": f"pruning {phase.get('initial', 0):g} -> {phase.get('target', 0):g}"}.get(phase["kind"],
                                                                                             phase["kind"])
    return f"{step}, after epoch {epoch} of {epochs_of(phase['kind'])}"


def input_changes(recorded, now):
    """[name] of the inputs in `now` (those that cost nothing to compute) that differ from the `recorded` ones, as
    the stage compares them. Of the data's fingerprint (Run.data_settings), every part but the file listing: the
    config's settings ("data config"), its model section ("model", named once) and the task's "modality"."""
    def parts(inputs):
        inputs = dict(inputs)
        data = inputs.pop("data", None)
        if isinstance(data, dict):
            config = data.get("config") if isinstance(data.get("config"), dict) else {}
            inputs.update({"data config": {k: v for k, v in config.items() if k != "model"},
                           "model": data.get("model"), "modality": data.get("modality")})
        return inputs
    was = parts(recorded)
    return [k for k, v in parts(json.loads(json.dumps(now))).items() if was.get(k, MISSING) != v]


def state_of(stage, what, manifest, settings, figure, resumes=(), progress=None, epochs_of=lambda kind: "?",
             inputs=None):
    """The TaskState of one task from its manifest, running marker, resume states and progress file; `inputs` are
    the task's inputs that status computes (input_changes)."""
    marker = read_marker(manifest)
    resumed = [r for r in (resume_epoch(Path(p), epochs_of) for p in resumes) if r]
    done = read_json(progress) if progress is not None and Path(progress).is_file() else None
    steps = f"{done['progress']['index']} pruning stage(s) done" if isinstance(done, dict) and "progress" in done \
        else ""
    at = "; ".join(x for x in (steps, *resumed) if x)
    if marker and alive(marker):
        since = runlock.since(marker)                         # the marker and the run lock record a start alike
        return TaskState(stage, what, "running", f"pid {marker['pid']} on {marker.get('host')}{on_device(marker)} "
                                                 f"since {since}{'; ' + at if at else ''}")
    try:
        data = manifest.read()
    except UserError as e:
        return TaskState(stage, what, "not started", f"its record is unreadable ({e})")
    if data:
        figure_text = figure(data.get("results", {}))
        changes = manifest.settings_changes(settings.identity(), data)
        changed_inputs = input_changes(data.get("inputs", {}), inputs or {})
        bad = [Path(p).name for p in manifest.damaged_outputs(digests=False)]
        redo = (f"settings changed: {', '.join(changes)}" if changes else
                f"inputs changed: {', '.join(changed_inputs)}" if changed_inputs else
                f"files missing or changed: {', '.join(bad)}" if bad else "")
        return TaskState(stage, what, "finished", figure_text, redo)
    if at:
        return TaskState(stage, what, "resumable", at)
    if marker:
        return TaskState(stage, what, "interrupted", f"pid {marker['pid']} began it and is gone before an epoch was "
                                                     f"saved: a rerun starts it again")
    return TaskState(stage, what, "not started")


# ---- each stage's tasks, records and main figures --------------------------------------------------------------
def epochs(s, **by_kind):
    return lambda kind: getattr(s, by_kind.get(kind, "epochs"))


def baselines(layout):
    """{group: accuracy} of the baseline accuracy file, as the stages read it; {} when it cannot be read (the stage
    says why)."""
    try:
        accs = read_json(layout.baseline_acc_file) or {}
        return {group: accuracy(acc, group) for group, acc in accs.items()}
    except UserError:
        return {}


def with_baseline(inputs, accs, group):
    """`inputs` and the task's baseline accuracy, where the accuracy file holds it."""
    return {**inputs, "baseline": accs[group]} if group in accs else inputs


def baseline_states(run, s, layout):
    for t, group in run.tasks():
        folder = layout.baseline(group)
        yield state_of(s.STAGE, f"task {t} ({group})", Manifest(folder.manifest), s,
                       lambda r: f"accuracy {r.get('accuracy')}", [folder.resume],
                       epochs_of=epochs(s, baseline="finetune_epochs"), inputs={"data": run.data_config(group)})


def record_text(r):
    record = r.get("record", {})
    return f"record {json.dumps(record)}, width x{r.get('width')}"


def backbone_states(run, s, layout):
    accs = baselines(layout)
    for t, group in run.tasks():
        folder = layout.backbone(group)
        yield state_of(s.STAGE, f"task {t} ({group})", Manifest(folder.manifest), s, record_text,
                       folder.step_resumes(), folder.progress, epochs(s, prune="nr_epoch_for_each_prune"),
                       with_baseline({"data": run.data_config(group)}, accs, group))


def choice_states(run, s, layout):
    accs = baselines(layout)
    for t, group in run.tasks():
        yield state_of(s.STAGE, f"task {t} ({group})", Manifest(layout.choice_manifest(group)), s,
                       lambda r: f"ratio {r.get('ratio')}", inputs=with_baseline({"model": run.cfg.model}, accs, group))


def search_states(run, s, layout):
    for t, group in run.tasks():
        def pick(r):
            k = r.get("backbone")
            return f"backbone {k} ({run.cfg.task_name(k)})" if isinstance(k, int) else f"backbone {k}"
        yield state_of(s.STAGE, f"target {t} ({group})", SearchManifest(layout.search_manifest, t), s, pick,
                       inputs={"data": run.data_config(group)})


def pair_states(run, layout, stage, state):
    """[state(target id, backbone id)] of the rows of the search result the run selects, or one TaskState saying
    there is no search result yet."""
    try:
        pairs = read_pairs(layout.result_csv, run.cfg)
    except UserError:
        return [TaskState(stage, "every target", "not started", f"no search result ({layout.result_csv.name})")]
    return [state(t, k) for t, k in pairs if t in run.task_ids]


def transfer_states(run, s, layout):
    def state(t, k):
        return state_of(s.STAGE, f"target {t} on backbone {k} ({run.cfg.task_name(k)})",
                        Manifest(layout.kv_manifest(run.cfg.task_name(k), t)), s,
                        lambda r: f"{'copied ' + str(r.get('copied')) if r.get('copied') else 'same modality'}",
                        inputs={"target": t, "backbone": k, "model": run.cfg.model})
    return pair_states(run, layout, s.STAGE, state)


def target_states(run, s, layout):
    accs = baselines(layout)

    def state(t, k):
        target, backbone = run.cfg.task_name(t), run.cfg.task_name(k)
        folder = layout.target(backbone, target)
        return state_of(s.STAGE, f"target {t} ({target}) on backbone {k} ({backbone})",
                        Manifest(folder.manifest), s,
                        lambda r: f"accuracy {r.get('target_acc')} (baseline {r.get('baseline_acc')}), width "
                                  f"x{r.get('width')}", folder.step_resumes(), epochs_of=epochs(s),
                        inputs=with_baseline({"data": run.data_config(target), "train_per_class": 0}, accs, target))
    return pair_states(run, layout, s.STAGE, state)


STAGE_STATES = {"baseline": baseline_states, "wo_backbone": backbone_states,
                "select_pruning_ratio_of_backbone": choice_states, "find_backbone": search_states,
                "transfer_kv": transfer_states, "w_backbone_MM": target_states}


def run_states(run, env):
    """{stage: [TaskState]} of every stage of run_all, in order, with the settings the scripts give now."""
    out = {}
    for stage in RUN_ALL:
        s = stage_settings(stage, env)
        out[stage] = list(STAGE_STATES[stage](run, s, run.layout(s.arch)))
    return out


def run_holder(run):
    """The line saying which live run holds the folder's run lock (utils/pipeline/runlock.py), or "" when none does
    (a run that died holds nothing: its record stays, its process is gone)."""
    path = run.layout().run_lock
    record = runlock.holder(path) if path.is_file() else None
    if record is None or not alive(record):
        return ""
    return (f"a run holds this folder: pid {record['pid']} on {record.get('host')} since {runlock.since(record)} "
            f"({record.get('what')})")


def report(run, states):
    """The status as text: a header (and which run holds the folder, if one does), then per stage of run_all (k of
    n) and per other part (the clients) a count of each state and one line per task."""
    lines = [f"status of '{run.cfg.name}' in {run.work_dir} ({time.strftime('%Y-%m-%d %H:%M:%S')})"]
    holder = run_holder(run)
    if holder:
        lines.append(holder)
    stages = [stage for stage in states if stage in RUN_ALL]
    for stage, tasks in states.items():
        counts = ", ".join(f"{sum(t.state == state for t in tasks)} {state}" for state in STATES
                           if any(t.state == state for t in tasks))
        redo = sum(bool(t.redo) for t in tasks)
        name = f"stage {stages.index(stage) + 1}/{len(stages)} {stage}" if stage in stages else stage
        lines.append(f"{name}: {counts}{f'; {redo} would be redone' if redo else ''}")
        width = max((len(t.task) for t in tasks), default=0)
        for t in tasks:
            text = f"  {t.task:<{width}}  {t.state:<11}  {t.detail}"
            lines.append(text.rstrip() + (f"; would be redone: {t.redo}" if t.redo else ""))
    return "\n".join(lines)
