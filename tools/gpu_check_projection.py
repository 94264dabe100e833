"""The GPU check's projection: the wall time of a full run (run_pickaback/run_all.sh) of a config, from the step
times the check measured, the tasks the run selects (TASK_IDS) with their training and test set sizes counted in the
prepared data (or assumed where the data is not prepared, and said so), and the stages' settings as the stage
scripts read them. Each CPG finetune's widths come from the pipeline's own growth loop
(utils.pipeline.cpg_steps.finetune_with_growth), each pruning stage from the backbone stage's schedule (PruneStep).
"""
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from utils.data import model_config
from utils.errors import UserError
from utils.images import image_samples
from utils.pipeline.context import duration
from utils.pipeline.cpg_steps import FinetuneStep, PruneStep, finetune_with_growth
from utils.pipeline.settings import stage_settings
from utils.trainer import WIDTH_TOLERANCE, Outcome
from utils_pickaback.backbone_search import candidate_ids

PROJECTED_STAGES = ("baseline", "wo_backbone", "find_backbone", "w_backbone_MM")
# Per-class (train, test) sizes assumed where a config's data is not prepared under the data root (prepare it and
# the check counts them): cub as tools/prepare_cub.py splits its 60-image classes 80/20; oxford the mean of the 24
# Oxford-102 classes tools/prepare_oxford.py keeps (imagelabels.mat), split 80/20; mscoco MSCOCO 2017's annotated
# images spread evenly over its 80 categories (rough: the real counts are skewed). A caption task has its images'.
ASSUMED_PER_CLASS = {"cub": (48, 12), "oxford": (115, 29), "mscoco": (1234, 294)}


@dataclass(frozen=True)
class Shape:
    """A task's input shape as the network sees it, with the model config: what one set of step times is for."""
    modality: str
    dims: tuple            # (side,) of an image, (tokens, features) of a text
    model: tuple           # the model config's items, sorted

    @property
    def label(self):
        if self.modality == "image":
            return f"{self.dims[0]}x{self.dims[0]} images"
        return f"{self.dims[0]} tokens x {self.dims[1]} text"


@dataclass(frozen=True)
class TaskSize:
    """One task of a run: its id, group, input shape and the number of training and test samples."""
    task_id: int
    group: str
    shape: Shape
    train: int
    test: int

    @property
    def modality(self):
        return self.shape.modality


@dataclass(frozen=True)
class Workload:
    """What a full run of a config works through: its tasks and where their sizes come from (`source`)."""
    cfg: object
    tasks: list
    source: str


@dataclass(frozen=True)
class StepTimes:
    """Measured seconds for one input shape at one precision: per training sample of the baseline trainer and of the
    CPG trainer ({batch size: seconds}), per evaluated test sample, and per forward pass of 2 samples (the backbone
    search's mutation trials)."""
    baseline: dict
    cpg: dict
    evaluate: float
    forward2: float = 0.0


@dataclass(frozen=True)
class Projection:
    """(typical, worst) epochs summed over every task and stage, wall seconds, and {stage: seconds}."""
    epochs: tuple
    seconds: tuple
    stages: dict


# ---- the tasks and their sizes ---------------------------------------------------------------------------------
def shape_of(cfg, group):
    if cfg.modality(group) == "image":
        dims = (int((cfg.raw.get("resize") or [224])[0]),)
    else:
        config = model_config(cfg)
        dims = (int(config["max_text_length"]), int(config["text_dim"]))
    return Shape(cfg.modality(group), dims, tuple(sorted(cfg.model.items())))


def counted(cfg, group, split):
    """The samples of a task split as the training stages list them (utils.images / utils.data)."""
    from utils.data import text_samples
    folder = cfg.task_folder(group, split)
    return len(text_samples(folder) if cfg.modality(group) == "text" else image_samples(folder)[1])


def workload(cfg, task_ids):
    """The Workload of the tasks `task_ids` of config `cfg`: their sizes counted in the prepared data when every
    task's folders exist, else ASSUMED_PER_CLASS (a UserError for a config without them)."""
    groups = [cfg.task_name(t) for t in task_ids]
    if all(cfg.task_folder(g, split).is_dir() for g in groups for split in ("train", "test")):
        sizes = {g: (counted(cfg, g, "train"), counted(cfg, g, "test")) for g in groups}
        source = f"counted in the prepared data under {cfg.data_root}"
    elif cfg.name in ASSUMED_PER_CLASS:
        train, test = ASSUMED_PER_CLASS[cfg.name]
        sizes = {g: (train * cfg.num_classes, test * cfg.num_classes) for g in groups}
        source = (f"assumed: {train} train / {test} test per class x {cfg.num_classes} classes, as no prepared data "
                  f"is under {cfg.data_root}")
    else:
        raise UserError(f"config '{cfg.name}' has no prepared data under {cfg.data_root} and no assumed sizes in "
                        f"tools/gpu_check_projection.py: prepare its data, or leave it out of --configs.")
    return Workload(cfg, [TaskSize(t, g, shape_of(cfg, g), *sizes[g]) for t, g in zip(task_ids, groups, strict=True)],
                    source)


# ---- the projection: the stages' steps priced at the measured step times ------------------------------------------
def columns(env, fast_epochs):
    """{column name: {stage: settings}} of the projection's four columns, as the stage scripts read their variables
    (`env` over the scripts' defaults; a UserError names a bad one): with AMP off and the original recipe, with AMP=1,
    with RECIPE=fast (FINETUNE_EPOCHS and EPOCHS = `fast_epochs`), and with both."""
    fast = {"RECIPE": "fast", "FINETUNE_EPOCHS": str(fast_epochs), "EPOCHS": str(fast_epochs)}
    variants = {"default": {**env, "AMP": "0", "RECIPE": "original"},
                "AMP=1": {**env, "AMP": "1", "RECIPE": "original"},
                "RECIPE=fast": {**env, "AMP": "0", **fast},
                "AMP=1 + RECIPE=fast": {**env, "AMP": "1", **fast}}
    return {name: settings_of(v) for name, v in variants.items()}


def settings_of(env):
    """{stage: settings} of the projected stages for the environment `env`."""
    return {stage: stage_settings(stage, env) for stage in PROJECTED_STAGES}


def per_sample(table, batch):
    """The seconds per sample at `batch` of `table` ({batch size: seconds}): the nearest measured batch size (by
    ratio) where that one was not measured."""
    if batch in table:
        return table[batch]
    return table[min(table, key=lambda b: (max(b, batch) / min(b, batch), b))]


# The growth loop seeds the data's loader before each attempt; the projection's attempts train nothing.
NO_DATA = SimpleNamespace(train_loader=SimpleNamespace(generator=torch.Generator()))
NO_RESUME = SimpleNamespace(load=lambda: None)


def tried_widths(s, below_baseline):
    """The widths a CPG finetune with stage settings `s` tries, through the pipeline's growth loop: one when the task
    reaches its baseline at once (typical); every width step up to the max when it stays below (worst), where the
    trainer stops widening at the max width."""
    tried = []

    def attempt(net, data, step, width, *_):
        tried.append(width)
        widen = below_baseline and width < step.max_width - WIDTH_TOLERANCE
        return (Outcome.EXPAND if widen else Outcome.DONE), 0.0, width

    finetune_with_growth(lambda: None, NO_DATA, FinetuneStep.of(s), s.network_width_multiplier, s.width_step,
                         baseline=1.0, csv_path=None, resume=NO_RESUME, finetune=attempt)
    return tried


def prune_steps(s):
    """The backbone stage's gradual-pruning stages of settings `s`: 0 -> first sparsity -> ... -> last."""
    ends = list(s.pruning_schedule)
    return [PruneStep.of(s, start, end) for start, end in zip([0.0] + ends[:-1], ends, strict=True)]


def project(work, settings, times, save_s=0.0, workers=1):
    """The projected epochs and wall seconds of run_all over the Workload `work` with `settings` ({stage: settings}
    of PROJECTED_STAGES), `times` ({(Shape, amp): StepTimes}; each stage's AMP picks its times; a KeyError where
    none were measured), `save_s` seconds per resume state or checkpoint written, and `workers` GPUS workers sharing
    each stage's tasks (a stage then takes max(its total / workers, its longest task)).

    An epoch is the task's training set at the step's batch size, its test set and one resume state. Per task: the
    baseline (FINETUNE_EPOCHS, then its checkpoint); the backbone (the step's epochs and a checkpoint at each width
    tried, then per pruning stage one evaluation, its epochs and a checkpoint); the search (PROFILE_SIZE test samples
    through two forward passes, ITERATIONS 2-sample trials and one pass per candidate); the target (the step's epochs
    and a checkpoint at each width tried). Typical and worst differ in the widths tried (tried_widths)."""
    base, search = settings["baseline"], settings["find_backbone"]

    def epoch(task, trainer, batch, amp):
        t = times[(task.shape, amp)]
        return task.train * per_sample(getattr(t, trainer), batch) + task.test * t.evaluate + save_s

    def finetune(task, step, widths):
        return len(widths) * (step.epochs * epoch(task, "cpg", step.batch_size, step.amp) + save_s)

    finetunes = {stage: FinetuneStep.of(settings[stage]) for stage in ("wo_backbone", "w_backbone_MM")}
    pruning = prune_steps(settings["wo_backbone"])
    cases = [{stage: tried_widths(settings[stage], worst) for stage in finetunes} for worst in (False, True)]
    cost = [{stage: [] for stage in PROJECTED_STAGES} for _ in cases]    # per case, per stage: seconds of each task
    epochs = [0, 0]
    for task in work.tasks:
        t = times[(task.shape, search.amp)]
        profile = min(search.profile_size, task.test)
        candidates = len(candidate_ids(work.cfg, task.task_id, search.candidates))
        searched = (2 + candidates) * profile * t.evaluate + search.iterations * t.forward2
        pruned = sum(step.epochs * epoch(task, "cpg", step.batch_size, step.amp) + task.test *
                     times[(task.shape, step.amp)].evaluate + save_s for step in pruning)
        for case, widths in enumerate(cases):
            cost[case]["baseline"].append(base.finetune_epochs * epoch(task, "baseline", base.batch_size, base.amp) +
                                          save_s)
            cost[case]["wo_backbone"].append(finetune(task, finetunes["wo_backbone"], widths["wo_backbone"]) + pruned)
            cost[case]["find_backbone"].append(searched)
            cost[case]["w_backbone_MM"].append(finetune(task, finetunes["w_backbone_MM"], widths["w_backbone_MM"]))
            epochs[case] += (base.finetune_epochs + sum(step.epochs for step in pruning) +
                             sum(len(widths[stage]) * step.epochs for stage, step in finetunes.items()))

    def wall(per_task):
        return max(sum(per_task) / workers, max(per_task, default=0.0))

    stages = {stage: tuple(wall(c[stage]) for c in cost) for stage in PROJECTED_STAGES}
    return Projection(tuple(epochs), tuple(sum(s[case] for s in stages.values()) for case in (0, 1)), stages)



# ---- printing ------------------------------------------------------------------------------------------------
def duration_range(low, high):
    """Typical to worst in the pipeline's duration words ("1 d 6 h to 4 d 2 h"), or one figure when they agree."""
    return duration(high) if duration(low) == duration(high) else f"{duration(low)} to {duration(high)}"


def table(works, columns, times, save_s, workers):
    """The projection's rows: per config its tasks, epochs and wall time in each of the `columns` (see columns())."""
    rows = [["config", "tasks", "epochs (default)", "epochs (fast)", *columns]]
    for name, work in works.items():
        image = sum(1 for t in work.tasks if t.modality == "image")
        text = len(work.tasks) - image
        cells = [name, f"{len(work.tasks)} ({image} image" + (f", {text} text)" if text else ")")]
        projections = []
        for settings in columns.values():
            try:
                projections.append(project(work, settings, times, save_s, workers))
            except KeyError:                                     # a shape or precision without measured times
                projections.append(None)
        cells += ["n/a" if p is None else f"{p.epochs[0]:,}-{p.epochs[1]:,}" for p in projections[::2]]
        cells += ["n/a" if p is None else duration_range(*p.seconds) for p in projections]
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def print_projection(works, columns, times, save_s, workers, fast_epochs):
    """The projection's section of the check's output: the variables, each config's task sizes and where they come
    from, the table on one GPU, the default column per stage, and the table over `workers` GPUs."""
    default = next(iter(columns.values()))
    b, wo, tg = default["baseline"], default["wo_backbone"], default["w_backbone_MM"]
    print("\nprojected wall time of a full run (run_pickaback/run_all.sh <cfg>), typical to worst (typical: one width "
          "per CPG finetune; worst: every width step):")
    print(f"variables: FINETUNE_EPOCHS={b.finetune_epochs}, EPOCHS={wo.epochs} (wo_backbone) / {tg.epochs} "
          f"(w_backbone_MM), NR_EPOCH_FOR_EACH_PRUNE={wo.nr_epoch_for_each_prune} x {len(wo.pruning_schedule)} "
          f"pruning stages, widths {', '.join(map(str, tried_widths(wo, True)))} (wo_backbone) / "
          f"{', '.join(map(str, tried_widths(tg, True)))} (w_backbone_MM), BATCH_SIZE {b.batch_size} / "
          f"{wo.batch_size} / {tg.batch_size}; RECIPE=fast columns: FINETUNE_EPOCHS=EPOCHS={fast_epochs}")
    for name, work in works.items():
        sizes = sorted({(t.train, t.test) for t in work.tasks})
        shown = ", ".join(f"{a}/{c}" for a, c in sizes[:3]) + (", ..." if len(sizes) > 3 else "")
        ids = [t.task_id for t in work.tasks]
        which = (f"all {len(ids)} tasks" if ids == list(range(1, len(work.cfg.groups) + 1)) else
                 f"tasks {', '.join(map(str, ids))} (TASK_IDS)")
        print(f"  {name}: {which}; train/test samples per task {shown} ({work.source})")
    print(f"  per epoch: one resume state written ({save_s:.2f} s measured); every task is a target; the search's "
          f"model loads, select_pruning_ratio_of_backbone, transfer_kv, the report and the caches are left out")
    print("\none GPU, one process:")
    for row in table(works, columns, times, save_s, 1):
        print(f"  {row}")
    print("per stage (default column, one GPU):")
    for name, work in works.items():
        try:
            stages = project(work, default, times, save_s).stages
        except KeyError:
            continue
        print(f"  {name}: " + ", ".join(f"{stage} {duration_range(*stages[stage])}" for stage in PROJECTED_STAGES))
    if workers > 1:
        print(f"\nGPUS=\"{' '.join(map(str, range(workers)))}\" ({workers} workers over the parallel stages' tasks):")
        for row in table(works, columns, times, save_s, workers):
            print(f"  {row}")
