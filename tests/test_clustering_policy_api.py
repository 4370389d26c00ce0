"""The policy interface, for every policy: sklearn estimator API, JSON round trip, the step protocol against a
per-sample reference walk, causality, batch-order invariance, and clear errors."""

import json

import numpy as np
import pytest
from sklearn.base import clone

from clustering import (
    AllCloudPolicy,
    AllEdgePolicy,
    AllMobilePolicy,
    DimeePolicy,
    ExitPolicy,
    FixedExitPolicy,
    Group,
    OraclePolicy,
    PatiencePolicy,
    PolicyError,
    RandomTierPolicy,
    ThresholdPolicy,
    make_exit_logits,
    policy_from_dict,
    registered_policies,
)
from tiers import CONTINUE, TIERS, CostModel, TierPlan

PLAN = TierPlan(2, 4, 6)
GROUPS = [Group(60, 1, 0.3), Group(60, 3, 1.5), Group(60, 6, 0.0)]
GRID = (2, 3, 4)

FACTORIES = {
    "all_mobile": lambda: AllMobilePolicy(plan=PLAN),
    "all_edge": lambda: AllEdgePolicy(plan=PLAN),
    "all_cloud": lambda: AllCloudPolicy(plan=PLAN),
    "fixed_3": lambda: FixedExitPolicy(plan=PLAN, exit_index=3),
    "confidence": lambda: ThresholdPolicy(plan=PLAN),
    "entropy_reward": lambda: ThresholdPolicy(plan=PLAN, criterion="entropy", selection="reward"),
    "patience": lambda: PatiencePolicy(plan=PLAN),
    "random": lambda: RandomTierPolicy(plan=PLAN, proportions=(0.4, 0.3, 0.3), seed=3),
    "oracle": lambda: OraclePolicy(plan=PLAN),
    "dimee": lambda: DimeePolicy(plan=PLAN, k_grid=GRID),
    "dimee_edge_stage": lambda: DimeePolicy(plan=PLAN, k_grid=GRID, edge_stage=True),
    "dimee_embedding": lambda: DimeePolicy(plan=PLAN, k_grid=GRID, feature="embedding"),
    "dimee_pools": lambda: DimeePolicy(plan=PLAN, assignment="pools", pool_rule="threshold"),
    "dimee_calibrated": lambda: DimeePolicy(
        plan=PLAN, k_grid=GRID, temperatures=[1.5, 1.2, 1.1, 1.0, 1.0, 0.9], profile_features=("confidence", "margin")
    ),
}


@pytest.fixture(scope="module")
def data():
    return make_exit_logits(GROUPS, seed=0), make_exit_logits(GROUPS, seed=1)


@pytest.fixture(scope="module")
def fitted(data):
    fit, _ = data
    return {name: make().fit(fit.logits, fit.labels, fit.embeddings) for name, make in FACTORIES.items()}


def run_predict(policy: ExitPolicy, logits, features, labels) -> np.ndarray:
    return policy.predict(logits, features, labels=labels)


def run_step(policy: ExitPolicy, logits_seen, tier, depth, features, labels) -> np.ndarray:
    return policy.step(logits_seen, tier, depth, features, labels if policy.requires_labels else None)


def walk_one(policy: ExitPolicy, logits, feature) -> tuple[list[tuple[str, int]], int]:
    """Reference: one sample, one tier and one layer at a time, written out by hand (no segment driver)."""
    route, tier, depth = [("mobile", 0)], "mobile", 0
    last = {"mobile": PLAN.mobile_end, "edge": PLAN.edge_end, "cloud": PLAN.num_layers}
    while True:
        action = int(policy.step(logits[None, :depth], tier, depth, feature[None])[0])
        if action > 0:
            return route, action
        if action == CONTINUE:
            assert depth < last[tier]
            depth += 1
            continue
        tier = TIERS[-action]
        route.append((tier, depth))


def test_every_policy_is_registered():
    names = {type(make()).__name__ for make in FACTORIES.values()}
    assert names <= set(registered_policies())


@pytest.mark.parametrize("name", FACTORIES)
def test_sklearn_get_set_params_and_clone(name, fitted):
    policy = fitted[name]
    params = policy.get_params()
    assert params["plan"] == PLAN
    twin = clone(policy)
    assert type(twin) is type(policy) and not hasattr(twin, "plan_")
    assert twin.get_params().keys() == params.keys()
    twin.set_params(cost_model=CostModel.splitee(0.4))
    assert twin.get_params()["cost_model"] == CostModel.splitee(0.4)
    assert "plan" in repr(policy) or type(policy).__name__ in repr(policy)


@pytest.mark.parametrize("name", FACTORIES)
def test_json_round_trip_gives_identical_decisions(name, fitted, data):
    _, test = data
    policy = fitted[name]
    stored = json.loads(json.dumps(policy.to_dict()))
    restored = policy_from_dict(stored)
    assert type(restored) is type(policy)
    assert restored.to_dict() == stored
    assert restored.get_params().keys() == policy.get_params().keys()
    np.testing.assert_array_equal(
        run_predict(restored, test.logits, test.embeddings, test.labels),
        run_predict(policy, test.logits, test.embeddings, test.labels),
    )
    unfitted = policy_from_dict(json.loads(json.dumps(FACTORIES[name]().to_dict())))
    with pytest.raises(PolicyError, match="not fitted"):
        run_predict(unfitted, test.logits, test.embeddings, test.labels)


@pytest.mark.parametrize("name", [n for n in FACTORIES if n != "oracle"])
def test_batched_outcome_equals_a_sample_by_sample_walk(name, fitted, data):
    _, test = data
    policy = fitted[name]
    outcome = policy.predict_outcome(test.logits, test.embeddings)
    for i in range(0, len(test.labels), 7):
        route, exit_ = walk_one(policy, test.logits[i], test.embeddings[i])
        assert outcome.table.paths[outcome.routes[i]] == tuple(route)
        assert outcome.exits[i] == exit_


def test_fixed_policies_take_the_routes_they_name(fitted, data):
    _, test = data
    labels = {name: set(fitted[name].predict_outcome(test.logits, test.embeddings).route_labels()) for name in
              ("all_mobile", "all_edge", "all_cloud", "fixed_3")}
    assert labels == {
        "all_mobile": {"mobile@0"},
        "all_edge": {"mobile@0>edge@0"},  # token ids straight to edge
        "all_cloud": {"mobile@0>cloud@0"},  # the reference route
        "fixed_3": {"mobile@0>edge@2"},
    }


@pytest.mark.parametrize("name", FACTORIES)
def test_decisions_are_causal(name, fitted, data):
    _, test = data
    policy = fitted[name]
    m, e = PLAN.mobile_end, PLAN.edge_end
    rng = np.random.default_rng(5)
    exits = run_predict(policy, test.logits, test.embeddings, test.labels)
    for boundary in (m, e):
        changed = test.logits.copy()
        changed[:, boundary:] = rng.normal(0.0, 3.0, size=changed[:, boundary:].shape)
        new = run_predict(policy, changed, test.embeddings, test.labels)
        answered = exits <= boundary
        np.testing.assert_array_equal(new[answered], exits[answered])
        np.testing.assert_array_equal(new > boundary, exits > boundary)


@pytest.mark.parametrize("name", FACTORIES)
def test_batch_order_does_not_matter(name, fitted, data):
    _, test = data
    policy = fitted[name]
    order = np.random.default_rng(2).permutation(len(test.labels))
    exits = run_predict(policy, test.logits, test.embeddings, test.labels)
    np.testing.assert_array_equal(
        run_predict(policy, test.logits[order], test.embeddings[order], test.labels[order]), exits[order]
    )


@pytest.mark.parametrize("name", FACTORIES)
def test_empty_batches_are_fine(name, fitted, data):
    _, test = data
    policy = fitted[name]
    none = slice(0, 0)
    if name == "oracle":
        with pytest.raises(PolicyError, match="bound"):
            run_step(policy, test.logits[none, :2], "mobile", 2, test.embeddings[none], test.labels[none])
        return
    for tier, k in (("mobile", 0), ("mobile", 2), ("edge", 4), ("cloud", 6)):
        out = run_step(policy, test.logits[none, :k], tier, k, test.embeddings[none], test.labels[none])
        assert out.shape == (0,) and out.dtype == np.int64


@pytest.mark.parametrize("name", ["confidence", "random", "dimee", "dimee_edge_stage", "oracle", "all_cloud"])
def test_plan_without_cloud_layers(name, data):
    fit, test = data
    plan = TierPlan(2, 6, 6)
    policy = FACTORIES[name]().set_params(plan=plan).fit(fit.logits, fit.labels, fit.embeddings)
    outcome = policy.predict_outcome(test.logits, test.embeddings, labels=test.labels)
    assert outcome.exits.min() >= 1 and outcome.exits.max() <= 6
    assert not any("cloud" in label for label in outcome.route_labels())  # cloud holds nothing here
    if name in ("confidence", "all_cloud"):  # rules that may see any sample at edge
        edge = run_step(policy, test.logits, "edge", 6, test.embeddings, test.labels)
        assert (edge > 0).all()  # the last layer of the last tier always answers


def test_errors_are_clear(fitted, data):
    fit, test = data
    policy = fitted["dimee"]
    with pytest.raises(PolicyError, match="not fitted"):
        DimeePolicy(plan=PLAN).predict(test.logits)
    with pytest.raises(PolicyError, match="3-d"):
        policy.predict(test.logits[:, :, 0])
    with pytest.raises(PolicyError, match="6-layer"):
        policy.predict(np.concatenate([test.logits, test.logits[:, :2]], axis=1))
    with pytest.raises(PolicyError, match="exits 1..2"):
        policy.step(test.logits[:, :3], "mobile", 2)
    with pytest.raises(PolicyError, match="unknown tier"):
        policy.step(test.logits[:, :2], "fog", 2)
    bad = test.logits.copy()
    bad[3, 1, 0] = np.nan
    with pytest.raises(PolicyError, match="NaN"):
        policy.predict(bad)
    with pytest.raises(PolicyError, match="output"):
        policy.predict(test.logits[:, :, :2])
    with pytest.raises(PolicyError, match="width"):
        policy.predict(test.logits, test.embeddings[:, :3])
    with pytest.raises(PolicyError, match="8-layer"):
        DimeePolicy(plan=TierPlan(2, 4, 8)).fit(fit.logits, fit.labels)
    with pytest.raises(PolicyError, match="fitted for plan"):
        policy.check_plan(TierPlan(3, 4, 6))
    policy.check_plan(PLAN)
    with pytest.raises(PolicyError, match="unknown policy"):
        policy_from_dict({"policy": "Nope", "params": {}})
    with pytest.raises(PolicyError, match="not a ThresholdPolicy"):
        ThresholdPolicy.from_dict(policy.to_dict())
    with pytest.raises(PolicyError, match="needs labels"):
        ThresholdPolicy(plan=PLAN).fit(fit.logits, None)
    with pytest.raises(PolicyError):
        ThresholdPolicy(plan=PLAN, temperatures=[1.0, 0.0, 1, 1, 1, 1]).fit(fit.logits, fit.labels)
    assert TIERS == ("mobile", "edge", "cloud")


def test_default_plan_and_cost_model_are_filled_in(data):
    fit, _ = data
    policy = ThresholdPolicy().fit(fit.logits, fit.labels)
    assert policy.plan is None and policy.plan_ == PLAN  # default_plan(6) is 2,4
    assert policy.cost_model_ == CostModel()
