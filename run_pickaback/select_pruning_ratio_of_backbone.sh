#!/usr/bin/env bash
# Pruning-ratio choice: for every task's backbone, take the largest pruning ratio whose accuracy stays within
# ALLOW_ACC_LOSS of the baseline and place that checkpoint in R/gradual_prune/ for the later stages.
#
#   bash run_pickaback/select_pruning_ratio_of_backbone.sh <dataset_config>
source "$(dirname "$0")/common.sh"

ARCH="${ARCH:-perceiver_io}"
ALLOW_ACC_LOSS="${ALLOW_ACC_LOSS:-0.001}"
NETWORK_WIDTH_MULTIPLIER="${NETWORK_WIDTH_MULTIPLIER:-1.0}"
MAX_NETWORK_WIDTH_MULTIPLIER="${MAX_NETWORK_WIDTH_MULTIPLIER:-1.0}"
BASELINE_FILE="logs_perceiver_io/baseline_${DATASET_CONFIG}_acc.txt"

for TASK_ID in $(task_ids); do
    DATASET="$(task_name "$TASK_ID")"
    R="checkpoints_perceiver_io/CPG_single_scratch_woexp/${ARCH}/${DATASET_CONFIG}/${DATASET}"
    $PYTHON "$REPO_ROOT/tools/choose_appropriate_pruning_ratio_for_next_task_notrmfiles.py" \
        --pruning_ratio_to_acc_record_file "$R/gradual_prune/record.txt" --baseline_acc_file "$BASELINE_FILE" \
        --allow_acc_loss "$ALLOW_ACC_LOSS" --dataset "$DATASET" \
        --network_width_multiplier "$NETWORK_WIDTH_MULTIPLIER" \
        --max_allowed_network_width_multiplier "$MAX_NETWORK_WIDTH_MULTIPLIER" --log_path "$R/train.log"
done
