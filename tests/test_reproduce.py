"""scripts/reproduce.sh rebuilds the committed GLUE table from the committed logit caches (no weights, no model
run): on the smallest task the regenerated rows equal the rows in results/glue.json."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "results" / "caches" / "minilm" / "wnli"


@pytest.mark.skipif(not CACHE.exists(), reason="no committed WNLI cache")
def test_reproduce_regenerates_the_committed_rows(tmp_path):
    env = {**os.environ, "DIMEE_SKIP_SETUP": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", "scripts/reproduce.sh", str(tmp_path), str(CACHE)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    regenerated = json.loads((tmp_path / "glue.json").read_text())
    committed = [row for row in json.loads((REPO / "results" / "glue.json").read_text()) if row["task"] == "wnli"]
    assert regenerated == committed
    assert next(r for r in regenerated if r["policy"] == "all-cloud")["normalised_cost"] == 1.0
    assert (tmp_path / "glue_wnli_pareto.png").stat().st_size > 10_000
    assert (tmp_path / "sweep_routes.csv").exists()
