#!/usr/bin/env bash
# Target stage: CPG training of each target task on top of the backbone ModelDiff picked for it, widening the
# network (1.0 -> 1.5 -> 2.0) while the target stays below its baseline accuracy.
#
#   bash run_pickaback/w_backbone_MM.sh <dataset_config>
#   EPOCHS=10 bash run_pickaback/w_backbone_MM.sh demo
#
# Reads pickaback_<cfg>_result.csv (rows target_id,task_id). Starts from the k/v-transferred backbone
# R_K/gradual_prune/*_kv_transfer_<target_id>.pth.tar when run_pickaback/transfer_kv.sh made one, else from the
# chosen backbone checkpoint in R_K/gradual_prune/. Writes
# checkpoints_perceiver_io/CPG_fromsingle_scratch_woexp_target/perceiver_io/<cfg>/<task>/<target>/{scratch/,
# gradual_prune/record.txt, train.log, train.csv} and logs_perceiver_io/w_backbone_<cfg>_acc.csv.
source "$(dirname "$0")/common.sh"

ARCH="${ARCH:-perceiver_io}"
EPOCHS="${EPOCHS:-100}"
NUM_CLASSES="${NUM_CLASSES:--1}"
INIT_LR="${INIT_LR:-1e-2}"
LR_MASK="${LR_MASK:-1e-4}"
WEIGHT_DECAY="${WEIGHT_DECAY:-4e-5}"
BATCH_SIZE="${BATCH_SIZE:-32}"
NETWORK_WIDTH_MULTIPLIER="${NETWORK_WIDTH_MULTIPLIER:-1.0}"
MAX_NETWORK_WIDTH_MULTIPLIER="${MAX_NETWORK_WIDTH_MULTIPLIER:-2.0}"
WIDTH_STEP="${WIDTH_STEP:-0.5}"
TOTAL_NUM_TASKS="${TOTAL_NUM_TASKS:-5}"
SEED="${SEED:-2}"
DEVICE="${DEVICE:-auto}"
BASELINE_FILE="${BASELINE_FILE:-logs_perceiver_io/baseline_${DATASET_CONFIG}_acc.txt}"
RESULT_CSV="${RESULT_CSV:-pickaback_${DATASET_CONFIG}_result.csv}"

if [ ! -f "$RESULT_CSV" ]; then
    echo "error: $RESULT_CSV does not exist: run run_pickaback/find_backbone.sh $DATASET_CONFIG first." >&2
    exit 1
fi
tail -n +2 "$RESULT_CSV" | tr -d '\r" ' | while IFS=, read -r TARGET_ID TASK_ID _; do
    [ -n "$TARGET_ID" ] || continue
    DATASET_TARGET="$(task_name "$TARGET_ID")"
    DATASET_TASK="$(task_name "$TASK_ID")"
    BACKBONE="checkpoints_perceiver_io/CPG_single_scratch_woexp/${ARCH}/${DATASET_CONFIG}/${DATASET_TASK}/gradual_prune"
    OUT="checkpoints_perceiver_io/CPG_fromsingle_scratch_woexp_target/${ARCH}/${DATASET_CONFIG}/${DATASET_TASK}/${DATASET_TARGET}"
    KV="$(ls "$BACKBONE"/*_kv_transfer_"${TARGET_ID}".pth.tar 2>/dev/null | head -n 1 || true)"
    if [ -n "$KV" ]; then START=(--load_checkpoint "$KV"); else START=(--load_folder "$BACKBONE"); fi
    echo "== w_backbone: target ${TARGET_ID} (${DATASET_TARGET}, $(task_modality "$TARGET_ID")) on backbone" \
         "${TASK_ID} (${DATASET_TASK}) from ${KV:-$BACKBONE}"
    rm -f "$OUT/gradual_prune/record.txt"
    finetune_with_growth --arch "$ARCH" --expname w_backbone --dataset_config "$DATASET_CONFIG" \
        --dataset "$DATASET_TARGET" --num_classes "$NUM_CLASSES" --lr "$INIT_LR" --lr_mask "$LR_MASK" \
        --weight_decay "$WEIGHT_DECAY" --batch_size "$BATCH_SIZE" --epochs "$EPOCHS" "${START[@]}" \
        --save_folder "$OUT/scratch" --pruning_ratio_to_acc_record_file "$OUT/gradual_prune/record.txt" \
        --log_path "$OUT/train.log" --total_num_tasks "$TOTAL_NUM_TASKS" --seed "$SEED" --device "$DEVICE" \
        --jsonfile "$BASELINE_FILE"
    $PYTHON "$REPO_ROOT/tools/summarize_targets.py" --dataset_config "$DATASET_CONFIG" --target "$DATASET_TARGET" \
        --backbone "$DATASET_TASK" --width "$W" --record "$OUT/gradual_prune/record.txt" \
        --baseline_acc_file "$BASELINE_FILE" --out "logs_perceiver_io/w_backbone_${DATASET_CONFIG}_acc.csv"
done
