#!/usr/bin/env bash
# k/v transfer: for each (target, backbone) row of the backbone search result, write the backbone's chosen CPG
# checkpoint with the target's input adapter and k/v projection copied in (cross-modal pairs only; same-modality
# pairs are written unchanged), as <backbone>/gradual_prune/checkpoint-<e>_kv_transfer_<target>.pth.tar.
#
#   bash run_pickaback/transfer_kv.sh <dataset_config>
#   CSV_PATH=my_result.csv bash run_pickaback/transfer_kv.sh oxford
#
# Needs run_pickaback/find_backbone.sh, wo_backbone.sh and select_pruning_ratio_of_backbone.sh for <cfg>; every row
# is checked before any file is written. CSV_PATH empty = pickaback_<cfg>_result.csv. Logs to
# logs_perceiver_io/transfer_kv_<cfg>.log.
ARCH="${ARCH:-perceiver_io}"
CSV_PATH="${CSV_PATH:-}"
source "$(dirname "$0")/common.sh"
