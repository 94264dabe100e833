#!/usr/bin/env bash
# Every stage of a dataset config in order, in one process: baseline -> wo_backbone ->
# select_pruning_ratio_of_backbone -> find_backbone -> transfer_kv -> w_backbone_MM.
#
#   bash run_pickaback/run_all.sh <dataset_config>
#   EPOCHS=10 FINETUNE_EPOCHS=10 bash run_pickaback/run_all.sh demo
#
# Each stage uses the variables at the top of its own script, overridden by the environment (a variable set here
# applies to every stage that has it). Finished tasks are skipped, so a rerun after an interruption continues with
# the first unfinished task; FORCE=1 redoes everything. Stops at the first failure with one sentence naming the
# stage and the task.
# GPUS="0 1 2 3" runs the independent tasks of each stage in parallel, one worker per GPU; NPROC=4 trains each task
# on 4 processes under torchrun, RAY_ADDRESS=HEAD:6379 runs the independent tasks on that Ray cluster (README, "One
# GPU, several GPUs, several machines").
source "$(dirname "$0")/common.sh"
