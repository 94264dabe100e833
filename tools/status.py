"""Where a run of a dataset config stands, from another terminal while it runs (or after it stopped): for every
stage of run_all and every task (and every client's baselines and rounds, where the config declares clients or
NUM_CLIENTS is set), finished (with its main figure: accuracy, record, chosen ratio, pick, target
accuracy), running (with the epoch its resume state holds), resumable, interrupted or not started, and whether a
finished task's recorded settings still match the scripts' current variables (if not, the stage would redo it).

    python tools/status.py demo
    TASK_IDS="1 3" MMPAB_WORK_DIR=/scratch/run1 python tools/status.py oxford
    EPOCHS=200 python tools/status.py oxford        # which finished tasks a rerun with EPOCHS=200 would redo

It reads the run's files only (the records beside the outputs, the .running.json markers of tasks being worked on,
the resume states memory-mapped, the run lock's holder): nothing is trained, locked or written. The settings are
read as the stages read them: the variables at the top of run_pickaback/<stage>.sh, overridden by the environment;
TASK_IDS, MMPAB_WORK_DIR and MMPAB_DATA_ROOT as for the stages."""
import argparse
import os

from utils.clients.status import client_states, declares_clients
from utils.errors import report_user_errors
from utils.pipeline.context import Run
from utils.pipeline.status import report, run_states


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_config", help="section of utils/dataset_config.yaml (cub, oxford, mscoco, demo, ...)")
    return p.parse_args(argv)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    run = Run.from_environment(args.dataset_config, os.environ)
    states = run_states(run, os.environ)
    if declares_clients(run, os.environ):                      # the clients' rounds (run_pickaback/clients.sh)
        states["clients"] = client_states(run, os.environ)
    print(report(run, states))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
