# Sourced by the stage scripts after their variables: answers --help, then runs the stage in Python
# (tools/run_stage.py reads the variables at the top of the calling script; the environment overrides them).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
# the checkout's own modules, also without pip install -e . (tools/run_stage.py imports utils, models, ...)
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit $([ $# -lt 1 ] && echo 2 || echo 0)
fi
exec "$PYTHON" "$REPO_ROOT/tools/run_stage.py" "$(basename "$0" .sh)" "$@"
