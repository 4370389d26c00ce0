#!/usr/bin/env bash
# Fine-tune the early-exit encoder on every GLUE task the local data holds and cache per-exit logits.
# Usage: scripts/train_glue.sh [RUNS_DIR] [extra `dimee train` flags...]
#   e.g. scripts/train_glue.sh runs --device cuda --model /path/to/minilm --data-dir /path/to/glue
# Settings per task are fixed here so results/glue.md can name them. On 2 CPU cores this takes hours
# (SST-2 alone ~16 min per epoch on 2 idle cores, 3 epochs here); on one GPU a few minutes.
set -uo pipefail
runs=${1:-runs}; shift || true
DIMEE=${DIMEE:-dimee}
declare -A EPOCHS=([sst2]=3 [cola]=3 [mrpc]=5 [rte]=5 [stsb]=5 [wnli]=3 [mnli]=3 [qnli]=3)
status=0
for task in sst2 cola mrpc rte stsb wnli mnli qnli; do
  echo "=== $task (${EPOCHS[$task]} epochs)"
  $DIMEE train --task "$task" --epochs "${EPOCHS[$task]}" --max-length 128 --batch-size 32 --lr 5e-5 --seed 0 \
    --output "$runs/$task" "$@" || { echo "!!! $task failed"; status=1; }
done
echo "=== sst2-1epoch (the one-epoch figure of issue 2)"
$DIMEE train --task sst2 --epochs 1 --max-length 128 --batch-size 32 --lr 5e-5 --seed 0 --output "$runs/sst2-1epoch" "$@" || status=1
exit $status
