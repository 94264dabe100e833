#!/usr/bin/env bash
# The README's first quick-start command: install the pinned requirements, write the demo data and run every stage
# on it with run_pickaback/run_all.sh demo, at the demo sizes below (a few minutes on 2 CPU cores).
#
#   bash run_pickaback/demo.sh
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

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    time "$PYTHON" -m pip install -q -r requirements.txt
fi
"$PYTHON" tools/make_demo_data.py
time bash run_pickaback/run_all.sh demo
