"""What running a stage's units through the executor costs: runs the demo's baseline stage with GPUS="cpu cpu" (tiny
settings, every task) and reads, from the timestamps of its log lines, the workers' start-up (from the stage's first
line to a worker's first line) and the overhead of each unit (from the line handing it out to the worker's first
line for it, plus from the worker's last line for it to the line that says it is done), on average, at most, and at
most over the units after each worker's first (whose first line also waits for what a task imports and loads the
first time in a process, with any executor). A benchmark, not a test; it reads the former hand-written pool's output
too, so the same script measured both.

    python tools/make_demo_data.py --data_root /tmp/demo_data
    python tools/benchmark_executor.py --data_root /tmp/demo_data
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = {"FINETUNE_EPOCHS": "1", "BATCH_SIZE": "16", "GPUS": "cpu cpu", "OMP_NUM_THREADS": "1", "FORCE": "1",
        "TQDM_DISABLE": "1"}
# a worker's line: "(gpu cpu#1 pid=123) <line>" as Ray prints it (or "[gpu cpu#1] <line>", the former pool's)
WORKER = re.compile(r"^(?:\(gpu (\S+) pid=\d+(?:, ip=\S+)?\)|\[gpu (\S+)\]) "
                    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (.*)$")
DRIVER = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - root - INFO - (.*)$")
UNIT = re.compile(r"\[gpu (\S+)\] baseline (task \d+ \(group\d+\)): (started|done in \d+ s)$")


def stamp(text):
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def measure(lines):
    """(start-up, [overhead of each unit], [overhead of each unit but each worker's first]) from a GPUS run's output
    lines."""
    begun, handed, first, last, done, firsts = None, {}, {}, {}, {}, set()
    current = {}                                         # worker -> the unit it runs
    for line in lines:
        if w := WORKER.match(line):
            worker, at = w.group(1) or w.group(2), stamp(w.group(3))
            unit = current.get(worker)
            if unit is not None:
                first.setdefault(unit, at)
                last[unit] = at
            continue
        if (d := DRIVER.match(line)) is None:
            continue
        at, text = stamp(d.group(1)), d.group(2)
        if text.startswith("==== stage 1/1 baseline"):
            begun = at
        if u := UNIT.search(text):
            worker, unit, what = u.groups()
            if what == "started":
                if worker not in current:
                    firsts.add(unit)
                handed[unit], current[worker] = at, unit
            else:
                done[unit] = at
    startup = min(first.values()) - begun
    overheads = {u: (first[u] - handed[u]) + (done[u] - last[u]) for u in done}
    return startup, list(overheads.values()), [o for u, o in overheads.items() if u not in firsts]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True, help="the demo data (tools/make_demo_data.py)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="benchmark-executor-") as work:
        env = {**os.environ, **TINY, "MMPAB_DATA_ROOT": args.data_root, "MMPAB_WORK_DIR": work}
        began = time.time()
        out = subprocess.run(["bash", str(REPO / "run_pickaback" / "baseline.sh"), "demo"], cwd=work, env=env,
                             capture_output=True, text=True, check=True).stdout
        wall = time.time() - began
    startup, overheads, later = measure(out.splitlines())
    print(f"baseline on the demo, {len(overheads)} units on GPUS=\"cpu cpu\": {wall:.1f} s in all; the workers' "
          f"start-up {startup:.2f} s; overhead per unit {statistics.mean(overheads):.3f} s on average, "
          f"{max(overheads):.3f} s at most, {max(later, default=0):.3f} s at most after each worker's first unit")


if __name__ == "__main__":
    sys.exit(main())
