"""Record a target's accuracy on top of its backbone beside its baseline accuracy, one row per (target, backbone),
in logs_perceiver_io/w_backbone_<cfg>_acc.csv (re-running a pair replaces its row), and print the table."""
import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.checkpoint import locked, read_json  # noqa: E402
from utils.errors import UserError, report_user_errors  # noqa: E402


@report_user_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset_config", required=True, help="config name")
    p.add_argument("--target", required=True, help="target task name")
    p.add_argument("--backbone", required=True, help="backbone task name")
    p.add_argument("--width", type=float, default=1.0, help="final width multiplier")
    p.add_argument("--record", required=True, help="the target's record.txt")
    p.add_argument("--baseline_acc_file", required=True, help="baseline accuracy JSON")
    p.add_argument("--out", required=True, help="CSV to update")
    args = p.parse_args(argv)
    record, baselines = read_json(args.record), read_json(args.baseline_acc_file, {})
    if record is None or "0.0" not in record:
        raise UserError(f"{args.record} has no target accuracy: the target training did not finish.")
    row = {"target": args.target, "backbone": args.backbone, "width": args.width,
           "target_acc": float(record["0.0"]), "baseline_acc": float(baselines.get(args.target, "nan"))}
    out = Path(args.out)
    with locked(out):
        table = pd.read_csv(out) if out.is_file() else pd.DataFrame(columns=list(row))
        table = table[~((table.target == args.target) & (table.backbone == args.backbone))]
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
        table.to_csv(out, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
