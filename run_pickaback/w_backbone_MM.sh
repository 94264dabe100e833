#!/usr/bin/env bash
# Target stage: CPG training of each target task on top of the backbone ModelDiff picked for it, widening the
# network (1.0 -> 1.5 -> 2.0) while the target stays below its baseline accuracy.
#
#   bash run_pickaback/w_backbone_MM.sh <dataset_config>
#   EPOCHS=10 bash run_pickaback/w_backbone_MM.sh demo
#
# Reads RESULT_CSV (empty = pickaback_<cfg>_result.csv; rows target_id,task_id), every row checked before any
# training. Starts from the k/v-transferred backbone when run_pickaback/transfer_kv.sh made one, else from the
# chosen backbone checkpoint in R_K/gradual_prune/. Writes
# checkpoints_perceiver_io/CPG_fromsingle_scratch_woexp_target/perceiver_io/<cfg>/<task>/<target>/{scratch/,
# gradual_prune/record.txt, train.log, train.csv, stage.json} and logs_perceiver_io/w_backbone_<cfg>_acc.csv.
# GPUS="0 1 2 3" trains the targets in parallel, one worker per GPU (GPUS="cpu cpu" on the CPU; README).
# RAY_ADDRESS=HEAD:6379 runs them on that Ray cluster instead, on every GPU it has (README, "a Ray cluster").
# NPROC=4 trains each task on 4 processes under torchrun (DistributedDataParallel; BATCH_SIZE is the global batch).
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
AMP="${AMP:-0}"                 # 1: bf16 mixed precision (autocast) on CUDA, and on the CPU where supported
RECIPE="${RECIPE:-original}"    # original (SGD at INIT_LR, x0.1 at 50% and 80%) or fast (Adam, warm-up, cosine; README)
RESULT_CSV="${RESULT_CSV:-}"
source "$(dirname "$0")/common.sh"
