"""Run one stage of the Pick-a-back pipeline (or all of them, in order) for a dataset config.

    python tools/run_stage.py baseline demo
    python tools/run_stage.py all demo
    TASK_IDS="1 3" FORCE=1 EPOCHS=10 python tools/run_stage.py wo_backbone demo

The run_pickaback/<stage>.sh scripts call this. Each stage's settings are the variables at the top of its script
(the original's names), overridden by the environment. Also read from the environment: TASK_IDS (default: every task
of the config), FORCE=1 (redo tasks that are already finished with the same settings), MMPAB_WORK_DIR (where
checkpoints_perceiver_io/, logs_perceiver_io/ and the pickaback CSVs go; default: the repository), MMPAB_DATA_ROOT,
NPROC=N (each task on N processes under torchrun; BATCH_SIZE a multiple of N) and GPUS: with two or more entries ("0
1 2 3", or "cpu cpu" without CUDA) the independent tasks of baseline, wo_backbone and w_backbone_MM run in parallel
on a local Ray instance, one worker per entry taking the next task when it is free, find_backbone splits its targets
over the workers, and compare_selection and `sequence <cfg> compare` run their trainings and sequence runs so; each
worker's lines are prefixed (gpu <entry> pid=N) (one entry only picks the device); RAY_ADDRESS=HEAD:6379 runs them on
that Ray cluster instead. `all`, `compare_selection` and `sequence` end by writing the report (tools/report.py) and
printing its path. Exits 0 when
every task is done, else with one sentence naming the stage and the task (exit 3: a baseline accuracy is missing);
Ctrl-C prints one line and exits 130."""
import argparse
import os
import sys

from utils.engines.units import run_units
from utils.distributed import init_from_environment, is_main_process, launch, shutdown
from utils.errors import UserError, report_user_errors
from utils.pipeline import SETTINGS, run_stage, settings_of
from utils.layout import Layout
from utils.pipeline.context import work_dir
from utils.pipeline.runlock import holding
from utils.runtime import setup_logging


def parse_args(argv=None):
    lines = [f"  {stage}: " + ", ".join(f"{name}={cls.defaults()[name]!r}" for _, name in cls.variables())
             for stage, cls in SETTINGS.items()]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="stages and their variables (defaults as set in the scripts):\n" +
                                "\n".join(lines))
    p.add_argument("stage", choices=[*SETTINGS, "all", "run_all"],
                   help="a stage, all (run_all) of them in order, compare_selection (the selection rules side by "
                        "side) or sequence (one network over a sequence of tasks)")
    p.add_argument("dataset_config", help="section of utils/dataset_config.yaml (cub, oxford, mscoco, demo, ...)")
    p.add_argument("what", nargs="?", choices=["compare"],
                   help="sequence: compare the orders similar, config and random for each of SEEDS; clients: the "
                        "selection rules of SELECTIONS for each of SEEDS")
    return p.parse_args(argv)


def processes(env):
    """NPROC: the number of processes each task runs on (1: no torchrun)."""
    value = str(env.get("NPROC") or "1").strip()
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise UserError(f"NPROC={env.get('NPROC')!r} is not a whole number of at least 1: set NPROC in the "
                        f"environment to 1 (one process) or N (each task on N processes under torchrun).")
    return int(value)


def check_batch_sizes(stage, nproc, env):
    """Before starting torchrun: BATCH_SIZE (the global batch) of every stage to be run splits evenly over the
    `nproc` processes."""
    for name, settings in settings_of("all" if stage == "run_all" else stage, env).items():
        batch_size = getattr(settings, "batch_size", None)
        if batch_size is not None and batch_size % nproc:
            raise UserError(f"BATCH_SIZE={batch_size} of stage {name} (the global batch, split over the processes) is "
                            f"not a multiple of NPROC={nproc}: set BATCH_SIZE to a multiple of {nproc} or change "
                            f"NPROC.")


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    nproc = processes(os.environ)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:         # NPROC=N: this stage again, under torchrun
        check_batch_sizes(args.stage, nproc, os.environ)
        with holding(Layout(work_dir(), args.dataset_config).run_lock, args.stage):     # the ranks inherit it
            code = launch(nproc, [__file__, *(argv if argv is not None else sys.argv[1:])])
        sys.exit(code)
    init_from_environment()
    setup_logging()
    stage = "all" if args.stage == "run_all" else args.stage
    if args.what and stage not in ("sequence", "clients"):
        raise UserError(f"'{args.what}' follows only the sequence and clients stages (sequence.sh <cfg> compare), "
                        f"not {stage}.")
    if stage == "clients":                                    # the clients' rounds, on the engine ENGINE names
        from utils.engines.run import run_clients
        run = run_clients(args.dataset_config, os.environ, compare=bool(args.what))
        from tools.report import write_report
        path, _ = write_report(run.cfg.name, run.work_dir, run.cfg.data_root)
        print(f"report: {path}")
        return
    if args.what:
        stage = "sequence_compare"
    run = run_stage(stage, args.dataset_config, engine=run_units)
    main_process = is_main_process()
    shutdown()
    if stage in ("all", "compare_selection", "sequence", "sequence_compare") and main_process:   # last: the report
        from tools.report import write_report             # matplotlib and the report: only where one is written
        path, _ = write_report(run.cfg.name, run.work_dir, run.cfg.data_root)
        print(f"report: {path}")


if __name__ == "__main__":
    main()
