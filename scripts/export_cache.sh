#!/usr/bin/env bash
# Copy what every offline command reads from trained runs into results/caches/<model>/<task>/: run.json,
# metrics.json and logits/ (per-exit logits fp32, labels, token counts, fp16 embedding features). No weights.
#   bash scripts/export_cache.sh minilm runs/mrpc runs/rte ...
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1; shift
for run in "$@"; do
  task=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['task'])" "$run/run.json")
  name=${CACHE_NAME:-$task}
  dest=results/caches/$model/$name
  rm -rf "$dest" && mkdir -p "$dest"
  cp "$run/run.json" "$run/metrics.json" "$dest/"
  cp -r "$run/logits" "$dest/logits"
  echo "$run -> $dest ($(du -sh "$dest" | cut -f1))"
done
