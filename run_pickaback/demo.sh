#!/usr/bin/env bash
# Install the pinned requirements, write the demo data and run every stage on it (the README's first quick-start
# command). Sized for a laptop CPU: about 10 minutes on 2 cores.
#
#   bash run_pickaback/demo.sh
#
# Stages: baseline -> wo_backbone (CPG + gradual pruning) -> select_pruning_ratio_of_backbone -> find_backbone
# (ModelDiff) -> transfer_kv -> w_backbone_MM (target training). Each stage's own variables can still be set in the
# environment; SKIP_INSTALL=1 skips the pip step.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0
fi
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHON
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    "$PYTHON" -m pip install -q -r requirements.txt
fi
"$PYTHON" tools/make_demo_data.py

# demo sizes: small batches and few epochs (the tasks are learnable in seconds)
export BATCH_SIZE="${BATCH_SIZE:-8}"
FINETUNE_EPOCHS="${FINETUNE_EPOCHS:-30}" bash run_pickaback/baseline.sh demo
EPOCHS="${EPOCHS:-30}" NR_EPOCH_FOR_EACH_PRUNE="${NR_EPOCH_FOR_EACH_PRUNE:-3}" PRUNING_INTERVAL="${PRUNING_INTERVAL:-1}" \
    bash run_pickaback/wo_backbone.sh demo
bash run_pickaback/select_pruning_ratio_of_backbone.sh demo
bash run_pickaback/find_backbone.sh demo
bash run_pickaback/transfer_kv.sh demo
EPOCHS="${EPOCHS:-30}" bash run_pickaback/w_backbone_MM.sh demo

echo
echo "baseline accuracies (logs_perceiver_io/baseline_demo_acc.txt): $(cat logs_perceiver_io/baseline_demo_acc.txt)"
echo "backbone picks (pickaback_demo_result.csv):"; cat pickaback_demo_result.csv
echo "targets on their backbones vs baseline (logs_perceiver_io/w_backbone_demo_acc.csv):"
cat logs_perceiver_io/w_backbone_demo_acc.csv
