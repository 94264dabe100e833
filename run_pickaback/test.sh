#!/usr/bin/env bash
# Install the pinned requirements and run the test suite (the README's second quick-start command; CI runs it).
#
#   bash run_pickaback/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q -r requirements.txt
export TQDM_DISABLE=1
exec "$PYTHON" -m pytest -q tests "$@"
