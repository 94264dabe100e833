#!/usr/bin/env bash
# Sequence run: one network learns the tasks of ORDER in turn (continual learning proper). Each task after the first
# picks over every earlier task's kept weights (piggymask), trains the free weights, widens WIDTH_STEP at a time while
# below its baseline (up to MAX_NETWORK_WIDTH_MULTIPLIER), then is compacted along PRUNING_SCHEDULE and kept at the
# largest ratio within ALLOW_ACC_LOSS of its baseline, freeing capacity for the next task. After each task every task
# learned so far is evaluated (the accuracy matrix).
#
#   bash run_pickaback/sequence.sh <dataset_config>            # ORDER, FIRST, START as set below
#   ORDER="1 5 2 6" bash run_pickaback/sequence.sh demo
#   ORDER=similar FIRST=3 bash run_pickaback/sequence.sh demo   # next: the unlearned task most similar to the learned
#   bash run_pickaback/sequence.sh <dataset_config> compare    # orders similar, config and random for each of SEEDS
#   (compare's runs spread over GPUS="0 1 2 3" workers, or the Ray cluster at RAY_ADDRESS=HEAD:6379: README)
#
# ORDER: config (the config's tasks in id order), similar, random (seeded by SEED), or task ids. START=similar trains
# the first task on the backbone the search picked for it (needs stages 2-5); scratch: from a new network.
# TOTAL_NUM_TASKS: tasks the pruning leaves room for, at least the number of tasks in ORDER. Needs
# run_pickaback/baseline.sh <cfg> (the criterion) and, for ORDER=similar or START=similar, find_backbone.sh <cfg>.
# Per step j: checkpoints_perceiver_io/CPG_sequence/<arch>/<cfg>/<run>/task<j>/ (scratch/, gradual_prune/<s>/,
# gradual_prune/record.txt, train.log, train.csv, stage.json); every number in logs_perceiver_io/sequence_<cfg>.csv
# (tools/report.py <cfg> adds a section). Finished steps are skipped (FORCE=1 redoes them); a changed ORDER redoes
# from the first step that differs; a run killed inside a step continues there.
ARCH="${ARCH:-perceiver_io}"
EPOCHS="${EPOCHS:-100}"
NUM_CLASSES="${NUM_CLASSES:--1}"
INIT_LR="${INIT_LR:-1e-2}"
LR_MASK="${LR_MASK:-1e-4}"
WEIGHT_DECAY="${WEIGHT_DECAY:-4e-5}"
BATCH_SIZE="${BATCH_SIZE:-16}"
NETWORK_WIDTH_MULTIPLIER="${NETWORK_WIDTH_MULTIPLIER:-1.0}"
MAX_NETWORK_WIDTH_MULTIPLIER="${MAX_NETWORK_WIDTH_MULTIPLIER:-2.0}"
WIDTH_STEP="${WIDTH_STEP:-0.5}"
PRUNING_LR="${PRUNING_LR:-1e-3}"
NR_EPOCH_FOR_EACH_PRUNE="${NR_EPOCH_FOR_EACH_PRUNE:-20}"
PRUNING_FREQUENCY="${PRUNING_FREQUENCY:-10}"
PRUNING_INTERVAL="${PRUNING_INTERVAL:-4}"
PRUNING_SCHEDULE="${PRUNING_SCHEDULE:-0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 0.95}"
TOTAL_NUM_TASKS="${TOTAL_NUM_TASKS:-1}"
ORDER="${ORDER:-config}"
FIRST="${FIRST:-1}"
START="${START:-scratch}"
ALLOW_ACC_LOSS="${ALLOW_ACC_LOSS:-0.001}"
REINIT_FREE="${REINIT_FREE:-1}"   # 1: freed weights start freshly initialised for the next task; 0: at zero (original)
SEED="${SEED:-2}"
DEVICE="${DEVICE:-auto}"
AMP="${AMP:-0}"                 # 1: bf16 mixed precision (autocast) on CUDA, and on the CPU where supported
RECIPE="${RECIPE:-original}"    # original (SGD at INIT_LR, x0.1 at 50% and 80%) or fast (Adam, warm-up, cosine; README)
SEEDS="${SEEDS:-1 2 3}"         # of the order comparison (compare)
source "$(dirname "$0")/common.sh"
