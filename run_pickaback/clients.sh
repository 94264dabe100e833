#!/usr/bin/env bash
# Clients: Pick-a-back's devices, each with its own task sequence, borrowing from its peers in rounds. A client is a
# Pick-a-back device (called a client in code, as Flower calls it: DEVICE is the torch device). In round r every
# client that has an r-th task trains its baseline of it, searches every network it and its peers hold (as they
# stood at the end of round r-1) by ModelDiff, learns the task with CPG in the network it picks (its own, a copy of a
# peer's, or a new one) and evaluates every task it has learned. Every message is counted.
#
#   bash run_pickaback/clients.sh <dataset_config>             # every round, as set below
#   ENGINE=local bash run_pickaback/clients.sh demo            # the same clients in one process, without Flower
#   NUM_CLIENTS=3 bash run_pickaback/clients.sh oxford         # the config's tasks dealt round-robin to 3 clients
#   bash run_pickaback/clients.sh <dataset_config> compare     # SELECTIONS side by side, for each of SEEDS
#
# The clients: the config's `clients:` (each a name, its task ids in order and the round it starts in), or with
# NUM_CLIENTS=n the config's tasks dealt round-robin to n clients. SELECTION: similar (the most similar network),
# original (the original code's rule), random, scratch (a new network per task) or own (each client alone).
# EXCHANGE: models (the learner receives the candidate networks and computes their DDVs itself) or profile (the
# learner sends its profiling inputs, derived from its data, and the holders answer DDVs). ENGINE: simulation
# (Flower's simulation engine on Ray, one machine), deployment (a SuperLink and one SuperNode per client as
# separate processes; SUPERLINK=host:port submits to a running SuperLink instead of starting one: README) or local.
# Writes checkpoints_perceiver_io/clients/<cfg>/<client>/ (baselines, one folder per round, client.json),
# logs_perceiver_io/clients_<cfg>.csv (per round and client: pick, similarities, bytes, times, accuracy of each of
# its tasks) and logs_perceiver_io/clients_<cfg>_messages.csv (every message: kind, sender, receiver, round,
# bytes). Finished steps are skipped (FORCE=1 redoes them); a run killed anywhere continues where it stopped.
ARCH="${ARCH:-perceiver_io}"
FINETUNE_EPOCHS="${FINETUNE_EPOCHS:-100}"
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
TOTAL_NUM_TASKS="${TOTAL_NUM_TASKS:-1}"   # tasks the pruning leaves room for (at least every client's tasks)
ALLOW_ACC_LOSS="${ALLOW_ACC_LOSS:-0.001}"
REINIT_FREE="${REINIT_FREE:-1}"
TRAIN_PER_CLASS="${TRAIN_PER_CLASS:-0}"   # n > 0: each task learnt (CPG) from n samples per class, its baseline from all
NUM_CLIENTS="${NUM_CLIENTS:-0}"           # 0: the config's clients; n: its tasks dealt round-robin to n clients
SELECTION="${SELECTION:-similar}"         # similar, original, random, scratch or own
EXCHANGE="${EXCHANGE:-models}"            # models or profile
ENGINE="${ENGINE:-simulation}"            # simulation, deployment or local
SUPERLINK="${SUPERLINK:-}"                # deployment: host:port of a running SuperLink (empty: start one here)
PROFILE_SIZE="${PROFILE_SIZE:-32}"
EPSILON="${EPSILON:-0.1}"
ITERATIONS="${ITERATIONS:-100}"
SEED="${SEED:-2}"
DEVICE="${DEVICE:-auto}"
AMP="${AMP:-0}"
RECIPE="${RECIPE:-original}"
SEEDS="${SEEDS:-1 2 3}"                   # of the comparison (compare)
SELECTIONS="${SELECTIONS:-similar own random scratch original}"   # of the comparison
source "$(dirname "$0")/common.sh"
