"""The Pick-a-back stage graph: every stage of a dataset config, in order, each in one process.

    baseline                            an independent model per task: the criterion of every later stage
    wo_backbone                         CPG per task from scratch (widening while below the baseline), then the
                                        gradual-pruning schedule, recording accuracy per sparsity
    select_pruning_ratio_of_backbone    per task, the largest ratio within ALLOW_ACC_LOSS of the baseline
    find_backbone                       per target, the most similar other task's baseline (ModelDiff)
    transfer_kv                         the target's input adapter and k/v projection grafted into its backbone
    w_backbone_MM                       the target trained with CPG on its backbone (widening while below baseline)

Each stage is a function `stage(run, s)` over the tasks of `run` with the settings `s` (the variables at the top of
run_pickaback/<stage>.sh). A stage first checks every input it needs for every task, then works task by task:
- A task whose manifest (utils/layout.py) records the same settings and input fingerprints, and whose files all
  exist, is skipped with one line. Other settings, other inputs or FORCE=1 redo it.
- A task being redone is marked unfinished first; its old outputs are replaced as the new ones are written, and its
  manifest is written last, naming exactly the files the next stage reads.
- Each task is seeded by itself (utils.trainer.begin), so its result never depends on the tasks before it.
Decisions are return values (utils.trainer.Outcome); user mistakes are UserErrors naming the stage and the task.
"""
import hashlib
import json
import logging
import os
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from models.build import Network
from packnet_models import baseline_network
from packnet_models_pickaback.kv_transfer import read_pairs, transfer
from utils.checkpoint import (CHECKPOINT_RE, atomic_write, baseline_accuracy, load_checkpoint, locked, read_json,
                              read_record, update_json)
from utils.config import REPO_ROOT, load_dataset_config
from utils.data import model_config
from utils.distributed import is_main_process
from utils.errors import UserError
from utils.layout import Layout, Manifest, SearchManifest, file_digest, sparsity_key, task_checkpoint
from utils.runtime import LOG_FORMAT, load_task, select_device
from utils.trainer import (RECIPES, Outcome, Resume, begin, cpg_finetune, cpg_prune, finish_task, save_task_checkpoint,
                           start_cpg_task, train_baseline)
from utils_pickaback.backbone_search import plan, run_search, target_ids
from utils_pickaback.modeldiff import ProfileSettings
from utils_pickaback.results import RESULT_COLUMNS, SELECTION_RULES, TABLE_COLUMNS, read_rows, write_results

log = logging.getLogger("root")
SCRIPTS = REPO_ROOT / "run_pickaback"


def floats(text):
    return [float(v) for v in str(text).split()]


def ints(text):
    return [int(v) for v in str(text).split()]


def switch(text):
    """1/0 (also true/false, yes/no, on/off) as a bool."""
    value = str(text).strip().lower()
    if value not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
        raise ValueError(text)
    return value in ("1", "true", "yes", "on")


def recipe(text):
    if text not in RECIPES:
        raise ValueError(text)
    return text


# Each stage's variables, with the original's names; their defaults are read from the top of its script, so a user
# edits them in one place. The environment overrides the script.
VARIABLES = {
    "baseline": dict(ARCH=str, FINETUNE_EPOCHS=int, NUM_CLASSES=int, INIT_LR=float, WEIGHT_DECAY=float,
                     BATCH_SIZE=int, SEED=int, DEVICE=str, AMP=switch, RECIPE=recipe),
    "wo_backbone": dict(ARCH=str, EPOCHS=int, NUM_CLASSES=int, INIT_LR=float, PRUNING_LR=float, LR_MASK=float,
                        WEIGHT_DECAY=float, BATCH_SIZE=int, NETWORK_WIDTH_MULTIPLIER=float,
                        MAX_NETWORK_WIDTH_MULTIPLIER=float, WIDTH_STEP=float, NR_EPOCH_FOR_EACH_PRUNE=int,
                        PRUNING_FREQUENCY=int, PRUNING_INTERVAL=int, PRUNING_SCHEDULE=floats, TOTAL_NUM_TASKS=int,
                        SEED=int, DEVICE=str, AMP=switch, RECIPE=recipe),
    "select_pruning_ratio_of_backbone": dict(ARCH=str, ALLOW_ACC_LOSS=float),
    "find_backbone": dict(ARCH=str, TARGET_ID=str, CANDIDATES=str, SELECTION=str, PROFILE_SIZE=int, EPSILON=float,
                          ITERATIONS=int, SEED=int, DEVICE=str, AMP=switch),
    "transfer_kv": dict(ARCH=str, CSV_PATH=str),
    "w_backbone_MM": dict(ARCH=str, EPOCHS=int, NUM_CLASSES=int, INIT_LR=float, LR_MASK=float, WEIGHT_DECAY=float,
                          BATCH_SIZE=int, NETWORK_WIDTH_MULTIPLIER=float, MAX_NETWORK_WIDTH_MULTIPLIER=float,
                          WIDTH_STEP=float, TOTAL_NUM_TASKS=int, SEED=int, DEVICE=str, AMP=switch, RECIPE=recipe,
                          RESULT_CSV=str),
    # not a stage of run_all: the experiment that compares selection rules (run_pickaback/compare_selection.sh)
    "compare_selection": dict(ARCH=str, SELECTIONS=str.split, SEEDS=ints, TARGET_TRAIN_PER_CLASS=int),
}
STAGES = ("baseline", "wo_backbone", "select_pruning_ratio_of_backbone", "find_backbone", "transfer_kv",
          "w_backbone_MM")
ASSIGNMENT = re.compile(r'^([A-Z_]+)="\$\{\1:-([^}]*)\}"\s*(#.*)?$')     # NAME="${NAME:-default}"


def script_defaults(stage):
    """{variable: default} as written at the top of run_pickaback/<stage>.sh."""
    script = SCRIPTS / f"{stage}.sh"
    found = {}
    for line in script.read_text().splitlines():
        if m := ASSIGNMENT.match(line.strip()):
            found[m.group(1)] = m.group(2)
    missing = [name for name in VARIABLES[stage] if name not in found]
    if missing:
        raise UserError(f"{script} does not set {', '.join(missing)} in the form NAME=\"${{NAME:-value}}\": "
                        f"restore those lines.")
    return found


def stage_settings(stage, env=None):
    """The settings of a stage: the script's variables, overridden by the environment. Keys are lower case."""
    env = os.environ if env is None else env
    values = {}
    for name, kind in VARIABLES[stage].items():
        text = env.get(name) or script_defaults(stage)[name]
        try:
            values[name.lower()] = kind(text)
        except ValueError:
            expected = {floats: "a list of numbers", ints: "a list of numbers", switch: "1 or 0",
                        recipe: " or ".join(RECIPES)}.get(kind, f"a {kind.__name__}")
            raise UserError(f"{name}={text!r} (run_pickaback/{stage}.sh or the environment) is not {expected}: fix "
                            f"the value.") from None
    if values["arch"] != "perceiver_io":
        raise UserError(f"ARCH={values['arch']} is not an architecture of this repository: use perceiver_io.")
    return SimpleNamespace(**values)


@dataclass
class Run:
    """One dataset config's run: its config, where its files live, which tasks, whether to redo finished ones."""
    cfg: object
    work_dir: Path
    task_ids: list = field(default_factory=list)
    force: bool = False

    @classmethod
    def from_environment(cls, config, env=None):
        env = os.environ if env is None else env
        cfg = load_dataset_config(config, env.get("MMPAB_DATA_ROOT"), check_folders=False)
        work_dir = Path(env.get("MMPAB_WORK_DIR") or REPO_ROOT)
        ids = target_ids(cfg, env.get("TASK_IDS") or "all")
        return cls(cfg, work_dir, ids, env.get("FORCE", "0") not in ("", "0"))

    def layout(self, arch):
        return Layout(self.work_dir, self.cfg.name, arch)

    def tasks(self):
        return [(t, self.cfg.task_name(t)) for t in self.task_ids]

    def data_settings(self, group):
        """What a task's data depends on: the config (without its task list) and the files' names and sizes."""
        raw = {k: v for k, v in self.cfg.raw.items() if k not in ("DATASETS", "num_groups", "modality")}
        listing = []
        for split in ("train", "test"):
            folder = self.cfg.task_folder(group, split)
            if folder.is_dir():
                listing += sorted(f"{p.relative_to(folder)}:{p.stat().st_size}" for p in folder.rglob("*")
                                  if p.is_file())
        digest = hashlib.sha256("\n".join(listing).encode()).hexdigest()
        return {"config": raw, "model": self.cfg.model, "modality": self.cfg.modality(group), "files": digest}


@contextmanager
def task_log(path):
    """Also append the log to `path` (the task's train.log, as the original) while a task is worked on."""
    if not is_main_process():                                     # under torchrun only rank 0 writes logs
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def start_over(manifest, folder):
    """Mark a task unfinished before its outputs are replaced, and remove temporary files that an interrupted
    earlier attempt left behind (atomic writes rename a temporary file into place). Its resume state stays: the
    training steps continue from it when its settings match."""
    manifest.clear()
    if is_main_process():
        for tmp in Path(folder).rglob(".*.tmp"):
            tmp.unlink()


def skip(run, manifest, settings, what):
    if not run.force and manifest.finished(settings):
        log.info(f"{what}: finished with these settings, skipped (FORCE=1 redoes it)")
        return True
    return False


@contextmanager
def failing_task(stage, what):
    """A user error inside a task names the stage and the task."""
    try:
        yield
    except UserError as e:
        raise UserError(f"stage {stage}, {what}: {e}", exit_code=e.exit_code) from None


def write_json(path, data):
    atomic_write(path, lambda f: f.write(json.dumps(data).encode()))


def training_settings(s, names):
    """The settings a task's manifest records. AMP and RECIPE came after the original's variables: they are
    recorded only when not the default, so that work finished before they existed is still recognised."""
    out = {n: getattr(s, n) for n in names}
    for name, default in (("amp", False), ("recipe", "original")):
        if getattr(s, name, default) != default:
            out[name] = getattr(s, name)
    return out


# ---- 1. baseline --------------------------------------------------------------------------------------------------
def baseline(run, s):
    """Train an independent single-task model per task; its accuracy is the criterion of every later stage."""
    layout = run.layout(s.arch)
    acc_file = layout.baseline_acc_file
    read_json(acc_file)                                           # a broken accuracy file stops us before training
    for n, (task_id, group) in enumerate(run.tasks(), 1):
        what = f"task {task_id} ({group})"
        folder = layout.baseline_dir(group)
        manifest = Manifest(folder / "stage.json")
        settings = {"stage": "baseline", **training_settings(s, ("finetune_epochs", "num_classes", "init_lr",
                                                                 "weight_decay", "batch_size", "seed")),
                    "data": run.data_settings(group)}
        recorded = manifest.results().get("accuracy")
        if recorded is not None and (read_json(acc_file) or {}).get(group) == recorded and \
                skip(run, manifest, settings, f"baseline {what}"):
            continue
        log.info(f"== baseline: {run.cfg.name} task {task_id} ({n}/{len(run.task_ids)}: {group}, "
                 f"{run.cfg.modality(group)})")
        with failing_task("baseline", what), task_log(folder / "train.log"):
            data = load_task(run.cfg, group, batch_size=s.batch_size, seed=s.seed, device=s.device,
                             num_classes=s.num_classes, amp=s.amp)
            start_over(manifest, folder)
            begin(data, s.seed)
            net = baseline_network(run.cfg, data)
            resume = Resume(folder / "resume.pt", settings)
            acc = train_baseline(net, data, epochs=s.finetune_epochs, lr=s.init_lr, weight_decay=s.weight_decay,
                                 seed=s.seed, recipe=s.recipe, resume=resume)
            finish_task(net, group)
            path = save_task_checkpoint(net, run.cfg, folder, s.finetune_epochs)
            update_json(acc_file, {group: "%.4f" % acc})
            manifest.write(settings, {"checkpoint": path}, {"accuracy": "%.4f" % acc})
            resume.clear()
            log.info(f"saved {path}; {acc_file.name}[{group}] = {acc:.4f}")


# ---- 2. CPG backbones: finetune with growth, then the pruning schedule ---------------------------------------------
def finetune_with_growth(make_net, data, s, baseline_acc, csv_path, resume=None):
    """CPG-train the task at width NETWORK_WIDTH_MULTIPLIER; while it stays below the criterion, start again
    WIDTH_STEP wider, up to MAX_NETWORK_WIDTH_MULTIPLIER. Returns (net, outcome, accuracy, width). A resume state
    saved at some width continues there (the narrower attempts had ended in widening)."""
    width = s.network_width_multiplier
    if width > s.max_network_width_multiplier + 1e-9:
        raise UserError(f"NETWORK_WIDTH_MULTIPLIER={width} exceeds MAX_NETWORK_WIDTH_MULTIPLIER="
                        f"{s.max_network_width_multiplier}: lower it or raise the maximum.")
    saved = resume.load() if resume else None
    if saved and saved["phase"]["kind"] == "finetune":
        width = saved["phase"]["width"]
    while True:
        begin(data, s.seed)                                       # the initial weights depend on the seed only
        net = make_net()
        width = start_cpg_task(net, data, width)
        log.info(f"task {data.task} ({data.modality}) as task {net.task_id(data.task)} of {net.history} on "
                 f"{data.device}; width x{width}, {net.num_parameters()} parameters")
        outcome, acc = cpg_finetune(net, data, epochs=s.epochs, lr=s.init_lr, lr_mask=s.lr_mask, recipe=s.recipe,
                                    weight_decay=s.weight_decay, seed=s.seed, baseline=baseline_acc, width=width,
                                    max_width=s.max_network_width_multiplier, csv_path=csv_path, resume=resume)
        if outcome is not Outcome.EXPAND:
            return net, outcome, acc, width
        width = round(width + s.width_step, 4)
        log.info(f"expanding the network to width x{width}")


def backbone_jobs(run, layout):
    """[(task id, group, baseline accuracy)] of the backbone stage, every task's input checked before any work."""
    jobs = []
    for task_id, group in run.tasks():
        with failing_task("wo_backbone", f"task {task_id} ({group})"):
            jobs.append((task_id, group, baseline_accuracy(layout.baseline_acc_file, group)))
    return jobs


def wo_backbone(run, s):
    """CPG-train every task from scratch, then prune it gradually along PRUNING_SCHEDULE, recording the accuracy
    at every sparsity in record.txt."""
    layout = run.layout(s.arch)
    jobs = backbone_jobs(run, layout)
    names = ("epochs", "num_classes", "init_lr", "pruning_lr", "lr_mask", "weight_decay", "batch_size",
             "network_width_multiplier", "max_network_width_multiplier", "width_step", "nr_epoch_for_each_prune",
             "pruning_frequency", "pruning_interval", "pruning_schedule", "total_num_tasks", "seed")
    for n, (task_id, group, criterion) in enumerate(jobs, 1):
        what = f"task {task_id} ({group})"
        manifest = Manifest(layout.backbone_dir(group) / "stage.json")
        settings = {"stage": "wo_backbone", **training_settings(s, names), "baseline": criterion,
                    "data": run.data_settings(group)}
        if skip(run, manifest, settings, f"wo_backbone {what}"):
            continue
        log.info(f"== wo_backbone: {run.cfg.name} task {task_id} ({n}/{len(jobs)}: {group}, "
                 f"{run.cfg.modality(group)})")
        with failing_task("wo_backbone", what), task_log(layout.train_log(group)):
            data = load_task(run.cfg, group, batch_size=s.batch_size, seed=s.seed, device=s.device,
                             num_classes=s.num_classes, amp=s.amp)
            start_over(manifest, layout.backbone_dir(group))
            train_backbone(run, layout, s, data, criterion, manifest, settings)


def train_backbone(run, layout, s, data, criterion, manifest, settings):
    """Finetune (with growth), then the pruning schedule; each step's checkpoint and the record are written as the
    step ends. A resume state (from a run killed inside this task) continues at the step and epoch it was saved."""
    group = data.task
    csv_path = layout.train_log(group).with_name("train.csv")
    resume = Resume(layout.backbone_dir(group) / "resume.pt", settings)
    saved = resume.load()
    if saved and saved["phase"]["kind"] == "prune":               # finetuning and earlier pruning steps are done
        net = Network.from_checkpoint(saved["net"])
        progress = saved["progress"]
        record, width, outcome = dict(progress["record"]), progress["width"], Outcome.DONE
        outputs = {k: Path(v) for k, v in progress["outputs"].items()}
        first = progress["index"]
    else:
        net, outcome, acc, width = finetune_with_growth(lambda: Network.new(model_config(run.cfg)), data, s,
                                                        criterion, csv_path, resume)
        record = {"0.0": round(acc, 4)}
        finish_task(net, group)
        outputs = {"0.0": save_task_checkpoint(net, run.cfg, layout.scratch_dir(group), s.epochs),
                   "record": layout.record(group)}
        write_json(layout.record(group), record)
        first = 0
    if outcome is Outcome.NOTHING_TO_PRUNE:
        log.info(f"{group} owns no weights: nothing to prune")
    else:
        schedule = s.pruning_schedule
        for index in range(first, len(schedule)):
            start, end = (schedule[index - 1] if index else 0.0), schedule[index]
            resume.progress = {"record": record, "width": width, "index": index,
                               "outputs": {k: str(v) for k, v in outputs.items()}}
            outcome, acc = cpg_prune(net, data, epochs=s.nr_epoch_for_each_prune, lr=s.pruning_lr,
                                     weight_decay=s.weight_decay, seed=s.seed, initial=start, target=end,
                                     frequency=s.pruning_frequency, interval=s.pruning_interval,
                                     baseline=criterion, max_width=s.max_network_width_multiplier,
                                     total_num_tasks=s.total_num_tasks, unpruned_acc=record["0.0"],
                                     csv_path=csv_path, resume=resume)
            if acc is None:
                log.info(f"stop pruning {group} at sparsity {start}")
                break
            key = sparsity_key(end)
            record[key] = round(acc, 4)
            finish_task(net, group)
            outputs[key] = save_task_checkpoint(net, run.cfg, layout.prune_stage_dir(group, end),
                                                s.nr_epoch_for_each_prune)
            write_json(layout.record(group), record)
            if outcome is Outcome.STOP_PRUNING:
                log.info(f"stop pruning {group} at sparsity {end}")
                break
    remove_stale_stages(layout.gradual_prune_dir(group), outputs)
    manifest.write(settings, outputs, {"record": record, "width": width})
    resume.clear()
    log.info(f"record of {group}: {json.dumps(record)}")


def remove_stale_stages(gradual_prune, outputs):
    """Pruning-stage checkpoints of earlier runs that this run did not write (e.g. a longer schedule)."""
    keep = {Path(p).resolve() for p in outputs.values()}
    for folder in (Path(gradual_prune).iterdir() if is_main_process() else ()):
        if folder.is_dir() and re.fullmatch(r"\d+\.\d+", folder.name):
            for f in folder.iterdir():
                if CHECKPOINT_RE.match(f.name) and f.resolve() not in keep:
                    f.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()


# ---- 3. pruning-ratio choice -------------------------------------------------------------------------------------
def choose_ratio(record, criterion, allow_acc_loss, at_max_width):
    """The largest recorded ratio whose accuracy is within `allow_acc_loss` of the criterion, or None (scratch).
    The criterion is the baseline accuracy, except when the backbone is at its maximum width and its unpruned
    accuracy is below the baseline: then no ratio could reach the baseline, and pruning may cost at most
    `allow_acc_loss` of what the task reached (the original chose 0.95 outright)."""
    record = dict(record)
    acc0 = float(record.pop("0.0", 0.0))
    if at_max_width and acc0 < criterion:
        criterion = acc0
    for key in sorted(record, key=float, reverse=True):
        if float(record[key]) + allow_acc_loss >= criterion:
            return key
    return None


def place_choice(source, gradual_prune):
    """Copy the chosen checkpoint into gradual_prune/ (atomically), then remove an earlier choice and the k/v
    files made from it. Returns the placed path."""
    placed = Path(gradual_prune) / Path(source).name
    atomic_write(placed, lambda f: f.write(Path(source).read_bytes()))
    for old in (Path(gradual_prune).iterdir() if is_main_process() else ()):
        if old.is_file() and old != placed and (CHECKPOINT_RE.match(old.name) or "_kv_transfer_" in old.name):
            old.unlink()
    return placed


def backbone_width(checkpoint, group):
    info = load_checkpoint(checkpoint).get("shared_layer_info", {}).get(group, {})
    return float(info.get("network_width_multiplier", 1.0))


def select_pruning_ratio_of_backbone(run, s):
    """Per task: choose the backbone's pruning ratio from its record and place that checkpoint in gradual_prune/."""
    layout = run.layout(s.arch)
    jobs = []
    for task_id, group in run.tasks():                            # check every input before changing anything
        with failing_task("select_pruning_ratio_of_backbone", f"task {task_id} ({group})"):
            backbone = Manifest(layout.backbone_dir(group) / "stage.json")
            if not backbone.read() or not all(p.is_file() for p in backbone.outputs().values()):
                raise UserError(f"the CPG backbone in {layout.backbone_dir(group)} is not finished: run "
                                f"run_pickaback/wo_backbone.sh {run.cfg.name} first.")
            record = read_record(layout.record(group))
            criterion = baseline_accuracy(layout.baseline_acc_file, group)
            width = backbone_width(backbone.output("0.0"), group)
            max_width = float(backbone.read()["settings"]["max_network_width_multiplier"])
        settings = {"stage": "select_pruning_ratio_of_backbone", "allow_acc_loss": s.allow_acc_loss,
                    "record": record, "baseline": criterion, "width": width, "max_width": max_width,
                    "backbone": file_digest(backbone.path)}
        jobs.append((task_id, group, backbone, record, criterion, width >= max_width - 1e-9, settings))
    for task_id, group, backbone, record, criterion, at_max, settings in jobs:
        manifest = Manifest(layout.choice_manifest(group))
        if skip(run, manifest, settings, f"select_pruning_ratio_of_backbone task {task_id} ({group})"):
            continue
        with task_log(layout.train_log(group)):
            manifest.clear()
            key = choose_ratio(record, criterion, s.allow_acc_loss, at_max)
            if key is None:
                log.info("We select scratch")
            placed = place_choice(backbone.output(key or "0.0"), layout.gradual_prune_dir(group))
            log.info(f"We choose pruning ratio {key or '0.0'}")
            log.info(f"{group}: {placed} (record {record}, criterion {criterion})")
            manifest.write(settings, {"checkpoint": placed}, {"ratio": key or "0.0"})


def chosen_backbone(run, layout, group):
    """The checkpoint the chooser placed for `group`; a UserError naming the stages to run when there is none."""
    return task_checkpoint(layout.gradual_prune_dir(group),
                           f"run run_pickaback/wo_backbone.sh {run.cfg.name} and then "
                           f"run_pickaback/select_pruning_ratio_of_backbone.sh {run.cfg.name} first",
                           manifest=layout.choice_manifest(group))


# ---- 4. backbone search ------------------------------------------------------------------------------------------
def search_plan(run, layout, s):
    """(targets, {target: candidates}, {task id: baseline checkpoint}) of the search, every input checked: the
    selection rule, the baselines, and both result CSVs (they must take the new rows before the search runs)."""
    if s.selection not in SELECTION_RULES:
        raise UserError(f"SELECTION={s.selection} is not one of {', '.join(SELECTION_RULES)}.")
    targets = target_ids(run.cfg, s.target_id) if s.target_id != "all" else run.task_ids
    with failing_task("find_backbone", f"targets {targets}"):
        candidates_of, checkpoints = plan(run.cfg, layout, targets, s.candidates)
        for path, columns in ((layout.result_csv, RESULT_COLUMNS), (layout.table_csv, TABLE_COLUMNS)):
            read_rows(path, columns, len(run.cfg.groups))
    return targets, candidates_of, checkpoints


def find_backbone(run, s):
    """Per target, score every candidate's baseline with ModelDiff and pick the backbone (SELECTION)."""
    layout = run.layout(s.arch)
    targets, candidates_of, checkpoints = search_plan(run, layout, s)
    settings_of = {t: {"stage": "find_backbone", "candidates": candidates_of[t], "selection": s.selection,
                       **training_settings(s, ("profile_size", "epsilon", "iterations", "seed")),
                       "models": {k: file_digest(checkpoints[k]) for k in [t, *candidates_of[t]]}}
                   for t in targets}
    todo = [t for t in targets if not skip(run, SearchManifest(layout.search_manifest, t), settings_of[t],
                                           f"find_backbone target {t}")]
    if not todo:
        return
    with failing_task("find_backbone", f"targets {todo}"), task_log(layout.stage_log("find_backbone")):
        device = select_device(s.device, s.amp)
        profile = ProfileSettings(s.profile_size, s.epsilon, s.iterations, s.seed)
        log.info(f"== find_backbone: '{run.cfg.name}' targets {todo}, candidates {s.candidates}, selection "
                 f"{s.selection}, {profile}, device {device}")
        rows, picks = run_search(run.cfg, {t: candidates_of[t] for t in todo}, checkpoints, profile, s.selection,
                                 device, amp=s.amp)
        result, table = write_results(layout.result_csv, layout.table_csv, rows, picks, len(run.cfg.groups))
        for t in todo:
            SearchManifest(layout.search_manifest, t).write(settings_of[t], {"result": result, "table": table},
                                                            {"backbone": picks[t]})
        log.info(f"backbones: {picks}")


# ---- 5. k/v transfer ---------------------------------------------------------------------------------------------
def target_source(run, layout, group):
    """The target's own earlier model: its chosen CPG backbone if there is one, else its baseline."""
    try:
        return chosen_backbone(run, layout, group), "CPG backbone"
    except UserError:
        pass
    return task_checkpoint(layout.baseline_dir(group), f"task {group} has neither a CPG backbone nor a baseline: "
                           f"run run_pickaback/baseline.sh {run.cfg.name} first"), "baseline"


def selected_pairs(run, csv_path):
    pairs = read_pairs(csv_path, run.cfg)
    return [(t, k) for t, k in pairs if t in run.task_ids]


def kv_jobs(run, layout, pairs):
    """[(target id, backbone id, the backbone's chosen checkpoint, (the target's own model, its stage) or (None,
    None) for a same-modality pair)], every pair checked before any file is written."""
    jobs = []
    for t, k in pairs:
        target, backbone = run.cfg.task_name(t), run.cfg.task_name(k)
        with failing_task("transfer_kv", f"target {t} ({target}) on backbone {k} ({backbone})"):
            k_path = chosen_backbone(run, layout, backbone)
            cross = run.cfg.modality(target) != run.cfg.modality(backbone)
            jobs.append((t, k, k_path, target_source(run, layout, target) if cross else (None, None)))
    return jobs


def transfer_kv(run, s, pairs=None):
    """For every (target, backbone) row of the search result (or of `pairs`), write the backbone's chosen
    checkpoint with the target's reader grafted in (cross-modal pairs) or unchanged (same modality)."""
    layout = run.layout(s.arch)
    csv_path = Path(s.csv_path) if s.csv_path else layout.result_csv
    if pairs is None:
        with failing_task("transfer_kv", str(csv_path)):
            pairs = selected_pairs(run, csv_path)
    for t, k, k_path, source in kv_jobs(run, layout, pairs):
        settings = {"stage": "transfer_kv", "target": t, "backbone": k, "backbone_checkpoint": file_digest(k_path),
                    "source": file_digest(source[0]) if source[0] else None}
        manifest = Manifest(layout.kv_manifest(run.cfg.task_name(k), t))
        if skip(run, manifest, settings, f"transfer_kv target {t} on backbone {k}"):
            continue
        with failing_task("transfer_kv", f"target {t} on backbone {k}"), task_log(layout.stage_log("transfer_kv")):
            manifest.clear()
            out = layout.kv_transfer_file(k_path, t)
            copied = transfer(run.cfg, t, k, k_path, source, out)
            manifest.write(settings, {"checkpoint": out}, {"copied": copied})


# ---- 6. targets on their backbones -------------------------------------------------------------------------------
def target_start(run, layout, t, backbone):
    """The k/v-transferred backbone made for target t, else the chosen backbone checkpoint."""
    manifest = Manifest(layout.kv_manifest(backbone, t))
    if manifest.path.is_file():
        path = manifest.output("checkpoint")
        if path is None or not path.is_file():
            raise UserError(f"{manifest.path} names a k/v transfer file that does not exist: rerun "
                            f"run_pickaback/transfer_kv.sh {run.cfg.name}.")
        return path
    return chosen_backbone(run, layout, backbone)


def record_target(out, row):
    """Put the row of a (target, backbone) pair in w_backbone_<cfg>_acc.csv, replacing an earlier one."""
    with locked(out):
        table = pd.read_csv(out) if out.is_file() else pd.DataFrame(columns=list(row))
        table = table[~((table.target == row["target"]) & (table.backbone == row["backbone"]))]
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True) if len(table) else pd.DataFrame([row])
        text = table.to_csv(index=False, lineterminator="\n")
        atomic_write(out, lambda f: f.write(text.encode()))
    return table


TARGET_SETTINGS = ("epochs", "num_classes", "init_lr", "lr_mask", "weight_decay", "batch_size",
                   "network_width_multiplier", "max_network_width_multiplier", "width_step", "total_num_tasks", "seed")


def train_target(run, s, target, start, criterion, out, what, train_per_class=0):
    """CPG-train `target` on the checkpoint `start` (None: alone, from scratch) into the folder `out`, widening while
    below its baseline, unless `out` already holds this task finished with the same settings. Returns the result
    row {target, backbone, width, target_acc, baseline_acc}."""
    settings = {"stage": "w_backbone_MM", **training_settings(s, TARGET_SETTINGS), "baseline": criterion,
                "start": file_digest(start) if start else None, "data": run.data_settings(target),
                "train_per_class": train_per_class}
    manifest = Manifest(out / "stage.json")
    if skip(run, manifest, settings, what):
        return manifest.results()
    log.info(f"== {what}, from {start or 'scratch'}")
    with failing_task("w_backbone_MM", what), task_log(out / "train.log"):
        data = load_task(run.cfg, target, batch_size=s.batch_size, seed=s.seed, device=s.device,
                         num_classes=s.num_classes, train_per_class=train_per_class, amp=s.amp)
        start_over(manifest, out)
        make_net = (lambda: Network.load(start, model_config(run.cfg))) if start else \
            (lambda: Network.new(model_config(run.cfg)))
        resume = Resume(out / "resume.pt", settings)
        net, _, acc, width = finetune_with_growth(make_net, data, s, criterion, out / "train.csv", resume)
        finish_task(net, target)
        path = save_task_checkpoint(net, run.cfg, out / "scratch", s.epochs)
        record = out / "gradual_prune" / "record.txt"
        write_json(record, {"0.0": round(acc, 4)})
        row = {"target": target, "backbone": net.history[0] if start else "", "width": width,
               "target_acc": round(acc, 4), "baseline_acc": criterion}
        manifest.write(settings, {"checkpoint": path, "record": record}, row)
        resume.clear()
        log.info(f"saved {path}")
    return row


def target_jobs(run, layout, s):
    """[(target id, backbone id, target, backbone, baseline accuracy, start checkpoint)] of the rows of the search
    result that TASK_IDS selects, every row checked before any training."""
    csv_path = Path(s.result_csv) if s.result_csv else layout.result_csv
    with failing_task("w_backbone_MM", str(csv_path)):
        pairs = selected_pairs(run, csv_path)
    jobs = []
    for t, k in pairs:
        target, backbone = run.cfg.task_name(t), run.cfg.task_name(k)
        with failing_task("w_backbone_MM", f"target {t} ({target}) on backbone {k} ({backbone})"):
            jobs.append((t, k, target, backbone, baseline_accuracy(layout.baseline_acc_file, target),
                         target_start(run, layout, t, backbone)))
    return jobs


def w_backbone_MM(run, s):  # noqa: N802 (the original script's name)
    """CPG-train every target of the search result on its backbone, widening while below its baseline."""
    layout = run.layout(s.arch)
    jobs = target_jobs(run, layout, s)
    for n, (t, k, target, backbone, criterion, start) in enumerate(jobs, 1):
        what = (f"w_backbone_MM target {t} ({n}/{len(jobs)}: {target}, {run.cfg.modality(target)}) on backbone {k} "
                f"({backbone})")
        row = train_target(run, s, target, start, criterion, layout.target_dir(backbone, target), what)
        table = record_target(layout.target_acc_csv, {**row, "backbone": backbone})
        log.info(f"{layout.target_acc_csv.name}:\n{table.to_string(index=False)}")


# ---- does picking pay? the selection rules side by side ----------------------------------------------------------
SELECTIONS = ("similar", "original", "random", "scratch", "oracle")


def rule_picks(table, rule, target, seed):
    """The backbone ids `rule` trains `target` on: one, none (scratch) or every candidate (oracle)."""
    rows = table[table.target_id == target].sort_values("task_id")
    candidates = [int(k) for k in rows.task_id]
    if rule == "scratch":
        return []
    if rule in ("oracle",):
        return candidates
    if rule == "random":
        return [random.Random(f"{seed}-{target}").choice(candidates)]
    return [int(rows.loc[rows[SELECTION_RULES[rule]].idxmax(), "task_id"])]


def compare_selection(run, s, env=None):
    """Train every target under each selection rule and seed, and write one row per (rule, seed, target) to
    logs_perceiver_io/compare_selection_<cfg>.csv. The stages before the target stage are the default run's
    (reused when finished); every (seed, backbone, target) training is done once and shared by the rules that pick
    it, in its own folder apart from the default run's."""
    unknown = [r for r in s.selections if r not in SELECTIONS]
    if unknown or not s.selections or not s.seeds:
        raise UserError(f"SELECTIONS={' '.join(s.selections)} SEEDS={' '.join(map(str, s.seeds))}: give rules from "
                        f"{', '.join(SELECTIONS)} and at least one seed.")
    for name in ("baseline", "wo_backbone", "select_pruning_ratio_of_backbone", "find_backbone"):
        log.info(f"==== stage {name} of '{run.cfg.name}' (reused when finished)")
        STAGE_FUNCTIONS[name](run, stage_settings(name, env))
    layout = run.layout(s.arch)
    target_settings = stage_settings("w_backbone_MM", env)
    table = read_rows(layout.table_csv, TABLE_COLUMNS, len(run.cfg.groups))
    criteria = {t: baseline_accuracy(layout.baseline_acc_file, group) for t, group in run.tasks()}
    plan_of = {(rule, seed, t): rule_picks(table, rule, t, seed)
               for rule in s.selections for seed in s.seeds for t in run.task_ids}
    missing = sorted({t for (rule, _, t), ks in plan_of.items() if rule != "scratch" and not ks})
    if missing:
        raise UserError(f"targets {missing} have no row in {layout.table_csv}: run run_pickaback/find_backbone.sh "
                        f"{run.cfg.name} for them.")
    pairs = sorted({(t, k) for (_, _, t), ks in plan_of.items() for k in ks})
    transfer_kv(run, SimpleNamespace(arch=s.arch, csv_path=None), pairs=pairs)
    # one training per (seed, backbone, target); backbone 0 = none (scratch)
    results, trainings = {}, sorted({(seed, k, t) for (_, seed, t), ks in plan_of.items() for k in (ks or [0])})
    for n, (seed, k, t) in enumerate(trainings, 1):
        target = run.cfg.task_name(t)
        backbone = run.cfg.task_name(k) if k else None
        start = target_start(run, layout, t, backbone) if k else None
        what = (f"compare_selection {n}/{len(trainings)}: seed {seed}, target {t} ({target}) "
                f"{'on backbone ' + str(k) + ' (' + backbone + ')' if k else 'alone'}")
        s_seed = SimpleNamespace(**{**vars(target_settings), "seed": seed})
        results[seed, k, t] = train_target(run, s_seed, target, start, criteria[t],
                                           layout.comparison_dir(seed, backbone or "scratch", target), what,
                                           s.target_train_per_class)
    rows = []
    for (rule, seed, t), ks in plan_of.items():
        done = [results[seed, k, t] for k in (ks or [0])]
        best = max(done, key=lambda r: r["target_acc"])             # one row unless oracle: its best candidate
        tied = sorted(r["backbone"] for r in done if r["target_acc"] == best["target_acc"])
        rows.append({"rule": rule, "seed": seed, "target": run.cfg.task_name(t), "backbone": best["backbone"],
                     "target_acc": best["target_acc"], "baseline_acc": criteria[t], "width": best["width"],
                     "best_backbones": ";".join(tied)})                # the oracle's equally good candidates
    frame = pd.DataFrame(rows)
    text = frame.to_csv(index=False, lineterminator="\n")
    atomic_write(layout.comparison_csv, lambda f: f.write(text.encode()))
    log.info(f"wrote {layout.comparison_csv}\n" +
             frame.groupby("rule", sort=False).target_acc.agg(["mean", "std"]).round(4).to_string())
    return frame


STAGE_FUNCTIONS = {"baseline": baseline, "wo_backbone": wo_backbone,
                   "select_pruning_ratio_of_backbone": select_pruning_ratio_of_backbone,
                   "find_backbone": find_backbone, "transfer_kv": transfer_kv, "w_backbone_MM": w_backbone_MM}


def summary(run, arch="perceiver_io"):
    """The run's results in a few lines: baseline accuracies, backbone picks, targets against their baselines."""
    layout = run.layout(arch)
    lines = [f"baseline accuracies ({layout.baseline_acc_file}): {json.dumps(read_json(layout.baseline_acc_file))}"]
    if layout.result_csv.is_file():
        picks = pd.read_csv(layout.result_csv)
        lines.append(f"backbone picks ({layout.result_csv}): " +
                     ", ".join(f"{t}->{k}" for t, k in zip(picks.target_id, picks.task_id)))
    if layout.target_acc_csv.is_file():
        lines.append(f"targets on their backbones vs baseline ({layout.target_acc_csv}):\n" +
                     pd.read_csv(layout.target_acc_csv).to_string(index=False))
    return "\n".join(lines)



def run_stage(stage, config, env=None):
    """Run one stage (or `all`, every stage in order) of a dataset config, with the settings of its script(s) and
    the environment. With two or more GPUS entries, the independent tasks of baseline, wo_backbone, find_backbone
    and w_backbone_MM run in parallel, one worker per entry (run_parallel); one entry just picks the device."""
    from utils.parallel import PARALLEL_STAGES, entry_device, gpu_entries, run_parallel
    env = os.environ if env is None else env
    run = Run.from_environment(config, env)
    entries = gpu_entries(env)
    if len(entries) == 1:
        env = {**env, "GPUS": "", "DEVICE": entry_device(entries[0])}
    if stage == "compare_selection":
        compare_selection(run, stage_settings(stage, env), env)
        return run
    for name in (STAGES if stage == "all" else (stage,)):
        s = stage_settings(name, env)
        log.info(f"==== stage {name} of '{run.cfg.name}' (tasks {run.task_ids})")
        if len(entries) > 1 and name in PARALLEL_STAGES:
            run_parallel(name, run, s, env, entries)
        else:
            STAGE_FUNCTIONS[name](run, s)
    if stage == "all":
        log.info(summary(run))
    return run
