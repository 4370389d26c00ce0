#!/usr/bin/env bash
# Rebuild results/glue.md, its Pareto plots and the route-cost sweep from the committed logit caches
# (results/caches/<model>/<task>/), and, for every cache, the calibration tables (results/calibration.md) and
# the channel experiment's transmission rules (results/channel/, refitted from its committed predictions);
# no model is run, no weights are needed. A few minutes on 2 cores, plus a few per 12-layer cache.
# glue.md: the 6-layer caches (results/caches/minilm/) first, then a section for the 12-layer ones
# (results/caches/mpnet/, whatever tasks are there; files suffixed -mpnet: glue_<task>_pareto-mpnet.png,
# glue-mpnet.json, glue_scoreboard-mpnet.json). The sweep covers the 6-layer caches only.
#   bash scripts/reproduce.sh                  # every cache
#   bash scripts/reproduce.sh OUT CACHE [...]  # these caches into folder OUT (what the test does): glue.md, the sweep
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${DIMEE_SKIP_SETUP:-}" ] || bash scripts/setup.sh   # the test sets DIMEE_SKIP_SETUP (CI has set up already)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${1:-results}
shift || true
shopt -s nullglob
if [ $# -gt 0 ]; then caches=("$@"); caches_given=1; else caches=(results/caches/minilm/* results/caches/mpnet/*); fi
shallow=(); for c in "${caches[@]}"; do [[ $c == *caches/mpnet/* ]] || shallow+=("$c"); done
.venv/bin/dimee report "${caches[@]}" --out "$out"
if [ ${#shallow[@]} -gt 0 ]; then
  .venv/bin/dimee sweep "${shallow[@]}" --quiet \
    --policies dimee,dimee-entry,threshold,entropy,all-edge,all-cloud,oracle \
    --grid mobile_to_cloud=0.2,0.5,0.8 --grid mu=0.02,0.05,0.1 \
    --out "$out/sweep_routes.csv" --plot "$out/sweep_routes.png"
fi
if [ -z "${caches_given:-}" ] && [ "$out" = results ]; then
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calibration_experiment.py
  OMP_NUM_THREADS=1 .venv/bin/python -m glue_eval.channel_experiment --replay sst2 mrpc --out results/channel
fi
