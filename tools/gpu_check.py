"""GPU check: what to run on a new GPU server before starting a days-long run (a few minutes on a modern GPU).

    bash tools/gpu_check.sh                        # every check on cuda, then the projected wall times
    bash tools/gpu_check.sh --quick                # fewer timing rounds, no AMP/fast stage run
    bash tools/gpu_check.sh --skip-stages          # the benchmarks and the projection only
    python tools/gpu_check.py --device cpu --quick # rehearse it on the CPU (slow; the figures are the CPU's)

The header names the GPU and its bf16 peak, measured as a large bf16 matmul timed on the device (the rate every
"% of bf16 peak" below is a share of). Then one line per check, with its figure and `ok`, `failed (<reason>; log:
<file>)` or `skipped (<reason>)`:

- train: tools/benchmark_train.py's measurement on random data of each input shape of the real configs (--configs,
  default cub oxford mscoco: 224x224 images for cub, 64x64 for oxford and mscoco, the captions' tokens x features
  for cub and oxford; each config's model section), at each BATCH_SIZE of the training stages (baseline,
  wo_backbone, w_backbone_MM), in float32 and under bf16 autocast (AMP=1): samples/s of the baseline trainer, of the
  CPG target trainer and (once per shape and precision) of the test-set evaluation, the baseline trainer's share of
  the bf16 peak and the peak GPU memory;
- resume state: the time to write one resume state of the real-size network with its optimisers, in the stages'
  working folder (MMPAB_WORK_DIR, else the repository), as every epoch of every training step does;
- attention: tools/benchmark_attention.py at the CUB size (batch 8, 224x224 images), einsum and fused attention, in
  float32 and bf16: time and peak memory of one training step;
- stages: every stage (tools/run_stage.py all demo) on a small image-only run (the demo data's image tasks, 16
  training images per class, TASK_IDS of the image tasks, CANDIDATES=same, one or two epochs per step) in a
  temporary working folder with DEVICE=<--device>; again with AMP=1 RECIPE=fast; and, where there are two GPUs or
  more, with NPROC=2 and with GPUS listing every GPU (on the CPU: NPROC=2 and GPUS="cpu cpu"). The figure is the
  wall time; a run passes when it exits 0 having written every target's row.

A failed check's output is in a log file under --out (default: a new temporary folder), named on its line.

It ends with the projected wall time of a full run (run_pickaback/run_all.sh) of each config of --configs, with the
stage scripts' current variables (their defaults, overridden by the environment, as the scripts read them) and with
AMP=1, RECIPE=fast (FINETUNE_EPOCHS and EPOCHS set to --fast-epochs, the README's example) and both: the tasks and
their modalities from utils/dataset_config.yaml, the training and test set sizes per task counted in the prepared
data where it exists, else derived from the datasets' published sizes (see PUBLISHED below), and the step times
measured above. Per task: the baseline (FINETUNE_EPOCHS), the CPG backbone (EPOCHS at each width tried, then
NR_EPOCH_FOR_EACH_PRUNE per stage of PRUNING_SCHEDULE), the backbone search (ModelDiff's forward passes) and the
target (EPOCHS at each width tried); every epoch trains on the training set at the stage's BATCH_SIZE, evaluates the
test set and writes a resume state. "typical" is one width per CPG finetune, "worst" every width step up to
MAX_NETWORK_WIDTH_MULTIPLIER (each at the speed measured at width 1.0: wider feed-forwards cost somewhat more); the
whole pruning schedule runs in both (an early stop only shortens it). The stages that only read records and copy
checkpoints (select_pruning_ratio_of_backbone, transfer_kv), the report, the model loads of the search and the image
and text caches (built once per task) are left out. With two GPUs or more a second table divides the parallel stages
over GPUS workers (never below the longest task).

Exit code 0 when every check passed, 1 when one failed; without a CUDA GPU (and no --device cpu) one `error:`
sentence and exit code 1.
"""
import argparse
import contextlib
import csv
import gc
import io
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from utils.config import REPO_ROOT, load_dataset_config
from utils.errors import UserError, report_user_errors

NO_CUDA = ("no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False): run tools/gpu_check.sh on the GPU "
           "server, check that nvidia-smi lists its GPUs and that CUDA_VISIBLE_DEVICES does not hide them, or pass "
           "--device cpu to rehearse the check on the CPU.")
REAL_CONFIGS = ("cub", "oxford", "mscoco")
TRAINING_STAGES = ("baseline", "wo_backbone", "w_backbone_MM")       # the stages whose BATCH_SIZE is measured
PROJECTED_STAGES = ("baseline", "wo_backbone", "find_backbone", "w_backbone_MM")
EVAL_BATCH = 100                                                   # utils.data.load_task's val_batch_size
GIB = 2 ** 30

# ---- the datasets' published sizes, and how this repository's preparers split them -------------------------------
# CUB-200-2011 (Wah et al., 2011, Caltech TR CNS-TR-2011-001): 11,788 images of 200 bird classes (official split
# 5,994 train / 5,794 test). tools/prepare_cub.py keeps the classes with exactly 60 images (139 of them), 5 per task,
# and splits each class 80/20 itself (48 train / 12 test); a task's captions (text group) are the same images' captions,
# so a text task has the same sizes as its image task.
# Oxford-102 flowers (Nilsback & Zisserman, ICVGIP 2008): 8,189 images of 102 classes, 40 to 258 per class. The
# per-class counts below are those of the dataset's imagelabels.mat for the 24 classes of tools/prepare_oxford.py's
# six groups (its 24 largest classes), which splits each class 80/20 (sklearn: ceil(20 %) test); captions as CUB.
# They are an upper bound: the preparer uses the rows of the captions CSV, and a Kaggle copy with class folders holds
# about 90 % of the images in its labelled train/ and valid/ folders.
OXFORD_IMAGES = {37: 108, 41: 127, 43: 130, 46: 196, 51: 258, 56: 109, 58: 114, 60: 109, 65: 102, 72: 96, 73: 194,
                 74: 171, 75: 120, 76: 107, 77: 251, 78: 137, 80: 105, 81: 166, 82: 112, 83: 131, 88: 154, 89: 184,
                 94: 162, 95: 128}
# MSCOCO 2017 (Lin et al., ECCV 2014; cocodataset.org): train2017 has 118,287 images (117,266 with an instance
# annotation), val2017 5,000 (4,952), 80 categories. tools/prepare_mscoco.py labels an image by the category of its
# first annotation, keeps 60 categories in 15 groups of 4 (train2017 -> train, val2017 -> test) and moves train
# images to test until each category has ceil(20 % of its train images). How many images each category gets as a
# first annotation is not published: estimated here as an even share of the 80 categories (the real counts are
# skewed, and images whose first annotation is a person are dropped, so it is rough; prepare the data to count).
COCO_TRAIN_ANNOTATED, COCO_VAL_ANNOTATED, COCO_CATEGORIES = 117_266, 4_952, 80
TEST_FRACTION = 0.2


def split_80_20(n):
    """(train, test) of n samples split as sklearn's train_test_split(test_size=0.2) does: ceil(20 %) test."""
    test = math.ceil(TEST_FRACTION * n)
    return n - test, test


def cub_sizes(cfg, group):
    from tools.prepare_cub import IMAGES_PER_CLASS
    train, test = split_80_20(IMAGES_PER_CLASS)
    return cfg.num_classes * train, cfg.num_classes * test


def oxford_sizes(cfg, group):
    from tools.prepare_oxford import GROUPS, TEXT_GROUP_OFFSET
    index = (cfg.task_id(group) - 1) % TEXT_GROUP_OFFSET                # caption group k + 6 = image group k
    splits = [split_80_20(OXFORD_IMAGES[c]) for c in GROUPS[index]]
    return sum(train for train, _ in splits), sum(test for _, test in splits)


def mscoco_sizes(cfg, group):
    train = round(COCO_TRAIN_ANNOTATED / COCO_CATEGORIES)
    val = round(COCO_VAL_ANNOTATED / COCO_CATEGORIES)
    test = max(val, math.ceil(TEST_FRACTION * train))
    return cfg.num_classes * (train - (test - val)), cfg.num_classes * test


PUBLISHED = {"cub": (cub_sizes, "CUB-200-2011 as tools/prepare_cub.py splits it: 5 classes x 48 train / 12 test"),
             "oxford": (oxford_sizes, "Oxford-102's per-class image counts split 80/20 as tools/prepare_oxford.py "
                                      "does; an upper bound"),
             "mscoco": (mscoco_sizes, "MSCOCO 2017's images spread evenly over its 80 categories, 4 per task, "
                                      "rebalanced as tools/prepare_mscoco.py does; a rough estimate")}


# ---- the projection: pure arithmetic over given sizes, settings and step times ------------------------------------
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
    """One task of a config: its group, modality, input shape and the number of training and test samples."""
    group: str
    modality: str
    shape: Shape
    train: int
    test: int


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
    """(typical, worst) epochs summed over every task and stage, wall seconds, and seconds per stage."""
    epochs: tuple
    seconds: tuple
    stages: dict


def per_sample(table, batch):
    """The seconds per sample at `batch` of `table` ({batch size: seconds}): the nearest measured batch size (by
    ratio) where that one was not measured."""
    if batch in table:
        return table[batch]
    return table[min(table, key=lambda b: (abs(math.log(b / batch)), b))]


def width_attempts(s):
    """How many widths a CPG finetune with settings `s` tries at most: NETWORK_WIDTH_MULTIPLIER, then WIDTH_STEP
    wider each time, up to MAX_NETWORK_WIDTH_MULTIPLIER (as utils.pipeline.cpg_steps.finetune_with_growth)."""
    width, attempts = s.network_width_multiplier, 1
    while width < s.max_network_width_multiplier - 1e-9:
        width = round(min(width + s.width_step, s.max_network_width_multiplier), 4)
        attempts += 1
    return attempts


def candidates(tasks, task, which):
    """How many candidates the backbone search compares with target `task` (CANDIDATES all, same or cross)."""
    same = sum(1 for t in tasks if t.modality == task.modality) - 1
    return {"all": len(tasks) - 1, "same": same, "cross": len(tasks) - 1 - same}[which]


def project(tasks, settings, times, save_s=0.0, workers=1):
    """The projected epochs and wall seconds of run_all over `tasks` ([TaskSize]) with `settings` ({stage: settings
    object} of baseline, wo_backbone, find_backbone and w_backbone_MM), `times` ({(Shape, amp): StepTimes}; each
    stage's AMP picks its times), `save_s` seconds per resume state or checkpoint written, and `workers` GPUS workers
    sharing every projected stage's tasks (each stage then takes max(its total / workers, its longest task)).

    Per task, one epoch of a stage is its training set at the stage's BATCH_SIZE, its test set and one resume state:
    the baseline runs FINETUNE_EPOCHS and writes its checkpoint; the backbone (wo_backbone) runs EPOCHS at each width
    tried, a checkpoint each, then every stage of PRUNING_SCHEDULE: one evaluation, NR_EPOCH_FOR_EACH_PRUNE epochs and
    a checkpoint; the search profiles the task's test samples (PROFILE_SIZE of them, two forward passes and
    ITERATIONS 2-sample trials) and runs the profile through every candidate; the target (w_backbone_MM) runs EPOCHS
    at each width tried. Typical: one width per finetune; worst: every width step."""
    base, backbone = settings["baseline"], settings["wo_backbone"]
    search, target = settings["find_backbone"], settings["w_backbone_MM"]

    def epoch(task, s, trainer):
        t = times[(task.shape, s.amp)]
        table = t.baseline if trainer == "baseline" else t.cpg
        return task.train * per_sample(table, s.batch_size) + task.test * t.evaluate + save_s

    def evaluation(task, s):
        return task.test * times[(task.shape, s.amp)].evaluate

    widths = {"wo_backbone": (1, width_attempts(backbone)), "w_backbone_MM": (1, width_attempts(target))}
    prune_epochs = len(backbone.pruning_schedule) * backbone.nr_epoch_for_each_prune
    cost = {stage: [[], []] for stage in PROJECTED_STAGES}        # per stage, per case: [seconds of each task]
    epochs = [0, 0]
    for task in tasks:
        t = times[(task.shape, search.amp)]
        profile = min(search.profile_size, task.test)
        searched = (2 * profile * t.evaluate + search.iterations * t.forward2 +
                    candidates(tasks, task, search.candidates) * profile * t.evaluate)
        pruning = len(backbone.pruning_schedule) * (backbone.nr_epoch_for_each_prune * epoch(task, backbone, "cpg") +
                                                    evaluation(task, backbone) + save_s)
        for case in (0, 1):
            a_backbone, a_target = widths["wo_backbone"][case], widths["w_backbone_MM"][case]
            cost["baseline"][case].append(base.finetune_epochs * epoch(task, base, "baseline") + save_s)
            cost["wo_backbone"][case].append(a_backbone * (backbone.epochs * epoch(task, backbone, "cpg") + save_s) +
                                             pruning)
            cost["find_backbone"][case].append(searched)
            cost["w_backbone_MM"][case].append(a_target * (target.epochs * epoch(task, target, "cpg") + save_s))
            epochs[case] += (base.finetune_epochs + a_backbone * backbone.epochs + prune_epochs +
                             a_target * target.epochs)

    def stage_seconds(per_task):
        if not per_task:
            return 0.0
        return max(sum(per_task) / workers, max(per_task)) if workers > 1 else sum(per_task)

    stages = {stage: tuple(stage_seconds(cost[stage][case]) for case in (0, 1)) for stage in PROJECTED_STAGES}
    seconds = tuple(sum(stages[stage][case] for stage in PROJECTED_STAGES) for case in (0, 1))
    return Projection(tuple(epochs), seconds, stages)


def variants(env, fast_epochs):
    """[(column name, environment)] of the projection's four columns: the scripts' current variables (`env` over the
    scripts' defaults) with AMP off and the original recipe, with AMP=1, with RECIPE=fast (FINETUNE_EPOCHS and EPOCHS
    = `fast_epochs`), and with both."""
    fast = {"RECIPE": "fast", "FINETUNE_EPOCHS": str(fast_epochs), "EPOCHS": str(fast_epochs)}
    return [("default", {**env, "AMP": "0", "RECIPE": "original"}),
            ("AMP=1", {**env, "AMP": "1", "RECIPE": "original"}),
            ("RECIPE=fast", {**env, "AMP": "0", **fast}),
            ("AMP=1 + RECIPE=fast", {**env, "AMP": "1", **fast})]


def settings_of(env):
    """{stage: settings} of the projected stages for the environment `env` (a UserError names a bad variable)."""
    from utils.pipeline.settings import stage_settings
    return {stage: stage_settings(stage, env) for stage in PROJECTED_STAGES}


def duration(seconds):
    """Seconds as seconds (under 2 minutes), minutes (under 2 hours), hours (under 2 days) or days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def duration_range(low, high):
    """`low`-`high` seconds in the unit of `high` ("1.2-3.4 days"), or one figure when they are equal."""
    if duration(low) == duration(high):
        return duration(high)
    unit = duration(high).split()[1]
    scale = {"s": 1, "min": 60, "h": 3600, "days": 86400}[unit]
    return f"{low / scale:.{0 if unit in ('s', 'min') else 1}f}-{duration(high)}"


# ---- the configs: tasks, shapes and sizes ------------------------------------------------------------------------
def shape_of(cfg, group):
    """The Shape of task `group` of config `cfg`."""
    from utils.data import model_config
    config = model_config(cfg)
    if cfg.modality(group) == "image":
        dims = (int((cfg.raw.get("resize") or [224])[0]),)
    else:
        dims = (int(config["max_text_length"]), int(config["text_dim"]))
    return Shape(cfg.modality(group), dims, tuple(sorted(cfg.model.items())))


def count_files(folder):
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def task_sizes(cfg):
    """([TaskSize] of every task of `cfg`, where the sizes come from): counted in the prepared data when every task's
    folders exist, else the published sizes (PUBLISHED); a UserError for a config without either."""
    groups = cfg.groups
    if all(cfg.task_folder(g, split).is_dir() for g in groups for split in ("train", "test")):
        sizes = {g: (count_files(cfg.task_folder(g, "train")), count_files(cfg.task_folder(g, "test"))) for g in groups}
        source = f"counted in {cfg.data_root / cfg.name}"
    elif cfg.name in PUBLISHED:
        sizes_of, source = PUBLISHED[cfg.name]
        sizes = {g: sizes_of(cfg, g) for g in groups}
    else:
        raise UserError(f"config '{cfg.name}' has no prepared data under {cfg.data_root} and no published sizes in "
                        f"tools/gpu_check.py: prepare its data, or leave it out of --configs.")
    return [TaskSize(g, cfg.modality(g), shape_of(cfg, g), *sizes[g]) for g in groups], source


# ---- running and printing checks ---------------------------------------------------------------------------------
class CheckError(Exception):
    """A check that failed with `reason` (one sentence) and the whole `output` to keep in its log file."""

    def __init__(self, reason, output=""):
        super().__init__(reason)
        self.reason, self.output = reason, output


def one_line(error):
    """An exception as one short phrase: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    first = first[:160] + ("..." if len(first) > 160 else "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def slug(name):
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")


class Checks:
    """Runs checks and prints one line per check: name, figure, ok / failed (reason; log) / skipped (reason)."""

    def __init__(self, logs, out=None):
        self.logs, self.out = Path(logs), out                        # None: sys.stdout at the time of printing
        self.status = []

    def line(self, name, figure, status):
        text = f"{name:<34} {figure:<88} {status}" if figure else f"{name:<34} {status}"
        print(text, file=self.out or sys.stdout, flush=True)
        self.status.append(status.split()[0])

    def log_file(self, name, text):
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"{slug(name)}.log"
        path.write_text(text, encoding="utf-8")
        return path

    def run(self, name, fn):
        """Run `fn`, which returns (figure text, result) or raises; print its line; returns the result or None."""
        try:
            figure, result = fn()
        except CheckError as e:
            self.failed(name, e.reason, e.output)
            return None
        except Exception as e:                                      # any error fails this check, not the others
            self.failed(name, one_line(e), traceback.format_exc())
            return None
        finally:
            release_memory()
        self.line(name, figure, "ok")
        return result

    def failed(self, name, reason, output):
        path = self.log_file(name, output or reason)
        self.line(name, "", f"failed ({reason.rstrip('.')}; log: {path})")

    def skip(self, name, reason):
        self.line(name, "", f"skipped ({reason})")

    @property
    def failures(self):
        return self.status.count("failed")


def release_memory():
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def memory(peak):
    return "peak mem n/a" if peak is None else f"peak mem {peak / GIB:5.2f} GiB"


# ---- the checks ------------------------------------------------------------------------------------------------
def select(device_name):
    """The torch.device of --device: cuda, cuda:N or cpu; a UserError without a CUDA GPU (or without GPU N)."""
    import torch
    if device_name == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", device_name):
        raise UserError(f"--device {device_name!r} is not a device: use cuda, cuda:N or cpu.")
    if not torch.cuda.is_available():
        raise UserError(NO_CUDA)
    device = torch.device(device_name)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {device_name} names GPU {index}, but {torch.cuda.device_count()} GPU(s) are "
                        f"visible (0..{torch.cuda.device_count() - 1}): pass one of them.")
    return torch.device("cuda", index)


def bf16_supported(device):
    import torch
    return device.type == "cpu" or torch.cuda.is_bf16_supported()


def bf16_peak(device):
    """(FLOP/s, matrix side): the best of 3 timings of a large bf16 matmul on `device`; on the CPU, where bf16
    matmuls can be far slower than float32 ones, a small one and the faster of the two precisions."""
    import torch
    from tools.benchmark_train import matmul_rate
    if device.type == "cuda":
        return max(matmul_rate(device, torch.bfloat16, 8192, 20) for _ in range(3)), 8192
    return max(matmul_rate(device, dtype, 512, 2) for dtype in (torch.bfloat16, torch.float32) for _ in range(3)), 512


def train_check(shape, batch, amp, device, rounds, steps, peak, evaluate):
    """One measurement of tools/benchmark_train.py at `shape`; returns (figure, result)."""
    from tools.benchmark_train import measure
    text = shape.modality == "text"
    r = measure("oxford", device, rounds, steps, amp, config=dict(shape.model), batch=batch, classes=4,
                image=None if text else shape.dims[0], modality=shape.modality,
                text=shape.dims if text else (128, 384), bare=False, eval_batch=EVAL_BATCH if evaluate else None,
                matmul=False)
    per_s = r["samples_per_s"]
    share = 100 * per_s["baseline trainer"] * r["flops_per_sample"] / peak
    evaluated = f"{per_s['evaluation']:9.1f}" if evaluate else f"{'-':>9}"
    figure = (f"{per_s['baseline trainer']:9.1f} samples/s  CPG {per_s['CPG target trainer']:9.1f}  eval {evaluated}"
              f"  {share:5.1f} % of bf16 peak  {memory(r['peak_memory'])}")
    return figure, r


def step_times(results):
    """{(Shape, amp): StepTimes} from the train checks' results {(Shape, amp, batch): measure() result}; the
    evaluation figures come from the measurement that timed them."""
    times = {}
    for (shape, amp, batch), r in results.items():
        key = (shape, amp)
        entry = times.setdefault(key, {"baseline": {}, "cpg": {}, "evaluate": None, "forward2": 0.0})
        entry["baseline"][batch] = 1 / r["samples_per_s"]["baseline trainer"]
        entry["cpg"][batch] = 1 / r["samples_per_s"]["CPG target trainer"]
        if "evaluation" in r["samples_per_s"]:
            entry["evaluate"], entry["forward2"] = 1 / r["samples_per_s"]["evaluation"], r["forward2_s"]
    return {key: StepTimes(e["baseline"], e["cpg"], e["evaluate"], e["forward2"]) for key, e in times.items()
            if e["evaluate"] is not None}


def resume_check(config, device, work):
    """The time to write one resume state of the CPG target network of the model `config` (both optimisers) into
    `work`."""
    import torch
    from types import SimpleNamespace

    from tools.benchmark_train import networks
    from utils.resume import Resume
    from utils.trainer import make_optimizers
    _, net = networks(config, 4, device)
    optimizer, mask_optimizer = make_optimizers(net, "t2", 1e-2, 1e-4)
    for p in net.model.parameters():                              # the optimisers' state exists after a step
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    mask_optimizer.step()
    data = SimpleNamespace(cfg=SimpleNamespace(name="check", text_encoder=""),
                           train_loader=SimpleNamespace(generator=torch.Generator()))
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=".gpu_check_") as folder:
        resume = Resume(Path(folder) / "resume.pt", {"check": True})
        objects = {"optimizer": optimizer, "mask_optimizer": mask_optimizer}
        times = []
        for epoch in range(3):
            start = time.perf_counter()
            resume.save({"kind": "finetune", "width": 1.0}, epoch, net, objects, data, 0.0, 0.0)
            times.append(time.perf_counter() - start)
        size = resume.path.stat().st_size
    seconds = min(times)
    return f"{seconds:9.3f} s per epoch ({size / 2 ** 20:.0f} MiB, in {work})", seconds


def attention_check(mode, amp, device, steps, einsum=None):
    """tools/benchmark_attention.py's measurement of one attention mode at the CUB size, in its own process; with
    the `einsum` mode's result, the memory and time relative to it."""
    from tools import benchmark_attention
    argv = ["--batch", "8", "--device", str(device), "--steps", str(steps)] + (["--amp"] if amp else [])
    r = benchmark_attention.run_child(mode, benchmark_attention.parse_args(argv))
    if "error" in r:
        raise CheckError(r["error"], r.get("output", r["error"]))
    figure = f"{r['step_s']:9.3f} s per step of 8 ({8 / r['step_s']:.1f} samples/s)  {memory(r['peak'])} growth"
    if einsum and einsum["peak"] > 0:
        figure += f" ({r['peak'] / einsum['peak']:.2f}x einsum's, time {r['step_s'] / einsum['step_s']:.2f}x)"
    return figure, r


# ---- the stage checks --------------------------------------------------------------------------------------------
TINY = {"FINETUNE_EPOCHS": "2", "EPOCHS": "1", "NR_EPOCH_FOR_EACH_PRUNE": "1", "PRUNING_INTERVAL": "1",
        "PRUNING_SCHEDULE": "0.5 0.9", "PROFILE_SIZE": "8", "ITERATIONS": "5", "BATCH_SIZE": "16",
        "CANDIDATES": "same", "AMP": "0", "RECIPE": "original", "FORCE": "0", "TARGET_ID": "all"}


def python_path(env):
    """PYTHONPATH of `env` with the checkout first, so that processes started here import its modules."""
    return os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))


def image_task_ids(cfg):
    return [t for t, g in enumerate(cfg.groups, 1) if cfg.modality(g) == "image"]


def stage_env(env, data_root, work, device, task_ids, **extra):
    """The environment of a stage check: `env` without its own choices of processes and GPUs (NPROC, GPUS), of
    another config file or of a tracker (the default, tensorboard, writes local files only), the tiny settings, the
    data and working folders, DEVICE, the image tasks (TASK_IDS) and `extra`."""
    base = {k: v for k, v in env.items() if k not in ("NPROC", "GPUS", "MMPAB_CONFIG_FILE", "TRACKER")}
    return {**base, **TINY, "PYTHONPATH": python_path(env), "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
            "MMPAB_DATA_ROOT": str(data_root), "MMPAB_WORK_DIR": str(work), "DEVICE": str(device),
            "TASK_IDS": " ".join(map(str, task_ids)), **extra}


def make_stage_data(root):
    """The demo data, 16 training and 6 test samples per class (as the tests'), under `root`; (figure, True)."""
    from tools.make_demo_data import main as make_demo
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        make_demo(["--data_root", str(root), "--train_per_class", "16", "--test_per_class", "6"])
    return f"{time.perf_counter() - start:9.1f} s (demo data, 16 train / 6 test per class, in {root})", True


def stage_check(env, work, tasks, timeout):
    """Every stage (tools/run_stage.py all demo) in its own process with `env`; (figure, seconds)."""
    command = [sys.executable, str(REPO_ROOT / "tools" / "run_stage.py"), "all", "demo"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        output = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                         for x in (e.stdout, e.stderr))
        raise CheckError(f"it did not finish within {timeout} s (--stage-timeout)", output) from None
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        lines = [ln for ln in output.splitlines() if ln.strip()]
        said = next((ln for ln in reversed(lines) if ln.startswith("error: ")), lines[-1] if lines else "no output")
        raise CheckError(f"exit {proc.returncode}: {said[:200]}", output)
    table = Path(work) / "logs_perceiver_io" / "w_backbone_demo_acc.csv"
    rows = list(csv.DictReader(table.open())) if table.is_file() else []
    if len(rows) != len(tasks):
        raise CheckError(f"it ended without error but {table} holds {len(rows)} of {len(tasks)} target rows", output)
    return f"{seconds:9.1f} s wall ({len(tasks)} image tasks, every stage, then the report)", seconds


# ---- main --------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to rehearse the check")
    p.add_argument("--quick", action="store_true",
                   help="one timing round of 5 steps per measurement and no AMP/fast stage run (about half the time)")
    p.add_argument("--skip-stages", action="store_true", help="leave out the stage checks")
    p.add_argument("--configs", nargs="+", default=list(REAL_CONFIGS),
                   help="configs to measure the shapes of and to project (default: cub oxford mscoco)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds per measurement (default 3, --quick 1)")
    p.add_argument("--steps", type=int, default=None, help="training steps per timed epoch (default 10, --quick 5)")
    p.add_argument("--fast-epochs", type=int, default=30,
                   help="FINETUNE_EPOCHS and EPOCHS in the RECIPE=fast columns (default 30, the README's example)")
    p.add_argument("--stage-timeout", type=int, default=900, help="seconds each stage check may take (default 900)")
    p.add_argument("--out", default=None, help="folder for the logs and the stage checks' runs (default: a new "
                                               "temporary folder)")
    args = p.parse_args(argv)
    for name in ("rounds", "steps", "fast_epochs", "stage_timeout"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.steps = args.steps or (5 if args.quick else 10)
    return args


def header(device, peak, n, out):
    import torch
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = (f"{device} = {torch.cuda.get_device_name(device)} ({props.total_memory / GIB:.0f} GiB; "
                f"{torch.cuda.device_count()} GPU(s) visible), torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        what = (f"cpu ({torch.get_num_threads()} threads; a rehearsal: the figures are the CPU's), torch "
                f"{torch.__version__}")
    kind = "bf16" if device.type == "cuda" else "bf16 or float32, the faster,"
    print(f"gpu check on {what}: bf16 peak {flop_rate(peak)} (measured: {n}x{n} {kind} matmul); logs in {out}",
          flush=True)


def flop_rate(rate):
    return f"{rate / 1e12:.1f} TFLOP/s" if rate >= 1e12 else f"{rate / 1e9:.1f} GFLOP/s"


def projection_table(configs, variant_settings, times, save_s, workers):
    """The projection's lines: one row per config (tasks, epochs, wall time per column)."""
    names = [name for name, _ in variant_settings]
    rows = [["config", "tasks", "epochs (default)", "epochs (fast)", *names]]
    for name, (tasks, _) in configs.items():
        image = sum(1 for t in tasks if t.modality == "image")
        text = len(tasks) - image
        cells = [name, f"{len(tasks)} ({image} image" + (f", {text} text)" if text else ")")]
        projections = []
        for _, settings in variant_settings:
            try:
                projections.append(project(tasks, settings, times, save_s, workers))
            except KeyError:                                     # a shape or precision without measured times
                projections.append(None)
        for index in (0, 2):
            p = projections[index]
            cells.append("n/a" if p is None else f"{p.epochs[0]:,}-{p.epochs[1]:,}")
        for p in projections:
            cells.append("n/a" if p is None else duration_range(*p.seconds))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def print_projection(configs, variant_settings, times, save_s, workers, args):
    s = variant_settings[0][1]
    b, wo, tg = s["baseline"], s["wo_backbone"], s["w_backbone_MM"]
    print("\nprojected wall time of a full run (run_pickaback/run_all.sh <cfg>), typical-worst (typical: one width "
          "per CPG finetune; worst: every width step):")
    print(f"variables: FINETUNE_EPOCHS={b.finetune_epochs}, EPOCHS={wo.epochs} (wo_backbone) / {tg.epochs} "
          f"(w_backbone_MM), NR_EPOCH_FOR_EACH_PRUNE={wo.nr_epoch_for_each_prune} x {len(wo.pruning_schedule)} "
          f"pruning stages, widths {wo.network_width_multiplier:g}-{wo.max_network_width_multiplier:g} "
          f"({width_attempts(wo)} at most) / {tg.network_width_multiplier:g}-{tg.max_network_width_multiplier:g} "
          f"({width_attempts(tg)} at most) by {tg.width_step:g}, BATCH_SIZE {b.batch_size} / {wo.batch_size} / "
          f"{tg.batch_size}; RECIPE=fast columns: FINETUNE_EPOCHS=EPOCHS={args.fast_epochs}")
    for name, (tasks, source) in configs.items():
        sizes = sorted({(t.train, t.test) for t in tasks})
        shown = ", ".join(f"{a}/{c}" for a, c in sizes[:3]) + (", ..." if len(sizes) > 3 else "")
        print(f"  {name}: train/test samples per task {shown} ({source})")
    print(f"  per epoch: one resume state written ({save_s:.2f} s measured); every task is a target; the search's "
          f"model loads, select_pruning_ratio_of_backbone, transfer_kv, the report and the caches are left out")
    print("\none GPU, one process:")
    for row in projection_table(configs, variant_settings, times, save_s, 1):
        print(f"  {row}")
    print("per stage (default column, one GPU):")
    for name, (tasks, _) in configs.items():
        try:
            stages = project(tasks, variant_settings[0][1], times, save_s).stages
        except KeyError:
            continue
        print(f"  {name}: " + ", ".join(f"{stage} {duration_range(*stages[stage])}" for stage in PROJECTED_STAGES))
    if workers > 1:
        print(f"\nGPUS=\"{' '.join(map(str, range(workers)))}\" ({workers} workers over the parallel stages' tasks):")
        for row in projection_table(configs, variant_settings, times, save_s, workers):
            print(f"  {row}")


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    device = select(args.device)
    import torch
    env = dict(os.environ)
    variant_settings = [(name, settings_of(v)) for name, v in variants(env, args.fast_epochs)]
    cfgs = [load_dataset_config(name, check_folders=False) for name in args.configs]
    configs = {cfg.name: task_sizes(cfg) for cfg in cfgs}
    os.environ["PYTHONPATH"] = python_path(env)                    # for the attention benchmark's processes
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    from utils.runtime import seed_everything
    seed_everything(0)                            # the stages' deterministic settings, before the first CUDA call
    peak, n = bf16_peak(device)
    header(device, peak, n, out)
    checks = Checks(out / "logs")

    # training: every shape of the configs, at every training stage's BATCH_SIZE, float32 and bf16
    shapes = {}                                                     # {Shape: [the configs that have it]}
    for name, (tasks, _) in configs.items():
        for t in tasks:
            if name not in shapes.setdefault(t.shape, []):
                shapes[t.shape].append(name)
    batches = sorted({s[stage].batch_size for _, s in variant_settings for stage in TRAINING_STAGES})
    precisions = [False, True]
    results = {}
    print(f"\ntraining (random data of each config's shape, at the stages' batch sizes {', '.join(map(str, batches))}: "
          f"samples/s of the baseline trainer, the CPG target trainer and the test-set evaluation at batch "
          f"{EVAL_BATCH}; shapes: " + "; ".join(f"{'+'.join(c)} {s.label}" for s, c in shapes.items()) + "):",
          flush=True)
    for shape, names in shapes.items():
        for amp in precisions:
            for i, batch in enumerate(batches):
                label = (f"train {'+'.join(names)}{' text' if shape.modality == 'text' else ''} "
                         f"{'bf16' if amp else 'fp32'} b{batch}")
                if amp and not bf16_supported(device):
                    checks.skip(label, "this GPU has no bf16: AMP=1 is refused")
                    continue
                r = checks.run(label, lambda s=shape, b=batch, a=amp, e=i == 0: train_check(
                    s, b, a, device, args.rounds, args.steps, peak, e))
                if r is not None:
                    results[(shape, amp, batch)] = r
    times = step_times(results)
    from utils.data import model_config
    from utils.pipeline.context import work_dir
    save_s = checks.run("resume state write", lambda: resume_check(model_config(cfgs[0]), device, work_dir(env)))

    print("\nattention (tools/benchmark_attention.py: one CUB-size training step, batch 8, 224x224 images):",
          flush=True)
    for amp in precisions:
        einsum = None
        for mode in ("einsum", "fused"):
            label = f"attention cub {mode} {'bf16' if amp else 'fp32'}"
            if amp and not bf16_supported(device):
                checks.skip(label, "this GPU has no bf16")
                continue
            r = checks.run(label, lambda m=mode, a=amp, e=einsum: attention_check(m, a, device,
                                                                                  1 if args.quick else 2, e))
            einsum = r if mode == "einsum" else einsum

    if args.skip_stages:
        checks.skip("stages", "--skip-stages")
    else:
        run_stage_checks(checks, args, device, out, env)

    failures = checks.failures
    print(f"\n{len(checks.status) - failures - checks.status.count('skipped')} checks ok, {failures} failed, "
          f"{checks.status.count('skipped')} skipped; logs in {out / 'logs'}")
    workers = torch.cuda.device_count() if device.type == "cuda" else 1
    print_projection(configs, variant_settings, times, save_s or 0.0, workers, args)
    return 1 if failures else 0


def run_stage_checks(checks, args, device, out, env):
    """The stage checks: one process, AMP=1 RECIPE=fast, NPROC=2 and GPUS, on a small image-only demo run."""
    import torch
    data_root = out / "data"
    demo = load_dataset_config("demo", data_root, check_folders=False)
    tasks = image_task_ids(demo)
    print(f"\nstages (tools/run_stage.py all demo: image tasks {', '.join(map(str, tasks))}, {TINY['EPOCHS']}-"
          f"{TINY['FINETUNE_EPOCHS']} epochs per step, in {out}):", flush=True)
    if not checks.run("stage data", lambda: make_stage_data(data_root)):
        return
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    runs = [("stages", {}, None)]
    if not args.quick:
        runs.append(("stages AMP=1 RECIPE=fast", {"AMP": "1", "RECIPE": "fast"},
                     None if bf16_supported(device) else "this GPU has no bf16: AMP=1 is refused"))
    if device.type == "cpu":
        runs += [("stages NPROC=2", {"NPROC": "2"}, None), ("stages GPUS=\"cpu cpu\"", {"GPUS": "cpu cpu"}, None)]
    else:
        one = "one GPU visible" if gpus < 2 else None
        runs += [("stages NPROC=2", {"NPROC": "2", "DEVICE": "cuda"}, one),
                 (f"stages GPUS=\"{' '.join(map(str, range(max(gpus, 2))))}\"",
                  {"GPUS": " ".join(map(str, range(gpus)))}, one)]
    for name, extra, skipped in runs:
        if skipped:
            checks.skip(name, skipped)
            continue
        work = out / slug(name)
        stage = stage_env(env, data_root, work, extra.get("DEVICE", device), tasks, **extra)
        checks.run(name, lambda e=stage, w=work: stage_check(e, w, tasks, args.stage_timeout))


if __name__ == "__main__":
    sys.exit(main())
