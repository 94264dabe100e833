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
AMP=1, RECIPE=fast (FINETUNE_EPOCHS and EPOCHS set to --fast-epochs, the README's example) and both, over the tasks
the run selects (TASK_IDS, default every task of utils/dataset_config.yaml), from the step times measured above and
the training and test samples of each task counted in the prepared data under the data root (MMPAB_DATA_ROOT);
where a config's data is not prepared, it prints the per-class counts it assumed instead
(tools/gpu_check_projection.py, ASSUMED_PER_CLASS). Per task: the baseline (FINETUNE_EPOCHS), the CPG backbone
(EPOCHS at each width tried, then NR_EPOCH_FOR_EACH_PRUNE per stage of PRUNING_SCHEDULE), the backbone search
(ModelDiff's forward passes) and the target (EPOCHS at each width tried); every epoch trains on the training set at
the stage's BATCH_SIZE, evaluates the test set and writes a resume state. The widths tried come from the pipeline's
own growth loop: "typical" is one width per CPG finetune, "worst" every width step up to MAX_NETWORK_WIDTH_MULTIPLIER
(each at the speed measured at width 1.0: wider feed-forwards cost somewhat more); the whole pruning schedule runs in
both (an early stop only shortens it). The stages that only read records and copy checkpoints
(select_pruning_ratio_of_backbone, transfer_kv), the report, the model loads of the search and the image and text
caches (built once per task) are left out. With two GPUs or more a second table divides the parallel stages over
GPUS workers (never below the longest task).

Exit code 0 when every check passed, 1 when one failed; without a CUDA GPU (and no --device cpu) one `error:`
sentence and exit code 1.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

from utils.errors import UserError, report_user_errors

NO_CUDA = ("no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False): run tools/gpu_check.sh on the GPU "
           "server, check that nvidia-smi lists its GPUs and that CUDA_VISIBLE_DEVICES does not hide them, or pass "
           "--device cpu to rehearse the check on the CPU.")
REAL_CONFIGS = ("cub", "oxford", "mscoco")
TRAINING_STAGES = ("baseline", "wo_backbone", "w_backbone_MM")       # the stages whose BATCH_SIZE is measured


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
        what = (f"{device} = {torch.cuda.get_device_name(device)} ({props.total_memory / 2 ** 30:.0f} GiB; "
                f"{torch.cuda.device_count()} GPU(s) visible), torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        what = (f"cpu ({torch.get_num_threads()} threads; a rehearsal: the figures are the CPU's), torch "
                f"{torch.__version__}")
    kind = "bf16" if device.type == "cuda" else "bf16 or float32, the faster,"
    print(f"gpu check on {what}: bf16 peak {flop_rate(peak)} (measured: {n}x{n} {kind} matmul); logs in {out}",
          flush=True)


def flop_rate(rate):
    return f"{rate / 1e12:.1f} TFLOP/s" if rate >= 1e12 else f"{rate / 1e9:.1f} GFLOP/s"


def select(name):
    """The torch.device of --device, chosen as the stages choose theirs (utils.runtime.select_device); this check's
    own sentence when no CUDA GPU is visible, and a UserError for a GPU beyond those visible."""
    import torch

    from utils.runtime import select_device
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(NO_CUDA)
    device = select_device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name} names GPU {device.index}, but {torch.cuda.device_count()} GPU(s) are "
                        f"visible (0..{torch.cuda.device_count() - 1}): pass one of them.")
    return device


def training_checks(checks, works, columns, device, args, peak):
    """The train checks: every input shape of the configs' tasks, at every training stage's BATCH_SIZE of the
    projection's columns, in float32 and bf16; returns the step times they measured ({(Shape, amp): StepTimes})."""
    from tools.gpu_check_runs import EVAL_BATCH, bf16_supported, step_times, train_check
    shapes = {}                                                     # {Shape: [the configs that have it]}
    for name, work in works.items():
        for t in work.tasks:
            if name not in shapes.setdefault(t.shape, []):
                shapes[t.shape].append(name)
    batches = sorted({s[stage].batch_size for s in columns.values() for stage in TRAINING_STAGES})
    print(f"\ntraining (random data of each config's shape, at the stages' batch sizes {', '.join(map(str, batches))}: "
          f"samples/s of the baseline trainer, the CPG target trainer and the test-set evaluation at batch "
          f"{EVAL_BATCH}; shapes: " + "; ".join(f"{'+'.join(c)} {s.label}" for s, c in shapes.items()) + "):",
          flush=True)
    results = {}
    for shape, names in shapes.items():
        for amp in (False, True):
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
    return step_times(results)


def attention_checks(checks, device, args):
    from tools.gpu_check_runs import attention_check, bf16_supported
    print("\nattention (tools/benchmark_attention.py: one CUB-size training step, batch 8, 224x224 images):",
          flush=True)
    for amp in (False, True):
        einsum = None
        for mode in ("einsum", "fused"):
            label = f"attention cub {mode} {'bf16' if amp else 'fp32'}"
            if amp and not bf16_supported(device):
                checks.skip(label, "this GPU has no bf16")
                continue
            r = checks.run(label, lambda m=mode, a=amp, e=einsum: attention_check(m, a, device,
                                                                                  1 if args.quick else 2, e))
            einsum = r if mode == "einsum" else einsum


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    device = select(args.device)
    import torch

    from tools import gpu_check_projection as projection
    from tools.gpu_check_runs import Checks, bf16_peak, resume_check
    from tools.gpu_check_stages import python_path, run_stage_checks
    from utils.data import model_config
    from utils.pipeline.context import Run, work_dir
    from utils.runtime import seed_everything
    env = dict(os.environ)
    columns = projection.columns(env, args.fast_epochs)
    runs = {name: Run.from_environment(name, env) for name in args.configs}   # the tasks TASK_IDS selects
    works = {name: projection.workload(run.cfg, run.task_ids) for name, run in runs.items()}
    os.environ["PYTHONPATH"] = python_path(env)                    # for the attention benchmark's processes
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(0)                            # the stages' deterministic settings, before the first CUDA call
    peak, n = bf16_peak(device)
    header(device, peak, n, out)
    checks = Checks(out / "logs")
    times = training_checks(checks, works, columns, device, args, peak)
    config = model_config(next(iter(runs.values())).cfg)
    save_s = checks.run("resume state write", lambda: resume_check(config, device, work_dir(env)))
    attention_checks(checks, device, args)
    if args.skip_stages:
        checks.skip("stages", "--skip-stages")
    else:
        run_stage_checks(checks, args, device, out, env)
    failures, skipped = checks.failures, checks.status.count("skipped")
    print(f"\n{len(checks.status) - failures - skipped} checks ok, {failures} failed, {skipped} skipped; logs in "
          f"{out / 'logs'}")
    workers = torch.cuda.device_count() if device.type == "cuda" else 1
    projection.print_projection(works, columns, times, save_s or 0.0, workers, args.fast_epochs)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
