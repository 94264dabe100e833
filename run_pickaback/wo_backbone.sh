#!/usr/bin/env bash
# Backbone stage: CPG training of each task from scratch (widening WIDTH_STEP at a time while below the baseline,
# up to MAX_NETWORK_WIDTH_MULTIPLIER), then gradual pruning along PRUNING_SCHEDULE.
#
#   bash run_pickaback/wo_backbone.sh <dataset_config>
#   EPOCHS=10 NR_EPOCH_FOR_EACH_PRUNE=3 TASK_IDS="1 5" bash run_pickaback/wo_backbone.sh demo
#
# Per task, R = checkpoints_perceiver_io/CPG_single_scratch_woexp/perceiver_io/<cfg>/<group>:
# R/scratch/checkpoint-<EPOCHS>.pth.tar, R/gradual_prune/<s>/checkpoint-<NR_EPOCH_FOR_EACH_PRUNE>.pth.tar,
# R/gradual_prune/record.txt ({"0.0": acc, "0.1": acc, ..., "0.95": acc}), R/train.log, R/train.csv and
# R/stage.json (the settings and the files written). Pruning stops early when the training accuracy drops to 95 %
# or below, or at the original's sparsity upper bound. Needs run_pickaback/baseline.sh <cfg> (exit 3 without it).
# Tasks already finished with the same settings are skipped (FORCE=1 redoes them).
# GPUS="0 1 2 3" runs the tasks in parallel, one worker per GPU (GPUS="cpu cpu" on the CPU; README).
# RAY_ADDRESS=HEAD:6379 runs them on that Ray cluster instead, on every GPU it has (README, "a Ray cluster").
# NPROC=4 trains each task on 4 processes under torchrun (DistributedDataParallel; BATCH_SIZE is the global batch).
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
AMP="${AMP:-0}"                 # 1: bf16 mixed precision (autocast) on CUDA, and on the CPU where supported
RECIPE="${RECIPE:-original}"    # original (SGD at INIT_LR, x0.1 at 50% and 80%) or fast (Adam, warm-up, cosine; README)
source "$(dirname "$0")/common.sh"
