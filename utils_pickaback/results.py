"""The selection rules over the ModelDiff table (candidates.pick applies them), and the result files.

Rules: `similar` (default, the paper's intent) picks the candidate most similar to the target by the Euclidean-DDV
similarity; `original` picks the largest Euclidean-DDV distance, as the original code did, which
reproduces its published picks. Ties go to the first candidate, in the stage the lowest task id.

Files, as the original's (note the spelling "pickback" of the table):
    pickaback_<cfg>_result.csv   target_id,task_id
    pickback_<cfg>_table.csv     target_id,task_id,ddv_cos,ddv_euc,sim_cos,sim_euc
A run replaces every row of the targets it searched (no duplicates), keeps the other targets' rows, and writes
under a lock and atomically, so concurrent runs for different targets do not lose each other's rows.
"""
import math
from pathlib import Path

import pandas as pd

from utils.checkpoint import atomic_write, checked_columns, locked, read_table
from utils.errors import UserError

SELECTION_RULES = {"similar": "sim_euc", "original": "ddv_euc"}   # rule -> column whose maximum is picked
RESULT_COLUMNS = ["target_id", "task_id"]
TABLE_COLUMNS = ["target_id", "task_id", "ddv_cos", "ddv_euc", "sim_cos", "sim_euc"]
SCORES = {c: (-math.inf, math.inf) for c in TABLE_COLUMNS[2:]}      # finite: a NaN would decide no pick


def read_rows(path, columns, num_tasks=None):
    """The rows of an existing result or table CSV, checked: a UserError naming the file when it cannot be merged
    into (it does not parse, has another header or holds other than task ids: nothing is written when either file
    is broken), or, given the config's `num_tasks`, when a row
    names a task id outside 1..num_tasks (a file of another config), or a score that is not a finite number."""
    path = Path(path)
    old = read_table(path, columns)                   # parsed, with this header (an empty table when there is none)
    if path.is_file() and not all(pd.api.types.is_integer_dtype(old[c]) for c in columns[:2]):
        raise UserError(f"{path} does not hold {','.join(columns)} rows of task ids: delete it or restore it, then "
                        f"rerun the backbone search.")
    if num_tasks is not None:
        ids = old[columns[:2]].to_numpy().ravel()
        outside = sorted({int(i) for i in ids if not 1 <= i <= num_tasks})
        if outside:
            raise UserError(f"{path} names task id {outside[0]}, but the config has tasks 1..{num_tasks}: delete "
                            f"those rows or the file, then rerun the backbone search.")
    return checked_columns(old, path, SCORES)


def merge_rows(old, rows, columns):
    """`old` with every row of the targets in `rows` replaced by `rows`, sorted by target."""
    new = pd.DataFrame(rows, columns=columns)
    kept = old[~old["target_id"].isin(new["target_id"])]
    merged = new if kept.empty else pd.concat([kept, new], ignore_index=True)
    return merged.sort_values("target_id", kind="stable").reset_index(drop=True)


def write_results(result, table, table_rows, picks, num_tasks=None):
    """Update pickaback_<cfg>_result.csv and pickback_<cfg>_table.csv together: both are read and checked (task ids
    within 1..num_tasks when given) before either is written, so they never fall out of step. Returns their paths."""
    with locked(result), locked(table):
        merged = {table: merge_rows(read_rows(table, TABLE_COLUMNS, num_tasks), table_rows, TABLE_COLUMNS),
                  result: merge_rows(read_rows(result, RESULT_COLUMNS, num_tasks),
                                     [{"target_id": t, "task_id": k} for t, k in sorted(picks.items())],
                                     RESULT_COLUMNS)}
        for path, frame in merged.items():
            text = frame.to_csv(index=False, lineterminator="\n")
            atomic_write(path, lambda f, text=text: f.write(text.encode()))
    return result, table
