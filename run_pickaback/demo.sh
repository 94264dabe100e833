#!/usr/bin/env bash
# The README's first quick-start command: install the pinned requirements and this checkout (pip install -e .),
# write the demo data and run every stage on it with run_pickaback/run_all.sh demo, at the demo sizes below (1–2
# minutes on 2 CPU cores), ending with the report's path.
#
#   bash run_pickaback/demo.sh             # every stage, then the report
#   bash run_pickaback/demo.sh compare     # then also the selection rules side by side (compare_selection.sh)
#   bash run_pickaback/demo.sh sequence    # then also all 8 tasks in one network, in turn (sequence.sh)
#   bash run_pickaback/demo.sh clients     # only the demo's 4 clients (Pick-a-back's devices), each learning its
#                                          # 2 tasks in rounds and borrowing from its peers (clients.sh; ENGINE=local
#                                          # without Flower)
#   bash run_pickaback/demo.sh status      # only where the demo run stands (tools/status.py at the demo sizes;
#                                          # from another terminal while it runs, too)
#
# SKIP_INSTALL=1 skips the pip step. Any stage variable can be set in the environment as usual (FORCE=1 redoes
# finished tasks); a rerun skips everything already finished.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0
fi
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHON
# demo sizes (the stages' own defaults are the original's, for the real datasets)
export FINETUNE_EPOCHS="${FINETUNE_EPOCHS:-10}" EPOCHS="${EPOCHS:-10}" NR_EPOCH_FOR_EACH_PRUNE="${NR_EPOCH_FOR_EACH_PRUNE:-2}"
export PRUNING_INTERVAL="${PRUNING_INTERVAL:-1}"
# the comparison trains each target on 5 samples per class: with all 100 every demo target learns alone
export TARGET_TRAIN_PER_CLASS="${TARGET_TRAIN_PER_CLASS:-5}"

# the checkout's own modules without an install too (SKIP_INSTALL=1)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "${1:-}" = status ]; then
    exec "$PYTHON" tools/status.py demo
fi
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    time "$PYTHON" -m pip install -q -r requirements.txt
    "$PYTHON" -m pip install -q -e . --no-deps --no-build-isolation
fi
"$PYTHON" tools/make_demo_data.py
if [ "${1:-}" = clients ]; then                # the clients train their own baselines: no stage of run_all needed
    time bash run_pickaback/clients.sh demo
    exit 0
fi
time bash run_pickaback/run_all.sh demo
if [ "${1:-}" = compare ]; then
    time bash run_pickaback/compare_selection.sh demo
fi
if [ "${1:-}" = sequence ]; then
    time bash run_pickaback/sequence.sh demo
fi
