#!/usr/bin/env bash
# Backbone search (ModelDiff): for each target task, pick the task whose baseline model decides most like it.
#
#   bash run_pickaback/find_backbone.sh <dataset_config>
#   TARGET_ID=3 bash run_pickaback/find_backbone.sh demo
#   CANDIDATES=cross SELECTION=original bash run_pickaback/find_backbone.sh oxford
#
# Needs the baselines of run_pickaback/baseline.sh <cfg>. Writes pickaback_<cfg>_result.csv (target_id,task_id)
# and pickback_<cfg>_table.csv (target_id,task_id,ddv_cos,ddv_euc,sim_cos,sim_euc) in the working folder,
# replacing the rows of the targets searched, with pickaback_<cfg>_stage.json (the settings of each target's row),
# and logs to logs_perceiver_io/find_backbone_<cfg>.log.
# TARGET_ID: a task id, a list like 1,3, or all (default: TASK_IDS, else every task). CANDIDATES: all (default),
# same or cross (the candidates' modality relative to the target's). SELECTION: similar (default: the most similar
# candidate) or original (the original code's rule: the largest distance).
# GPUS="0 1 2 3" splits the targets over one worker per GPU (GPUS="cpu cpu" on the CPU; README).
# RAY_ADDRESS=HEAD:6379 runs them on that Ray cluster instead, on every GPU it has (README, "a Ray cluster").
ARCH="${ARCH:-perceiver_io}"
TARGET_ID="${TARGET_ID:-all}"
CANDIDATES="${CANDIDATES:-all}"
SELECTION="${SELECTION:-similar}"
PROFILE_SIZE="${PROFILE_SIZE:-32}"
EPSILON="${EPSILON:-0.1}"
ITERATIONS="${ITERATIONS:-100}"
SEED="${SEED:-2}"
DEVICE="${DEVICE:-auto}"
AMP="${AMP:-0}"                 # 1: bf16 mixed precision (autocast) on CUDA, and on the CPU where supported
source "$(dirname "$0")/common.sh"
