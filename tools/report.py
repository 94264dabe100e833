"""Write the report of a dataset config's Pick-a-back run: what every stage produced, in one Markdown file with
figures and a CSV of every number.

    python tools/report.py demo
    MMPAB_WORK_DIR=/tmp/run MMPAB_DATA_ROOT=/tmp/data python tools/report.py demo --device cpu

Reads the stages' own files through their records (stage.json, choice.json, the search's manifest; utils/layout.py
says where each lives) and writes, under logs_perceiver_io/ of the working folder:

    report_<cfg>.md               per target: baseline, picked backbone, accuracy on it, gain, width, parameters
                                  owned / reused / grown, the backbone's pruning ratio; the backbone search's
                                  similarity matrix; each backbone's accuracy against sparsity; continual-learning
                                  metrics (accuracy matrix, average accuracy, forgetting, BWT, forward transfer,
                                  parameters); the selection rules side by side when compare_selection_<cfg>.csv
                                  exists; the sequence run (one network learning the tasks in turn: accuracy
                                  matrix, metrics, parameters and width, the order rules) when sequence_<cfg>.csv
                                  exists; the clients run (per client its accuracy matrix, who borrowed from whom,
                                  the bytes per round, the selection rules side by side with bytes per pick) when
                                  clients_<cfg>.csv exists
    report_<cfg>_similarity.png   report_<cfg>_sparsity.png   report_<cfg>_accuracy.png   (report_<cfg>_selection.png)
    (report_<cfg>_sequence_matrix.png   report_<cfg>_sequence.png)   (report_<cfg>_clients_picks.png)
    report_<cfg>.csv              every number of the report: section, item, metric, value

Forgetting is measured, not assumed: the backbone task is evaluated on its test set from the chosen backbone
checkpoint and again from the target's checkpoint (this needs the data; --no_eval skips it). A stage that has not
run is listed as missing and everything else is still written; the report's path is printed at the end.
"""
import argparse

from utils.errors import report_user_errors
from utils.pipeline.cli import SIZE
from utils.report import write_report  # does the work; importable from here too (tools/run_stage.py)

__all__ = ["main", "parse_args", "write_report"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_config", help="section of utils/dataset_config.yaml (cub, oxford, mscoco, demo, ...)")
    p.add_argument("--work_dir", help="the stages' working folder (default: $MMPAB_WORK_DIR, else the repository)")
    p.add_argument("--data_root", help="the data (default: $MMPAB_DATA_ROOT, else data/ in the repository)")
    p.add_argument("--arch", default="perceiver_io")
    p.add_argument("--device", default="cpu", help="where to evaluate the chains: cpu (default), auto, cuda, cuda:N")
    p.add_argument("--batch_size", type=SIZE, default=100, help="test batch size of the evaluations")
    p.add_argument("--no_eval", action="store_true", help="do not evaluate the chains (forgetting, BWT and the "
                   "accuracy matrix are then listed as not measured)")
    return p.parse_args(argv)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    path, _ = write_report(args.dataset_config, args.work_dir, args.data_root, args.device, args.batch_size,
                           not args.no_eval, args.arch)
    print(path)


if __name__ == "__main__":
    main()
