#!/usr/bin/env bash
# Before a days-long run on a new GPU server: benchmarks, every stage on a small run, and the projected wall time of
# a full run of each real config (python3 tools/gpu_check.py --help says what it checks and its options).
#
#   bash tools/gpu_check.sh
#   bash tools/gpu_check.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."
# the checkout's own modules, also without pip install -e . (as run_pickaback/common.sh)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" tools/gpu_check.py "$@"
