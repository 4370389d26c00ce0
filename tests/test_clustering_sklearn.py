"""Exit policies used the way scikit-learn users use estimators: GridSearchCV / cross_val_score with the
policy's own `score` (the mean reward) or `reward_scorer`, features inside X (`ExitData`), NotFittedError,
clone, and the ThresholdPolicy param that used to be called `score` (it shadowed the method)."""

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.utils import indexable
from sklearn.utils._indexing import _safe_indexing
from sklearn.utils.validation import _num_samples, check_is_fitted

import dimee
from clustering import (
    SCORE_MU,
    DimeePolicy,
    ExitData,
    Group,
    OraclePolicy,
    PatiencePolicy,
    PolicyError,
    PolicyNotFittedError,
    ThresholdPolicy,
    make_exit_logits,
    policy_from_dict,
    reward_scorer,
)
from tiers import CostModel, TierPlan

PLAN = TierPlan(2, 4, 6)
COST = CostModel()
GROUPS = [Group(60, 1, 0.3, 0.2), Group(50, 3, 1.2, 0.2), Group(40, 6, 0.0, 0.1)]
THRESHOLDS = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


@pytest.fixture(scope="module")
def data():
    """Synthetic cached logits with an embedding, rows shuffled so that unshuffled K-fold splits mix groups."""
    d = make_exit_logits(GROUPS, num_layers=6, n_classes=3, seed=3)
    order = np.random.default_rng(0).permutation(d.labels.size)
    return d.logits[order], d.labels[order], d.embeddings[order]


# ---- an independent reference for a threshold rule on the linear route -------------------------------------
def reference_reward(logits: np.ndarray, labels: np.ndarray, threshold: float, mu: float) -> float:
    """Mean of (right at the exit) - mu * (cost of that exit), with the exit the first whose max softmax is
    >= threshold (else L), computed here with numpy from the cost model's linear-route exit costs."""
    z = logits - logits.max(axis=2, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=2, keepdims=True)
    passes = p.max(axis=2) >= threshold
    passes[:, -1] = True
    exits = passes.argmax(axis=1) + 1
    rows = np.arange(labels.size)
    right = logits[rows, exits - 1].argmax(axis=1) == labels
    cost = COST.normalised_exit_costs(PLAN)[exits - 1]
    return float(np.mean(right - mu * cost))


def test_grid_search_over_threshold_picks_the_best_mean_reward(data):
    logits, labels, _ = data
    search = GridSearchCV(
        ThresholdPolicy(PLAN, COST, criterion="confidence", threshold=0.5), {"threshold": THRESHOLDS}, cv=3
    ).fit(logits, labels)
    scores = search.cv_results_["mean_test_score"]
    assert not np.isnan(scores).any()  # with the param named `score`, every candidate scored NaN
    folds = list(KFold(3).split(logits))  # what cv=3 means for a non-classifier
    expected = np.array(
        [np.mean([reference_reward(logits[test], labels[test], t, SCORE_MU) for _, test in folds]) for t in THRESHOLDS]
    )
    np.testing.assert_allclose(scores, expected, atol=1e-12)
    best = int(np.argmax(expected))
    assert np.sort(expected)[-1] - np.sort(expected)[-2] > 1e-6  # a unique best, so the check means something
    assert best != 0  # not just the first candidate (what a NaN-scored search returns)
    assert search.best_params_ == {"threshold": THRESHOLDS[best]}
    assert search.best_estimator_.threshold_ == THRESHOLDS[best]  # a given threshold is used as is


def test_reward_scorer_sets_the_cost_weight_for_every_candidate(data):
    logits, labels, _ = data
    search = GridSearchCV(
        ThresholdPolicy(PLAN, COST, threshold=0.5), {"threshold": THRESHOLDS}, cv=3, scoring=reward_scorer(2.0)
    ).fit(logits, labels)
    folds = list(KFold(3).split(logits))
    expected = [np.mean([reference_reward(logits[te], labels[te], t, 2.0) for _, te in folds]) for t in THRESHOLDS]
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], expected, atol=1e-12)
    assert search.best_params_["threshold"] == THRESHOLDS[int(np.argmax(expected))]
    with pytest.raises(PolicyError, match="mu"):
        reward_scorer(-1.0)


def test_grid_search_over_dimee_mu_with_embedding_features_in_x(data):
    logits, labels, embedding = data
    X = ExitData(logits, embedding)
    search = GridSearchCV(
        DimeePolicy(PLAN, COST, feature="embedding", k_grid=(2, 3)), {"mu": [0.01, 0.1, 0.5]}, cv=3
    ).fit(X, labels)
    scores = search.cv_results_["mean_test_score"]
    assert not np.isnan(scores).any()  # features that did not follow the folds would fail every fit
    best = search.best_estimator_
    assert best.mu == search.best_params_["mu"] and best.n_features_ == embedding.shape[1]
    exits = best.predict(X)
    assert exits.shape == labels.shape and exits.min() >= 1 and exits.max() <= 6
    refit = DimeePolicy(PLAN, COST, feature="embedding", k_grid=(2, 3), mu=best.mu).fit(logits, labels, embedding)
    np.testing.assert_array_equal(exits, refit.predict(logits, embedding))
    assert best.score(X, labels) == pytest.approx(refit.score(logits, labels, embedding))
    with pytest.raises(PolicyError, match="embedding"):  # the features really are needed
        best.predict(logits)


def test_cross_val_score_is_finite_and_is_the_policy_score(data):
    logits, labels, embedding = data
    scores = cross_val_score(ThresholdPolicy(PLAN, COST), ExitData(logits, embedding), labels, cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    again = cross_val_score(ThresholdPolicy(PLAN, COST), logits, labels, cv=3, scoring=reward_scorer(SCORE_MU))
    np.testing.assert_allclose(scores, again)
    patience = cross_val_score(PatiencePolicy(PLAN, COST), logits, labels, cv=3)
    assert np.isfinite(patience).all()


# ---- score on a hand-built example --------------------------------------------------------------------------
def tiny_example():
    """4 samples, 6 exits, 2 classes. Confident rows put 5 on one class (max prob ~0.993), unsure rows 0.1
    (~0.525). With threshold 0.9: sample 0 exits at 1 (right), 1 at 3 (wrong), 2 at L (right), 3 at 5 (right)."""
    unsure, yes, no = [0.0, 0.1], [0.0, 5.0], [5.0, 0.0]
    logits = np.array(
        [
            [yes, yes, yes, yes, yes, yes],
            [unsure, unsure, no, yes, yes, yes],
            [unsure, unsure, unsure, unsure, unsure, unsure],
            [unsure, unsure, unsure, unsure, yes, yes],
        ]
    )
    labels = np.array([1, 1, 1, 1])
    return logits, labels, np.array([1, 3, 6, 5]), np.array([1.0, 0.0, 1.0, 1.0])


def test_score_is_the_mean_reward_by_hand():
    logits, labels, exits, right = tiny_example()
    cost = COST.normalised_exit_costs(PLAN)  # the linear route: a threshold rule answers along it
    policy = ThresholdPolicy(PLAN, COST, threshold=0.9).fit(logits, labels)
    np.testing.assert_array_equal(policy.predict(logits), exits)
    by_hand = np.mean(right - 0.1 * cost[exits - 1])
    assert SCORE_MU == 0.1
    assert policy.score(logits, labels) == pytest.approx(by_hand, abs=1e-12)
    assert policy.score(ExitData(logits), labels) == pytest.approx(by_hand, abs=1e-12)
    assert policy.score(logits, labels, mu=0.3) == pytest.approx(np.mean(right - 0.3 * cost[exits - 1]), abs=1e-12)
    assert reward_scorer(0.3)(policy, logits, labels) == pytest.approx(policy.score(logits, labels, mu=0.3))
    # the policy's own mu is its tuning knob, not the score's weight
    for mu in (0.0, 5.0):
        other = ThresholdPolicy(PLAN, COST, threshold=0.9, mu=mu).fit(logits, labels)
        assert other.score(logits, labels) == pytest.approx(by_hand, abs=1e-12)


def test_score_regression_uses_the_policy_tolerance():
    logits = np.array([[[1.0], [3.0], [2.0]], [[3.0], [0.0], [3.0]]])  # 2 samples, 3 exits, 1 output
    labels = np.array([2.05, 1.0])  # the final exit is 0.05 off for sample 0, 2.0 off for sample 1
    plan = TierPlan(1, 2, 3)
    cost = COST.normalised_exit_costs(plan)[-1]
    for tolerance, right in ((0.1, 0.5), (0.01, 0.0)):
        # a confidence threshold above 1 never passes: both answer at L
        policy = ThresholdPolicy(plan, COST, threshold=1.5, regression_tolerance=tolerance).fit(logits, labels)
        np.testing.assert_array_equal(policy.predict(logits), [3, 3])
        assert policy.score(logits, labels) == pytest.approx(right - 0.1 * cost, abs=1e-12)


def test_oracle_is_scorable_with_the_labels(data):
    logits, labels, _ = data
    oracle = OraclePolicy(PLAN, COST).fit(logits, None)
    score = oracle.score(logits, labels)
    outcome = oracle.predict_outcome(logits, labels=labels)
    right = logits[np.arange(labels.size), outcome.exits - 1].argmax(axis=1) == labels
    costs = oracle.normalised_path_costs()[outcome.routes, outcome.depths - 1]
    assert score == pytest.approx(np.mean(right - SCORE_MU * costs))
    assert np.isfinite(cross_val_score(OraclePolicy(PLAN, COST), logits, labels, cv=3)).all()


# ---- not fitted -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [lambda: ThresholdPolicy(PLAN), lambda: DimeePolicy(PLAN), lambda: OraclePolicy(PLAN), lambda: PatiencePolicy(PLAN)],
)
def test_use_before_fit_raises_not_fitted_error(make, data):
    logits, labels, _ = data
    policy = make()
    with pytest.raises(NotFittedError):
        check_is_fitted(policy)
    for call in (
        lambda: policy.predict(logits, labels=labels),
        lambda: policy.predict_outcome(logits, labels=labels),
        lambda: policy.score(logits, labels),
        lambda: policy.step(logits[:, :1], "mobile", 1),
        lambda: policy.normalised_path_costs(),
    ):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()
        with pytest.raises(PolicyError):  # existing `except PolicyError` code still catches it
            call()
        with pytest.raises(PolicyNotFittedError):
            call()
    policy.fit(logits, labels)
    check_is_fitted(policy)


# ---- ExitData -------------------------------------------------------------------------------------------
def test_exit_data_is_split_by_rows_like_an_array(data):
    logits, labels, embedding = data
    X = ExitData(logits, embedding)
    assert _num_samples(X) == len(X) == labels.size and X.shape == logits.shape
    X2, y2 = indexable(X, labels)
    assert X2 is X and y2 is labels
    rows = np.array([5, 0, 17, 3])
    mask = np.zeros(labels.size, dtype=bool)
    mask[[2, 9, 40]] = True
    for key, expected in ((rows, rows), (mask, np.flatnonzero(mask)), (slice(10, 20), np.arange(10, 20)),
                          (list(rows), rows)):
        part = _safe_indexing(X, key)
        assert isinstance(part, ExitData)
        np.testing.assert_array_equal(part.logits, logits[expected])
        np.testing.assert_array_equal(part.features, embedding[expected])
    single = X[3]
    assert len(single) == 1 and np.array_equal(single.features, embedding[3:4])
    with pytest.raises(IndexError):
        X[labels.size]
    assert ExitData(logits)[rows].features is None


def test_exit_data_inputs_are_checked(data):
    logits, labels, embedding = data
    with pytest.raises(PolicyError, match="one row per sample"):
        ExitData(logits, embedding[:-1])
    with pytest.raises(PolicyError, match="2-d"):
        ExitData(logits, embedding[:, 0])
    with pytest.raises(PolicyError, match="3-d"):
        ExitData(logits[:, 0])
    X = ExitData(logits, embedding)
    policy = DimeePolicy(PLAN, feature="embedding", k_grid=(2,))
    with pytest.raises(PolicyError, match="carries its own features"):
        policy.fit(X, labels, embedding)
    policy.fit(X, labels)
    with pytest.raises(PolicyError, match="carries its own features"):
        policy.predict(X, embedding)
    plain = DimeePolicy(PLAN, feature="embedding", k_grid=(2,)).fit(logits, labels, embedding)
    np.testing.assert_array_equal(policy.predict(X), plain.predict(logits, embedding))
    assert dimee.ExitData is ExitData and dimee.reward_scorer is reward_scorer


# ---- params ---------------------------------------------------------------------------------------------
def test_threshold_param_is_criterion_and_old_dicts_load(data):
    logits, labels, _ = data
    policy = ThresholdPolicy(PLAN, COST, criterion="entropy", threshold=0.3).fit(logits, labels)
    params = policy.get_params()
    assert params["criterion"] == "entropy" and "score" not in params and callable(policy.score)
    old = policy.to_dict()
    old["params"]["score"] = old["params"].pop("criterion")  # what a policy.json written before the rename holds
    loaded = policy_from_dict(json.loads(json.dumps(old)))
    assert isinstance(loaded, ThresholdPolicy) and loaded.criterion == "entropy"
    np.testing.assert_array_equal(loaded.predict(logits), policy.predict(logits))
    assert ThresholdPolicy.from_dict(old).criterion == "entropy"
    old["params"]["criterion"] = "confidence"
    with pytest.raises(PolicyError, match="both"):
        policy_from_dict(old)


def test_clone_keeps_params():
    for policy in (
        ThresholdPolicy(PLAN, COST, [1.5] * 6, criterion="entropy", threshold=0.4, selection="reward", mu=0.2),
        DimeePolicy(PLAN, COST, feature="embedding", mu=0.05, k_grid=(2, 3)),
    ):
        copy = clone(policy)
        assert copy is not policy and type(copy) is type(policy)
        assert copy.get_params() == policy.get_params()
