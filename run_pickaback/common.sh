# Shared set-up of the stage scripts (sourced, not run): the repository root, the working folder, the python to
# use and the config's task list. Every variable here can be overridden from the environment.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Stages read and write checkpoints_perceiver_io/, logs_perceiver_io/ and the pickaback CSVs relative to the
# working folder: the repository unless MMPAB_WORK_DIR says otherwise.
WORK_DIR="${MMPAB_WORK_DIR:-$REPO_ROOT}"
mkdir -p "$WORK_DIR"
cd "$WORK_DIR"
PYTHON="${PYTHON:-python}"
export PYTHONUNBUFFERED=1

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit $([ $# -lt 1 ] && echo 2 || echo 0)
fi
DATASET_CONFIG="$1"
NUM_TASKS="$($PYTHON "$REPO_ROOT/tools/get_dataset_name.py" "$DATASET_CONFIG" --num_tasks)"

task_name() { $PYTHON "$REPO_ROOT/tools/get_dataset_name.py" "$DATASET_CONFIG" "$1"; }
task_modality() { $PYTHON "$REPO_ROOT/tools/get_dataset_name.py" "$DATASET_CONFIG" "$1" --modality; }
# TASK_IDS="1 3" limits a script to some tasks; the default is every task of the config.
task_ids() { echo "${TASK_IDS:-$(seq 1 "$NUM_TASKS")}"; }

# Float arithmetic and comparison for the width loop (bash has none).
fadd() { $PYTHON -c "print(round($1 + $2, 4))"; }
fge() { $PYTHON -c "import sys; sys.exit(0 if $1 >= $2 - 1e-9 else 1)"; }

# CPG finetune with growth: run CPG_MM_main_normal.py --mode finetune with the given arguments at width
# NETWORK_WIDTH_MULTIPLIER, and on exit 2 rerun WIDTH_STEP wider, up to MAX_NETWORK_WIDTH_MULTIPLIER. Sets W (the
# final width) and FINETUNE_STATE (0, or 5 = the task owns no weights); stops the script on 3 and on failures.
finetune_with_growth() {
    W="$NETWORK_WIDTH_MULTIPLIER"
    while true; do
        FINETUNE_STATE=0
        $PYTHON "$REPO_ROOT/CPG_MM_main_normal.py" "$@" --mode finetune --network_width_multiplier "$W" \
            --max_allowed_network_width_multiplier "$MAX_NETWORK_WIDTH_MULTIPLIER" < /dev/null || FINETUNE_STATE=$?
        case "$FINETUNE_STATE" in
            0|5) return 0 ;;
            2) if fge "$W" "$MAX_NETWORK_WIDTH_MULTIPLIER"; then return 0; fi
               W="$(fadd "$W" "$WIDTH_STEP")"; echo "expanding the network to width x$W" ;;
            3) echo "Provide the baseline file (run run_pickaback/baseline.sh $DATASET_CONFIG)." >&2
               exit 3 ;;
            *) echo "finetune failed with exit code $FINETUNE_STATE" >&2; exit "$FINETUNE_STATE" ;;
        esac
    done
}
