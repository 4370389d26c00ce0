"""DIMEE's entry stage over a confidence threshold (``DimeePolicy(exit_threshold=t)``): the threshold stages
answer as ``ThresholdPolicy(threshold=t)``, and the entry stage sends a sample it judges hard straight to the
tier that answers it, which keeps every answer and lowers the cost."""

import json

import numpy as np
import pytest

from clustering import (
    ENTRY_THRESHOLD_MU,
    DimeePolicy,
    Group,
    PolicyError,
    ThresholdPolicy,
    evaluate_exits,
    make_exit_logits,
    policy_from_dict,
)
from clustering.profiles import exit_scores
from clustering.stages import threshold_stage
from tiers import CostModel, TierPlan

PLAN = TierPlan(2, 4, 6)
# easy: right and confident from exit 1; moderate: from exit 3; hard: right at exit 6 only (coin flips before)
GROUPS = [Group(150, 1, 0.3), Group(150, 3, 1.5), Group(150, 6, 0.0)]
TEMPS = [0.8, 0.9, 1.0, 1.1, 1.2, 1.3]


def draw(seed: int, n_classes: int = 3):
    return make_exit_logits(GROUPS, n_classes=n_classes, seed=seed)


@pytest.fixture(scope="module")
def fit_test():
    return draw(0), draw(1)


def entry_threshold(threshold: float, **kwargs) -> DimeePolicy:
    params = {"mu": ENTRY_THRESHOLD_MU, "k_grid": (2, 3, 4), "decision_exits": "all", "entry": "embedding"}
    return DimeePolicy(plan=PLAN, temperatures=TEMPS, exit_threshold=threshold, **{**params, **kwargs})


@pytest.mark.parametrize("n_classes", [3, 1])  # classification, and regression (agreement of exits)
@pytest.mark.parametrize("threshold", [0.45, 0.7, 0.9, 0.99])
def test_threshold_stages_answer_as_the_threshold_policy(n_classes, threshold):
    fit, test = draw(0, n_classes), draw(1, n_classes)
    policy = DimeePolicy(plan=PLAN, temperatures=TEMPS, decision_exits="all", exit_threshold=threshold)
    policy.fit(fit.logits, fit.labels)
    reference = ThresholdPolicy(plan=PLAN, temperatures=TEMPS, criterion="confidence", threshold=threshold)
    reference.fit(fit.logits, fit.labels)
    np.testing.assert_array_equal(policy.predict(test.logits), reference.predict(test.logits))
    assert policy.n_clusters_ == 2 * (PLAN.num_layers - 1)
    assert all(stage.sizes.sum() == len(fit.labels) for stage in policy.cascade_stages_)


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
def test_the_served_threshold_reads_a_regression_exit_against_the_one_before(criterion):
    """A regression exit's confidence is its agreement with the previous exit: the served steps (predict) must
    read that exit too, not score exit j alone (which gave every regression exit no confidence at all)."""
    fit, test = draw(0, 1), draw(1, 1)
    threshold = 0.5
    policy = ThresholdPolicy(plan=PLAN, temperatures=TEMPS, criterion=criterion, threshold=threshold)
    exits = policy.fit(fit.logits, fit.labels).predict(test.logits)
    np.testing.assert_array_equal(exits, policy.exits_for_threshold(test.logits, threshold))
    assert (exits[test.groups == 0] == 2).all()  # right (so agreeing) from exit 1: answered at exit 2


def test_a_score_at_the_threshold_answers_as_the_threshold_policy_does():
    """Thresholds equal to observed scores (as ThresholdPolicy's fit picks them): the samples at the threshold
    answer, as ThresholdPolicy's; the stages' nearest-centre rounding would have sent some of them on."""
    fit = draw(0)
    scores = exit_scores(fit.logits, "confidence", TEMPS)[:, :-1]
    thresholds = np.unique(np.quantile(scores, np.linspace(0.05, 0.95, 200), method="nearest"))
    rounding_flips = 0
    for t in thresholds:
        ours = DimeePolicy(plan=PLAN, temperatures=TEMPS, decision_exits="all", exit_threshold=float(t))
        ours.fit(fit.logits, fit.labels)
        reference = ThresholdPolicy(plan=PLAN, temperatures=TEMPS, threshold=float(t)).fit(fit.logits, fit.labels)
        np.testing.assert_array_equal(ours.predict(fit.logits), reference.predict(fit.logits))
        for j, stage in zip(ours.decision_exits_, ours.cascade_stages_):
            at = scores[:, j - 1] == t
            rounding_flips += int((stage.targets(scores[at, j - 1 : j]) != j).sum())
    assert rounding_flips > 0  # the premise: deciding by the centres alone would have differed here
    stage = threshold_stage(0.75, 3, np.array([[0.5], [0.75], [0.9]]))
    assert stage.exits.tolist() == [3, 0] and stage.sizes.tolist() == [2, 1]


def test_entry_sends_hard_samples_straight_to_cloud_with_the_same_answers_for_less(fit_test):
    fit, test = fit_test
    threshold = 0.9
    policy = entry_threshold(threshold).fit(fit.logits, fit.labels, fit.embeddings)
    reference = ThresholdPolicy(plan=PLAN, temperatures=TEMPS, threshold=threshold).fit(fit.logits, fit.labels)
    exits = policy.predict(test.logits, test.embeddings)
    np.testing.assert_array_equal(exits, reference.predict(test.logits))  # the entry tier moves no answer
    outcome = policy.predict_outcome(test.logits, test.embeddings)
    entered = outcome.table.paths
    hard = test.groups == 2
    direct_cloud = np.array([entered[r] == (("mobile", 0), ("cloud", 0)) for r in outcome.routes])
    assert direct_cloud[hard].mean() >= 0.95  # token ids straight to the cloud: no mobile or edge layer run
    assert not direct_cloud[test.groups == 0].any()  # the easy group still answers on mobile at exit 1
    ours = evaluate_exits(exits, test.logits, test.labels, PLAN, CostModel(), outcome=outcome)
    theirs = evaluate_exits(reference.predict(test.logits), test.logits, test.labels, PLAN, CostModel())
    assert ours["normalised_cost"] < theirs["normalised_cost"] - 0.1


def test_served_steps_round_trip_and_fit_many(fit_test):
    fit, test = fit_test
    policy = entry_threshold(0.8).fit(fit.logits, fit.labels, fit.embeddings)
    again = policy_from_dict(json.loads(json.dumps(policy.to_dict())))
    assert again.to_dict() == policy.to_dict() and again.routing_digest() == policy.routing_digest()
    np.testing.assert_array_equal(again.predict(test.logits, test.embeddings), policy.predict(test.logits, test.embeddings))
    for tier, depth in (("mobile", 0), ("mobile", 1), ("mobile", 2), ("edge", 3), ("edge", 4), ("cloud", 5)):
        seen = test.logits[:, :depth]
        np.testing.assert_array_equal(
            again.step(seen, tier, depth, test.embeddings), policy.step(seen, tier, depth, test.embeddings)
        )
    knobs = [0.6, 0.8, 0.95]
    many = entry_threshold(0.5).fit_many([{"exit_threshold": t} for t in knobs], fit.logits, fit.labels, fit.embeddings)
    for knob, fitted in zip(knobs, many):
        alone = entry_threshold(knob).fit(fit.logits, fit.labels, fit.embeddings)
        assert json.dumps(fitted.to_dict(), sort_keys=True) == json.dumps(alone.to_dict(), sort_keys=True)
    assert len({p.routing_digest() for p in many}) == len(knobs)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"decision_exits": None, "entry": None}, "set decision_exits too"),
        ({"exit_threshold": float("nan")}, "finite number"),
        ({"exit_threshold": True}, "finite number"),
        ({"exit_threshold": "0.9"}, "finite number"),
    ],
)
def test_bad_threshold_params_name_the_fix(fit_test, params, message):
    fit, _ = fit_test
    params = dict(params)
    threshold = params.pop("exit_threshold", 0.9)
    with pytest.raises(PolicyError, match=message):
        entry_threshold(threshold, **params).fit(fit.logits, fit.labels, fit.embeddings)


def test_without_embedding_features_the_entry_stage_says_so(fit_test):
    fit, _ = fit_test
    with pytest.raises(PolicyError, match="embedding features"):
        entry_threshold(0.9).fit(fit.logits, fit.labels)
