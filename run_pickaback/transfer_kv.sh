#!/usr/bin/env bash
# k/v transfer: for each (target, backbone) row of the backbone search result, write the backbone's CPG checkpoint
# with the target's input adapter and k/v projection copied in (cross-modal pairs only; same-modality pairs are
# written unchanged), as <backbone>/gradual_prune/checkpoint-<e>_kv_transfer_<target>.pth.tar.
#
#   bash run_pickaback/transfer_kv.sh <dataset_config>
#   CSV_PATH=my_result.csv bash run_pickaback/transfer_kv.sh oxford
#
# Needs run_pickaback/find_backbone.sh, wo_backbone.sh and select_pruning_ratio_of_backbone.sh for <cfg>. Variables
# below can be set in the environment.
source "$(dirname "$0")/common.sh"

ARCH="${ARCH:-perceiver_io}"
CSV_PATH="${CSV_PATH:-pickaback_${DATASET_CONFIG}_result.csv}"
LOG_FILE="${LOG_FILE:-logs_perceiver_io/transfer_kv_${DATASET_CONFIG}.log}"

mkdir -p "$(dirname "$LOG_FILE")"
$PYTHON "$REPO_ROOT/transfer_kv_perceiver_io.py" \
    --arch "$ARCH" --dataset_config "$DATASET_CONFIG" --csv_path "$CSV_PATH" \
    --checkpoint_root checkpoints_perceiver_io --log_path "$LOG_FILE"
