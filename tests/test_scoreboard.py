"""The whole-curve scoreboard (glue_eval.scoreboard) against areas and gaps worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from glue_eval.scoreboard import curve_scores, front_at, scoreboard

# trivial deployments: all-mobile at cost 0.2 loses 10 points, all-cloud (cost 1) loses nothing
TRIVIAL = [(0.2, -10.0), (1.0, 0.0)]


def test_area_of_a_step_front_by_hand():
    # one point at cost 0.6 losing 2 points: front = -10 on [0.2, 0.6), -2 on [0.6, 1), 0 at 1
    scores = curve_scores([0.6], [-2.0], TRIVIAL, budgets=(0.5, 0.7))
    assert scores["area"] == pytest.approx(0.5 * -10 + 0.5 * -2, abs=0.02)  # the grid's resolution
    assert scores["gap@0.5"] == -10.0 and scores["gap@0.7"] == -2.0


def test_dominated_points_and_falling_back_on_the_trivial_ones():
    # a point worse than all-mobile never lowers the front; one above the cloud metric raises it
    scores = curve_scores([0.4, 0.8], [-20.0, 1.0], TRIVIAL, budgets=(0.5, 0.9))
    assert scores["gap@0.5"] == -10.0 and scores["gap@0.9"] == 1.0
    assert scores["area"] == pytest.approx(0.75 * -10 + 0.25 * 1.0, abs=0.02)


def test_budget_outside_the_range_is_empty_in_the_table_and_an_error_when_asked_directly():
    scores = curve_scores([0.6], [-2.0], TRIVIAL, budgets=(0.1, 0.7))
    assert np.isnan(scores["gap@0.1"]) and scores["gap@0.7"] == -2.0
    deep = curve_scores([1.2], [-1.0], [(1.1, -5.0), (1.0, 0.0)], budgets=(0.5,))  # all-mobile dearer than 1: no range
    assert np.isnan(deep["area"]) and np.isnan(deep["gap@0.5"])
    with pytest.raises(ValueError, match="choose budgets >= 0.6000"):
        front_at([0.6, 0.9], [-2.0, -1.0], [0.5])


def _rows(task, policy, points):
    return [
        {"task": task, "policy": policy, "normalised_cost": c, "drop": d, "cv_cost": cc, "cv_drop": cd}
        for c, d, cc, cd in points
    ]


def test_the_choice_is_made_on_calibration_and_scored_on_validation():
    rows = _rows("t", "all-mobile", [(0.2, 10, 0.2, 10)]) + _rows("t", "all-cloud", [(1.0, 0, 1.0, 0)])
    # dimee-a looks best on calibration but is worse on validation; dimee-b the reverse
    rows += _rows("t", "dimee-a", [(0.4, 5, 0.4, 1)])
    rows += _rows("t", "dimee-b", [(0.4, 1, 0.4, 5)])
    rows += _rows("t", "threshold", [(0.4, 3, 0.4, 3)])
    per_policy, summary = scoreboard(pd.DataFrame(rows), ["dimee-a", "dimee-b"], ["threshold"], budgets=(0.5,))
    row = summary.iloc[0]
    assert row["DIMEE (chosen on calibration)"] == "dimee-a"  # not dimee-b, which validation favours
    assert row["baseline (chosen on calibration)"] == "threshold"
    assert row["dimee_at_or_above"] == False  # noqa: E712 (dimee-a: -5 on validation vs threshold -3)
    a = per_policy.set_index("policy").loc["dimee-a"]
    assert a["val_area"] == pytest.approx(0.25 * -10 + 0.75 * -5, abs=0.02)
    assert a["cal_area"] == pytest.approx(0.25 * -10 + 0.75 * -1, abs=0.02)


def test_missing_trivial_rows_is_an_error():
    with pytest.raises(ValueError, match="all-mobile and all-cloud"):
        scoreboard(pd.DataFrame(_rows("t", "threshold", [(0.4, 3, 0.4, 3)])), [], ["threshold"])


def test_cross_task_choice_ranks_on_calibration_only():
    from glue_eval.scoreboard import cross_task_choice

    rows = []
    # per task (cal_area, val_area); "a" ranks first on calibration in two of three tasks, "b" has the best mean
    # calibration area (task z's large scale) and the best validation areas: ranks, not areas, and never validation
    table = {"a": {"x": (-1, -9), "y": (-2, -9), "z": (-40, -9)}, "b": {"x": (-3, 5), "y": (-4, 5), "z": (-1, 5)},
             "c": {"x": (-2, 0), "y": (-1, 0)}}  # c misses task z: not eligible
    for name, tasks in table.items():
        for task, (cal, val) in tasks.items():
            rows.append({"task": task, "policy": name, "kind": "dimee", "cal_area": cal, "val_area": val})
    for task, (cal, val) in {"x": (-2, -8), "y": (-2, -10), "z": (-5, -9.5)}.items():
        rows.append({"task": task, "policy": "threshold", "kind": "baseline", "cal_area": cal, "val_area": val})
    per_policy = pd.DataFrame(rows)
    chosen, cross = cross_task_choice(per_policy)
    assert chosen == {"dimee": "a", "baseline": "threshold"}
    assert cross["dimee_at_or_above"].tolist() == [False, True, True]  # -9 vs -8, -10, -9.5
    per_task = pd.DataFrame({"task": ["x", "y", "z"], "baseline val_area": [-8.0, -8.5, -9.5]})
    _, strict = cross_task_choice(per_policy, per_task)
    assert strict["dimee_at_or_above"].tolist() == [False, False, True]  # y: at or above both baselines needed
