"""How long do the demo's clients take on each engine, and do the engines agree? The demo's 4 clients (config
`demo`, its `clients:` section) at the demo sizes of run_pickaback/demo.sh, once per engine, each in its own work
folder, then the results side by side.

    python tools/benchmark_clients.py                                  # local, simulation, deployment
    python tools/benchmark_clients.py --engines local simulation --exchange profile

The demo data is written to --data_root (default: a temporary folder); each engine's run goes to
<work_root>/<engine> (default: a temporary folder). It prints each engine's wall time, the bytes and messages of the
run, every task's final accuracy beside its baseline, and whether every engine gave the first one's picks, bytes,
accuracies and bit-identical kept checkpoints.
"""
import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import pandas as pd

from tools.make_demo_data import main as make_demo
from utils.engines.run import run_clients
from utils.errors import report_user_errors
from utils.layout import Layout
from utils.pipeline.settings import ENGINES, EXCHANGES
from utils.runtime import setup_logging

DEMO_SIZES = {"FINETUNE_EPOCHS": "10", "EPOCHS": "10", "NR_EPOCH_FOR_EACH_PRUNE": "2", "PRUNING_INTERVAL": "1",
              "TRACKER": "none"}
TIMES = ["seconds_baseline", "seconds_search", "seconds_learn"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES), help="the engines to time")
    p.add_argument("--exchange", choices=EXCHANGES, default="models", help="EXCHANGE of every run")
    p.add_argument("--data_root", help="where the demo data is written (default: a temporary folder)")
    p.add_argument("--work_root", help="where each engine's run goes (default: a temporary folder)")
    return p.parse_args(argv)


def kept(work):
    """{client/round: sha256 of the checkpoint the round kept}."""
    found = {}
    for state in sorted(Layout(work, "demo").client("x").parent.glob("*/client.json")):
        for r, entry in json.loads(state.read_text())["rounds"].items():
            found[f"{state.parent.name}/{r}"] = hashlib.sha256((state.parent / entry["kept"]).read_bytes()).hexdigest()
    return found


def outcome(work):
    layout = Layout(work, "demo")
    rows = pd.read_csv(layout.clients_csv).drop(columns=TIMES).sort_values(["round", "client", "task"])
    return rows.reset_index(drop=True), pd.read_csv(layout.clients_messages_csv), kept(work)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    data = Path(args.data_root or tempfile.mkdtemp(prefix="mmpab_demo_"))
    work_root = Path(args.work_root or tempfile.mkdtemp(prefix="mmpab_clients_"))
    if not (data / "demo").is_dir():
        make_demo(["--data_root", str(data)])
    seconds, results = {}, {}
    for engine in args.engines:
        work = work_root / engine
        env = {**os.environ, **DEMO_SIZES, "MMPAB_DATA_ROOT": str(data), "MMPAB_WORK_DIR": str(work),
               "ENGINE": engine, "EXCHANGE": args.exchange}
        os.environ.update({k: env[k] for k in ("MMPAB_DATA_ROOT", "MMPAB_WORK_DIR")})
        began = time.monotonic()
        run_clients("demo", env)
        seconds[engine] = time.monotonic() - began
        results[engine] = outcome(work)
    first = args.engines[0]
    rows, messages, _ = results[first]
    final = rows.groupby(["client", "task"]).last()[["accuracy", "baseline_acc"]]
    print(f"\nfinal accuracy of every task ({first}):\n{final.to_string()}")
    print(f"\n{len(messages)} messages, {messages.bytes.sum():,} bytes (EXCHANGE={args.exchange})")
    for engine in args.engines:
        r, m, k = results[engine]
        same = r.equals(rows) and m.equals(messages) and k == results[first][2]
        print(f"{engine:<11} {seconds[engine]:7.1f} s   same picks, bytes, accuracies and checkpoints as {first}: "
              f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
