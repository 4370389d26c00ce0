"""Baselines on hand-made logits whose right answer is known."""

import math

import numpy as np
import pytest

from clustering import (
    AllCloudPolicy,
    AllEdgePolicy,
    AllMobilePolicy,
    FixedExitPolicy,
    Group,
    OraclePolicy,
    PatiencePolicy,
    PolicyError,
    RandomTierPolicy,
    ThresholdPolicy,
    evaluate_exits,
    make_exit_logits,
    patience_counters,
    tier_shares,
)
from tiers import CostModel, TierPlan

PLAN = TierPlan(2, 4, 6)
LN9, LN15 = math.log(9.0), math.log(1.5)  # two classes: confidence 0.9 and 0.6


def easy_hard(n_easy: int, n_hard: int) -> tuple[np.ndarray, np.ndarray]:
    """Label 0. Easy: confidence 0.9 and right at every exit. Hard: confidence 0.6 and wrong at exits 1..5,
    confidence 0.9 and right at exit 6."""
    easy = np.zeros((n_easy, 6, 2))
    easy[:, :, 0] = LN9
    hard = np.zeros((n_hard, 6, 2))
    hard[:, :5, 1] = LN15
    hard[:, 5, 0] = LN9
    return np.concatenate([easy, hard]), np.zeros(n_easy + n_hard, dtype=int)


def test_fixed_tier_policies():
    logits, labels = easy_hard(3, 3)
    assert set(AllMobilePolicy(plan=PLAN).fit(logits, labels).predict(logits)) == {2}
    assert set(AllEdgePolicy(plan=PLAN).fit(logits, labels).predict(logits)) == {4}
    assert set(AllCloudPolicy(plan=PLAN).fit(logits, labels).predict(logits)) == {6}
    assert set(FixedExitPolicy(plan=PLAN, exit_index=3).fit(logits, labels).predict(logits)) == {3}
    with pytest.raises(PolicyError, match="outside"):
        FixedExitPolicy(plan=PLAN, exit_index=7).fit(logits, labels)


def test_confidence_threshold_picks_the_known_threshold():
    logits, labels = easy_hard(10, 10)
    policy = ThresholdPolicy(plan=PLAN).fit(logits, labels)
    assert policy.threshold_ == pytest.approx(0.9)
    np.testing.assert_array_equal(policy.predict(logits), [1] * 10 + [6] * 10)
    # with a tolerance of 20 points the cheaper threshold 0.6 (hard samples answered wrong at exit 1) fits
    logits, labels = easy_hard(18, 2)
    assert ThresholdPolicy(plan=PLAN, max_drop=0.2).fit(logits, labels).threshold_ == pytest.approx(0.6)
    assert ThresholdPolicy(plan=PLAN, max_drop=0.05).fit(logits, labels).threshold_ == pytest.approx(0.9)


def test_threshold_reward_selection_trades_accuracy_for_cost():
    logits, labels = easy_hard(10, 10)
    assert ThresholdPolicy(plan=PLAN, selection="reward", mu=0.0).fit(logits, labels).threshold_ == pytest.approx(0.9)
    cheap = ThresholdPolicy(plan=PLAN, selection="reward", mu=100.0).fit(logits, labels)
    assert cheap.threshold_ == pytest.approx(0.6)
    assert set(cheap.predict(logits)) == {1}


def test_entropy_threshold():
    logits, labels = easy_hard(10, 10)
    policy = ThresholdPolicy(plan=PLAN, criterion="entropy").fit(logits, labels)
    h09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    assert policy.threshold_ == pytest.approx(h09)
    np.testing.assert_array_equal(policy.predict(logits), [1] * 10 + [6] * 10)


def test_given_threshold_is_used_as_is():
    logits, labels = easy_hard(2, 2)
    policy = ThresholdPolicy(plan=PLAN, threshold=0.95).fit(logits, labels)
    assert set(policy.predict(logits)) == {6}


def test_patience_stops_where_expected():
    # predictions per exit 0,1,1,1,0,0 -> counters 0,0,1,2,0,1
    logits = np.zeros((1, 6, 2))
    logits[0, [1, 2, 3], 1] = 1.0
    logits[0, [0, 4, 5], 0] = 1.0
    np.testing.assert_array_equal(patience_counters(logits), [[0, 0, 1, 2, 0, 1]])
    labels = np.array([1])
    expected = {1: 3, 2: 4, 3: 6}
    for patience, exit_ in expected.items():
        assert PatiencePolicy(plan=PLAN, patience=patience).fit(logits, labels).predict(logits)[0] == exit_


def test_patience_regression_uses_tolerance():
    values = np.array([[1.0, 3.0, 3.05, 3.1, 5.0, 5.0]])[:, :, None]
    policy = PatiencePolicy(plan=PLAN, patience=2, tolerance=0.1).fit(values, [3.0])
    assert policy.predict(values)[0] == 4
    assert PatiencePolicy(plan=PLAN, patience=2, tolerance=0.01).fit(values, [3.0]).predict(values)[0] == 6


def test_patience_chosen_in_fit():
    logits, labels = easy_hard(10, 0)  # always the same right prediction: the cheapest patience wins
    policy = PatiencePolicy(plan=PLAN).fit(logits, labels)
    assert policy.patience_ == 1
    assert set(policy.predict(logits)) == {2}


def test_random_reproduces_proportions_and_is_reproducible():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30000, 6, 3))
    policy = RandomTierPolicy(plan=PLAN, proportions=(0.5, 0.3, 0.2), seed=7).fit(logits)
    exits = policy.predict(logits)
    shares = tier_shares(exits, PLAN)
    assert shares["mobile"] == pytest.approx(0.5, abs=0.015)
    assert shares["edge"] == pytest.approx(0.3, abs=0.015)
    assert shares["cloud"] == pytest.approx(0.2, abs=0.015)
    assert set(exits) == {2, 4, 6}
    order = rng.permutation(len(logits))
    np.testing.assert_array_equal(policy.predict(logits[order]), exits[order])
    other_seed = RandomTierPolicy(plan=PLAN, proportions=(0.5, 0.3, 0.2), seed=8).fit(logits).predict(logits)
    assert (other_seed != exits).mean() > 0.3


def test_random_takes_proportions_from_another_policy():
    data = make_exit_logits([Group(300, 1), Group(600, 6)], seed=0)
    threshold = ThresholdPolicy(plan=PLAN).fit(data.logits, data.labels)
    wanted = tier_shares(threshold.predict(data.logits), PLAN)
    matched = RandomTierPolicy.matching(threshold, data.logits, seed=1)
    np.testing.assert_allclose(matched.proportions_, [wanted["mobile"], wanted["edge"], wanted["cloud"]])
    got = tier_shares(matched.predict(data.logits), PLAN)
    assert got["mobile"] == pytest.approx(wanted["mobile"], abs=0.05)
    via_fit = RandomTierPolicy(plan=PLAN).fit(data.logits, reference_exits=threshold.predict(data.logits))
    np.testing.assert_allclose(via_fit.proportions_, matched.proportions_)


def test_oracle_gives_the_known_minimal_cost():
    logits, labels = easy_hard(2, 2)
    never = np.zeros((1, 6, 2))
    never[:, :, 1] = 1.0
    middle = np.zeros((1, 6, 2))
    middle[:, :, 1] = 1.0
    middle[:, 2:, 0] = 3.0  # right from exit 3
    logits = np.concatenate([logits, never, middle])
    labels = np.zeros(len(logits), dtype=int)
    oracle = OraclePolicy(plan=PLAN).fit(logits, labels)
    exits = oracle.predict(logits, labels=labels)
    np.testing.assert_array_equal(exits, [1, 1, 6, 6, 6, 3])
    costs = CostModel().exit_costs(PLAN)
    result = evaluate_exits(exits, logits, labels, PLAN, CostModel())
    assert result["mean_cost"] == pytest.approx((2 * costs[0] + 3 * costs[5] + costs[2]) / 6)
    assert result["accuracy"] == pytest.approx(5 / 6)
    for policy in (AllCloudPolicy(plan=PLAN), ThresholdPolicy(plan=PLAN), PatiencePolicy(plan=PLAN)):
        other = evaluate_exits(policy.fit(logits, labels).predict(logits), logits, labels, PLAN, CostModel())
        assert other["accuracy"] < result["accuracy"] or other["mean_cost"] >= result["mean_cost"] - 1e-12
    with pytest.raises(PolicyError, match="labels"):
        oracle.predict(logits)
