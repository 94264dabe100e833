#!/usr/bin/env bash
# Pruning-ratio choice: for every task's backbone, take the largest pruning ratio whose accuracy stays within
# ALLOW_ACC_LOSS of the baseline and place that checkpoint in R/gradual_prune/ for the later stages.
#
#   bash run_pickaback/select_pruning_ratio_of_backbone.sh <dataset_config>
#
# Reads R/gradual_prune/record.txt and the backbone's width from its checkpoint (see wo_backbone.sh), logs
# `We choose pruning ratio X` to R/train.log and writes R/gradual_prune/choice.json. The record and the baseline
# are checked before an earlier choice is replaced. Edit the variables below, or set them in the environment.
ARCH="${ARCH:-perceiver_io}"
ALLOW_ACC_LOSS="${ALLOW_ACC_LOSS:-0.001}"
source "$(dirname "$0")/common.sh"
