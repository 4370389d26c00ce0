"""results/cost_presets.md is the report's scoring under a preset: recomputing one task from its committed cache
gives the committed rows (the smallest task, WNLI, under SplitEE's preset)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("cost_presets", ROOT / "benchmarks" / "cost_presets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same(a: dict, b: dict) -> bool:
    def norm(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    return {k: norm(v) for k, v in a.items()} == {k: norm(v) for k, v in b.items()}


def test_splitee_rows_of_wnli_match_the_committed_results():
    committed = json.loads((ROOT / "results" / "cost_presets.json").read_text())
    summary, board = _bench().preset_rows(ROOT / "results" / "caches" / "minilm" / "wnli", "splitee", 0.003)
    want_summary = [r for r in committed["summary"] if r["task"] == "wnli" and r["preset"] == "splitee"]
    want_board = [r for r in committed["scoreboard"] if r["task"] == "wnli" and r["preset"] == "splitee"]
    got_board = json.loads(board.to_json(orient="records"))
    assert [_same(g, w) for g, w in zip(json.loads(summary.to_json(orient="records")), want_summary)] == [True]
    assert [_same(g, w) for g, w in zip(got_board, want_board)] == [True]
