#!/usr/bin/env bash
# Baseline stage: train an independent single-task model for every task of a dataset config.
#
#   bash run_pickaback/baseline.sh <dataset_config>
#   FINETUNE_EPOCHS=5 TASK_IDS="1 2" bash run_pickaback/baseline.sh demo
#
# Writes checkpoints_perceiver_io/baseline_scratch/perceiver_io/<cfg>/<group>/checkpoint-<epochs>.pth.tar (with
# train.log and stage.json, the settings that produced it) and the accuracy of every task to
# logs_perceiver_io/baseline_<cfg>_acc.txt. Tasks already finished with the same settings are skipped (FORCE=1
# redoes them). Edit the variables below, or set them in the environment.
# GPUS="0 1 2 3" runs the tasks in parallel, one worker per GPU (GPUS="cpu cpu" on the CPU; README).
# RAY_ADDRESS=HEAD:6379 runs them on that Ray cluster instead, on every GPU it has (README, "a Ray cluster").
# NPROC=4 trains each task on 4 processes under torchrun (DistributedDataParallel; BATCH_SIZE is the global batch).
ARCH="${ARCH:-perceiver_io}"
FINETUNE_EPOCHS="${FINETUNE_EPOCHS:-100}"
NUM_CLASSES="${NUM_CLASSES:--1}"
INIT_LR="${INIT_LR:-1e-2}"
WEIGHT_DECAY="${WEIGHT_DECAY:-4e-5}"
BATCH_SIZE="${BATCH_SIZE:-32}"
SEED="${SEED:-2}"
DEVICE="${DEVICE:-auto}"
AMP="${AMP:-0}"                 # 1: bf16 mixed precision (autocast) on CUDA, and on the CPU where supported
RECIPE="${RECIPE:-original}"    # original (SGD at INIT_LR, x0.1 at 50% and 80%) or fast (Adam, warm-up, cosine; README)
source "$(dirname "$0")/common.sh"
