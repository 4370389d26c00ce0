"""The report never scores policies on the split their knobs were fitted on."""

from __future__ import annotations

from pathlib import Path

import pytest

from glue_eval.report import report_tables

WNLI = Path(__file__).resolve().parents[1] / "results" / "caches" / "minilm" / "wnli"


def test_scoring_on_the_fit_split_is_refused():
    with pytest.raises(ValueError, match="fitted on 'calibration': score them on another split"):
        report_tables(WNLI, eval_split="calibration")
