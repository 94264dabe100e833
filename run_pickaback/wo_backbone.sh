#!/usr/bin/env bash
# Backbone stage: CPG training of each task from scratch, then ten gradual-pruning stages up to 0.95 sparsity.
#
#   bash run_pickaback/wo_backbone.sh <dataset_config>
#   EPOCHS=10 NR_EPOCH_FOR_EACH_PRUNE=3 TASK_IDS="1 5" bash run_pickaback/wo_backbone.sh demo
#
# Per task, R = checkpoints_perceiver_io/CPG_single_scratch_woexp/perceiver_io/<cfg>/<group>:
# R/scratch/checkpoint-<EPOCHS>.pth.tar, R/gradual_prune/<s>/checkpoint-<NR_EPOCH_FOR_EACH_PRUNE>.pth.tar,
# R/gradual_prune/record.txt ({"0.0": acc, "0.1": acc, ..., "0.95": acc}), R/train.log and R/train.csv.
# Exit codes of CPG_MM_main_normal.py: 2 = widen and rerun (up to MAX_NETWORK_WIDTH_MULTIPLIER), 3 = baseline
# file missing (stop), 5 = nothing to prune (skip pruning), 6 = stop pruning (later stages skipped).
source "$(dirname "$0")/common.sh"

ARCH="${ARCH:-perceiver_io}"
EPOCHS="${EPOCHS:-100}"
NUM_CLASSES="${NUM_CLASSES:--1}"
INIT_LR="${INIT_LR:-1e-2}"
PRUNING_LR="${PRUNING_LR:-1e-3}"
LR_MASK="${LR_MASK:-1e-4}"
WEIGHT_DECAY="${WEIGHT_DECAY:-4e-5}"
BATCH_SIZE="${BATCH_SIZE:-16}"
NETWORK_WIDTH_MULTIPLIER="${NETWORK_WIDTH_MULTIPLIER:-1.0}"
MAX_NETWORK_WIDTH_MULTIPLIER="${MAX_NETWORK_WIDTH_MULTIPLIER:-1.0}"
WIDTH_STEP="${WIDTH_STEP:-0.5}"
NR_EPOCH_FOR_EACH_PRUNE="${NR_EPOCH_FOR_EACH_PRUNE:-20}"
PRUNING_FREQUENCY="${PRUNING_FREQUENCY:-10}"
PRUNING_INTERVAL="${PRUNING_INTERVAL:-4}"
PRUNING_SCHEDULE="${PRUNING_SCHEDULE:-0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 0.95}"
TOTAL_NUM_TASKS="${TOTAL_NUM_TASKS:-5}"
SEED="${SEED:-2}"
DEVICE="${DEVICE:-auto}"
BASELINE_FILE="logs_perceiver_io/baseline_${DATASET_CONFIG}_acc.txt"

for TASK_ID in $(task_ids); do
    DATASET="$(task_name "$TASK_ID")"
    R="checkpoints_perceiver_io/CPG_single_scratch_woexp/${ARCH}/${DATASET_CONFIG}/${DATASET}"
    COMMON=(--arch "$ARCH" --expname wo_backbone --dataset_config "$DATASET_CONFIG" --dataset "$DATASET"
            --num_classes "$NUM_CLASSES" --weight_decay "$WEIGHT_DECAY" --batch_size "$BATCH_SIZE"
            --jsonfile "$BASELINE_FILE" --pruning_ratio_to_acc_record_file "$R/gradual_prune/record.txt"
            --log_path "$R/train.log" --total_num_tasks "$TOTAL_NUM_TASKS" --seed "$SEED" --device "$DEVICE")
    echo "== wo_backbone: ${DATASET_CONFIG} task ${TASK_ID} (${DATASET}, $(task_modality "$TASK_ID"))"
    rm -f "$R/gradual_prune/record.txt"

    finetune_with_growth "${COMMON[@]}" --lr "$INIT_LR" --lr_mask "$LR_MASK" --epochs "$EPOCHS" \
        --save_folder "$R/scratch"
    if [ "$FINETUNE_STATE" = 5 ]; then
        echo "$DATASET owns no weights: nothing to prune"
        continue
    fi

    START=0.0
    LOAD="$R/scratch"
    MASK_LR="$LR_MASK"
    for END in $PRUNING_SCHEDULE; do
        state=0
        $PYTHON "$REPO_ROOT/CPG_MM_main_normal.py" "${COMMON[@]}" --mode prune --lr "$PRUNING_LR" --lr_mask "$MASK_LR" \
            --epochs "$NR_EPOCH_FOR_EACH_PRUNE" --initial_sparsity "$START" --target_sparsity "$END" \
            --pruning_frequency "$PRUNING_FREQUENCY" --pruning_interval "$PRUNING_INTERVAL" \
            --load_folder "$LOAD" --save_folder "$R/gradual_prune" --network_width_multiplier "$W" \
            --max_allowed_network_width_multiplier "$MAX_NETWORK_WIDTH_MULTIPLIER" || state=$?
        case "$state" in
            0) ;;
            6) echo "stop pruning $DATASET at sparsity $END"; break ;;
            *) echo "pruning stage $START -> $END of $DATASET failed with exit code $state"; exit "$state" ;;
        esac
        START="$END"; LOAD="$R/gradual_prune"; MASK_LR=0.0
    done
    echo "record of ${DATASET}: $(cat "$R/gradual_prune/record.txt")"
done
