#!/usr/bin/env bash
# Baseline stage: train an independent single-task model for every task of a dataset config.
#
#   bash run_pickaback/baseline.sh <dataset_config>
#   FINETUNE_EPOCHS=5 TASK_IDS="1 2" bash run_pickaback/baseline.sh demo
#
# Writes checkpoints_perceiver_io/baseline_scratch/perceiver_io/<cfg>/<group>/checkpoint-<epochs>.pth.tar and the
# accuracy of every task to logs_perceiver_io/baseline_<cfg>_acc.txt. Variables below can be set in the environment.
source "$(dirname "$0")/common.sh"

ARCH="${ARCH:-perceiver_io}"
FINETUNE_EPOCHS="${FINETUNE_EPOCHS:-100}"
NUM_CLASSES="${NUM_CLASSES:--1}"
INIT_LR="${INIT_LR:-1e-2}"
WEIGHT_DECAY="${WEIGHT_DECAY:-4e-5}"
BATCH_SIZE="${BATCH_SIZE:-32}"
SEED="${SEED:-2}"
DEVICE="${DEVICE:-auto}"
BASELINE_FILE="logs_perceiver_io/baseline_${DATASET_CONFIG}_acc.txt"

$PYTHON "$REPO_ROOT/tools/get_dataset_name.py" "$DATASET_CONFIG" --check_data
mkdir -p logs_perceiver_io
for TASK_ID in $(task_ids); do
    DATASET="$(task_name "$TASK_ID")"
    echo "== baseline: ${DATASET_CONFIG} task ${TASK_ID} (${DATASET}, $(task_modality "$TASK_ID"))"
    $PYTHON "$REPO_ROOT/packnet_main_normal.py" \
        --arch "$ARCH" --expname baseline \
        --dataset_config "$DATASET_CONFIG" --dataset "$DATASET" --num_classes "$NUM_CLASSES" \
        --lr "$INIT_LR" --weight_decay "$WEIGHT_DECAY" --batch_size "$BATCH_SIZE" \
        --save_folder "checkpoints_perceiver_io/baseline_scratch/${ARCH}/${DATASET_CONFIG}/${DATASET}" \
        --epochs "$FINETUNE_EPOCHS" --mode finetune --logfile "$BASELINE_FILE" --seed "$SEED" --device "$DEVICE"
done
echo "baseline accuracies: $(cat "$BASELINE_FILE")"
