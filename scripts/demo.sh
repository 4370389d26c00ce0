#!/usr/bin/env bash
# Set up (idempotent) and run the main job: brief SST-2 fine-tune of the offline encoder, per-exit table,
# the DIMEE policy against all-cloud.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
exec .venv/bin/dimee demo "$@"
