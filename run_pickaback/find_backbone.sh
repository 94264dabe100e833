#!/usr/bin/env bash
# Backbone search (ModelDiff): for each target task, pick the task whose baseline model decides most like it.
#
#   bash run_pickaback/find_backbone.sh <dataset_config>
#   TARGET_ID=3 bash run_pickaback/find_backbone.sh demo
#   CANDIDATES=cross SELECTION=original bash run_pickaback/find_backbone.sh oxford
#
# Needs the baselines of run_pickaback/baseline.sh <cfg>. Writes pickaback_<cfg>_result.csv (target_id,task_id)
# and pickback_<cfg>_table.csv (target_id,task_id,ddv_cos,ddv_euc,sim_cos,sim_euc) in the stages' working folder
# (the repository root), replacing the rows of the targets searched.
# TARGET_ID: a task id, a list like 1,3, or all (default). CANDIDATES: all (default), same or cross (the
# candidates' modality relative to the target's). SELECTION: similar (default: the most similar candidate) or
# original (the original code's rule: the largest distance). Variables below can be set in the environment.
source "$(dirname "$0")/common.sh"

ARCH="${ARCH:-perceiver_io}"
TARGET_ID="${TARGET_ID:-all}"
CANDIDATES="${CANDIDATES:-all}"
SELECTION="${SELECTION:-similar}"
PROFILE_SIZE="${PROFILE_SIZE:-32}"
EPSILON="${EPSILON:-0.1}"
ITERATIONS="${ITERATIONS:-100}"
SEED="${SEED:-2}"
DEVICE="${DEVICE:-auto}"
LOG_FILE="${LOG_FILE:-logs_perceiver_io/find_backbone_${DATASET_CONFIG}.log}"

mkdir -p "$(dirname "$LOG_FILE")"
$PYTHON "$REPO_ROOT/pickaback_perceiverIO.py" \
    --arch "$ARCH" --dataset_config "$DATASET_CONFIG" --target_id "$TARGET_ID" \
    --candidates "$CANDIDATES" --selection "$SELECTION" \
    --profile_size "$PROFILE_SIZE" --epsilon "$EPSILON" --iterations "$ITERATIONS" \
    --checkpoint_root checkpoints_perceiver_io --out_dir . \
    --seed "$SEED" --device "$DEVICE" --log_path "$LOG_FILE"
echo "backbones: $(tr '\n' ' ' < "pickaback_${DATASET_CONFIG}_result.csv")"
