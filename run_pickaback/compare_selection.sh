#!/usr/bin/env bash
# Does picking pay? Train every target under each backbone-selection rule and seed, apart from the default run:
#   similar   the most similar candidate (the default of find_backbone.sh)
#   original  the original code's rule (the largest distance)
#   random    a seeded random candidate
#   scratch   no backbone: the target alone, with the same epochs and growth rule
#   oracle    every candidate tried, the best kept (cost: one training per candidate; for small configs)
#
#   bash run_pickaback/compare_selection.sh <dataset_config>
#   SELECTIONS="similar random scratch" SEEDS="1 2" bash run_pickaback/compare_selection.sh demo
#
# Reuses the stages up to the backbone search (run when missing, skipped when finished, with their scripts'
# variables) and the target stage's variables (w_backbone_MM.sh: EPOCHS, MAX_NETWORK_WIDTH_MULTIPLIER, ...), with
# SEED taken from SEEDS. TARGET_TRAIN_PER_CLASS > 0 trains each target on that many samples per class (few-shot).
# Writes checkpoints_perceiver_io/CPG_compare_selection/perceiver_io/<cfg>/seed<s>/<backbone|scratch>/<target>/ and
# logs_perceiver_io/compare_selection_<cfg>.csv (rule,seed,target,backbone,target_acc,baseline_acc,width);
# tools/report.py <cfg> puts the comparison in the report.
# GPUS="0 1 2 3" trains them in parallel, one worker per GPU; RAY_ADDRESS=HEAD:6379 on that Ray cluster (README).
ARCH="${ARCH:-perceiver_io}"
SELECTIONS="${SELECTIONS:-similar original random scratch oracle}"
SEEDS="${SEEDS:-1 2 3}"
TARGET_TRAIN_PER_CLASS="${TARGET_TRAIN_PER_CLASS:-0}"
source "$(dirname "$0")/common.sh"
