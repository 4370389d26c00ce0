"""The TD part of results/channel.md is regenerated from its committed predictions: the replay refits every rule
and must give the committed rows exactly (a changed rule or fitting core shows up here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from glue_eval.channel_experiment import replay_task, tables

CHANNEL = Path(__file__).resolve().parents[1] / "results" / "channel"


def _key(row: dict) -> tuple:
    return row["encoding"], row["cost_weight"], row["snr_db"], row["rule"]


def test_replay_reproduces_the_committed_td_rows(tmp_path):
    for name in ("mrpc.json", "mrpc_predictions.npz"):
        shutil.copy(CHANNEL / name, tmp_path / name)
    committed = json.loads((CHANNEL / "mrpc.json").read_text())
    result = replay_task(tmp_path, "mrpc")
    assert {_key(r): r for r in result["td"]} == {_key(r): r for r in committed["td"]}
    assert json.loads(json.dumps(result["fitted_rules"])) == committed["fitted_rules"]
    assert "DIMEE per SNR" in {r["rule"] for r in result["td"]}
    assert (CHANNEL / "mrpc_tables.md").read_text() == tables(result) + "\n"


def test_replay_without_the_saved_predictions_names_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="needs .*mrpc.json and .*mrpc_predictions.npz"):
        replay_task(tmp_path, "mrpc")
