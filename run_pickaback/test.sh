#!/usr/bin/env bash
# Install the pinned requirements and this checkout (pip install -e .), run the linters (ruff, then import-linter's
# contracts: see pyproject.toml), then the test suite on two processes (the README's second quick-start command;
# CI runs it).
#
#   bash run_pickaback/test.sh [pytest arguments]
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0
fi
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q -r requirements.txt
# the setuptools pinned in requirements.txt builds it: no isolated build environment to download (offline, ~7 s)
"$PYTHON" -m pip install -q -e . --no-deps --no-build-isolation
# the linters of $PYTHON's environment (the ones just installed), not whatever is first on PATH
"$PYTHON" -m ruff check .
"$PYTHON" -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())'
export TQDM_DISABLE=1
# two processes (pytest-xdist): each test uses one thread (tests/conftest.py) and its own folders; tests marked
# xdist_group (the Flower engines' runs, many processes each) run one after the other in one of them
exec "$PYTHON" -m pytest -q -n 2 --dist loadgroup tests "$@"
