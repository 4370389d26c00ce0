"""scripts/reproduce.sh rebuilds the committed GLUE table from the committed logit caches (no weights, no model
run): on the smallest task the regenerated rows equal the rows in results/glue.json, and with the 12-layer RTE
cache beside it, glue.md's 12-layer section holds the rows of results/glue-mpnet.json."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "results" / "caches" / "minilm" / "wnli"
DEEP = REPO / "results" / "caches" / "mpnet" / "rte"  # the 12-layer run, if committed


def _per_task_rows(lines: list[str]) -> list[str]:
    """WNLI's table rows, without the cross-task table's (its one choice depends on which tasks are there)."""
    rows, skipping = [], False
    for line in lines:
        if line.startswith("One choice for all tasks"):
            skipping = True
        elif skipping and line.startswith("| task | policy |"):  # the per-policy table that follows it
            skipping = False
        if not skipping and line.startswith("| wnli |"):
            rows.append(line)
    return rows


@pytest.mark.skipif(not CACHE.exists(), reason="no committed WNLI cache")
def test_reproduce_regenerates_the_committed_rows(tmp_path):
    env = {**os.environ, "DIMEE_SKIP_SETUP": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    deep = DEEP.exists() and (REPO / "results" / "glue-mpnet.json").exists()
    done = subprocess.run(
        ["bash", "scripts/reproduce.sh", str(tmp_path), str(CACHE), *([str(DEEP)] if deep else [])],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    regenerated = json.loads((tmp_path / "glue.json").read_text())
    committed = [row for row in json.loads((REPO / "results" / "glue.json").read_text()) if row["task"] == "wnli"]
    assert regenerated == committed
    assert next(r for r in regenerated if r["policy"] == "all-cloud")["normalised_cost"] == 1.0
    assert (tmp_path / "glue_wnli_pareto.png").stat().st_size > 10_000
    assert (tmp_path / "sweep_routes.csv").exists()
    if not deep:
        return
    rows = json.loads((tmp_path / "glue-mpnet.json").read_text())
    assert rows == [row for row in json.loads((REPO / "results" / "glue-mpnet.json").read_text()) if row["task"] == "rte"]
    text = (tmp_path / "glue.md").read_text()
    shallow, section = text.split("\n## 12-layer encoder (`mpnet-offline`)\n")
    committed = (REPO / "results" / "glue.md").read_text().split("\n## 12-layer encoder")[0].splitlines()
    assert _per_task_rows(shallow.splitlines()) == _per_task_rows(committed)  # the 6-layer rows are the committed ones
    assert "| rte | mpnet | 12 | 1-4 / 5-8 / 9-12 |" in section and "| rte | dimee |" in section
    assert "`majority class`" in section and "| rte | accuracy |" in section  # floor and published scores
    assert (tmp_path / "glue_rte_pareto-mpnet.png").stat().st_size > 10_000
    assert not (tmp_path / "glue_rte_pareto.png").exists() and not (tmp_path / "sweep_routes-rte.png").exists()
