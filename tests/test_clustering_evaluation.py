"""evaluate_exits on a hand-made case whose accuracy, cost and shares are known."""

import numpy as np
import pytest

from clustering import AllCloudPolicy, PolicyError, evaluate_exits, evaluate_policy
from tiers import CostModel, TierPlan

PLAN = TierPlan(2, 4, 6)
COST = CostModel()


def logits_with_right_exits(right: list[list[bool]]) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, label 0; exit i predicts 0 where right[s][i] else 1."""
    right_arr = np.array(right)
    logits = np.zeros(right_arr.shape + (2,))
    logits[..., 0] = np.where(right_arr, 2.0, -2.0)
    return logits, np.zeros(right_arr.shape[0], dtype=int)


def test_evaluate_exits_known_numbers():
    logits, labels = logits_with_right_exits(
        [[True] * 6, [False, False, True, True, True, True], [False] * 5 + [True], [False] * 6]
    )
    exits = np.array([1, 3, 6, 6])
    result = evaluate_exits(exits, logits, labels, PLAN, COST)
    # default cost model by hand: exit 1 = 0.1; exit 3 = 2*0.1 + 0.2 + 0.05; exit 6 = 0.2 + 0.2 + 2*0.05 + 0.3 + 2*0.02
    costs = [0.10, None, 0.45, None, None, 0.84]
    reference = 0.50 + 6 * 0.02
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["final_accuracy"] == pytest.approx(0.75)
    assert result["accuracy_drop"] == pytest.approx(0.0)
    assert result["mean_cost"] == pytest.approx((costs[0] + costs[2] + 2 * costs[5]) / 4)
    assert result["normalised_cost"] == pytest.approx(result["mean_cost"] / reference)
    assert result["cost_reduction"] == pytest.approx(1 - result["normalised_cost"])
    assert result["tier_shares"] == {"mobile": 0.25, "edge": 0.25, "cloud": 0.5}
    assert result["offloads"] == {"mobile_edge": 3, "mobile_cloud": 0, "edge_cloud": 2}
    assert result["route_counts"] == {"mobile@0": 1, "mobile@0>edge@2": 1, "mobile@0>edge@2>cloud@4": 2}
    assert result["exit_counts"] == [1, 0, 1, 0, 0, 2]
    np.testing.assert_array_equal(result["predictions"], [0, 0, 0, 1])
    np.testing.assert_array_equal(result["correct"], [True, True, True, False])


def test_per_sample_cost_override_and_drop():
    logits, labels = logits_with_right_exits([[True] * 6, [False] * 5 + [True]])
    costs = np.tile(np.arange(1.0, 7.0), (2, 1))
    costs[1] *= 10
    result = evaluate_exits([1, 1], logits, labels, PLAN, COST, costs=costs)
    assert result["mean_cost"] == pytest.approx((1.0 + 10.0) / 2)
    assert result["accuracy_drop"] == pytest.approx(0.5)


def test_evaluate_policy_matches_all_cloud():
    logits, labels = logits_with_right_exits([[True] * 6, [False] * 6])
    policy = AllCloudPolicy(plan=PLAN).fit(logits, labels)
    result = evaluate_policy(policy, logits, labels)
    assert result["tier_shares"]["cloud"] == 1.0
    assert result["normalised_cost"] == 1.0  # the reference route itself: token ids straight to the cloud
    assert result["route_counts"] == {"mobile@0>cloud@0": 2} and result["offloads"]["mobile_cloud"] == 2


def test_routed_outcome_is_charged_for_its_route_and_depth():
    from clustering import Outcome, path_table

    logits, labels = logits_with_right_exits([[True] * 6, [True] * 6])
    table = path_table(PLAN)
    to_edge = table.index((("mobile", 0), ("edge", 0)))
    to_cloud_after_m = table.index((("mobile", 0), ("cloud", 2)))
    outcome = Outcome(table, np.array([to_edge, to_cloud_after_m]), np.array([3, 5]), np.array([3, 5]))
    result = evaluate_exits(outcome.exits, logits, labels, PLAN, COST, outcome=outcome)
    # tokens to edge + 3 edge layers; 2 mobile layers + hop to cloud + layers 3..5 on cloud
    expected = [(0.20 + 3 * 0.05) / 0.62, (0.20 + 0.50 + 3 * 0.02) / 0.62]
    np.testing.assert_allclose(result["sample_costs"], expected, rtol=1e-12)
    assert result["tier_shares"] == {"mobile": 0.0, "edge": 0.5, "cloud": 0.5}


@pytest.mark.parametrize("exits", [[0, 1], [1, 7], [1.5, 2], [1]])
def test_bad_exits(exits):
    logits, labels = logits_with_right_exits([[True] * 6, [True] * 6])
    with pytest.raises(PolicyError):
        evaluate_exits(exits, logits, labels, PLAN, COST)


def test_layer_count_mismatch():
    logits, labels = logits_with_right_exits([[True] * 6])
    with pytest.raises(PolicyError, match="6 exits"):
        evaluate_exits([1], logits, labels, TierPlan(2, 4, 8), COST)
