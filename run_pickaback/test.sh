#!/usr/bin/env bash
# Install the pinned requirements and run the test suite (the README's second quick-start command; CI runs it).
#
#   bash run_pickaback/test.sh [pytest arguments]
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0
fi
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q -r requirements.txt
export TQDM_DISABLE=1
exec "$PYTHON" -m pytest -q tests "$@"
