"""DIMEE on synthetic cached logits with known difficulty groups (fit on one draw, check on another)."""

import json

import numpy as np
import pytest

from clustering import DimeePolicy, Group, PolicyError, evaluate_exits, make_exit_logits, policy_from_dict, tier_shares
from tiers import HANDOFF_CLOUD, HANDOFF_EDGE, CostModel, TierPlan

PLAN = TierPlan(2, 4, 6)
# easy: right and confident from exit 1; moderate: right from exit 3, mid confidence before; hard: right at 6 only
GROUPS = [Group(150, 1, 0.3), Group(150, 3, 1.5), Group(150, 6, 0.0)]
SMALL_GRID = (2, 3, 4, 6)


def draw(seed: int, groups=GROUPS, **kwargs):
    return make_exit_logits(groups, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def fit_test():
    return draw(0), draw(1)


def share_at(exits: np.ndarray, mask: np.ndarray, allowed: set[int]) -> float:
    return float(np.isin(exits[mask], list(allowed)).mean())


def test_groups_go_to_the_right_tier(fit_test):
    fit, test = fit_test
    policy = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID).fit(fit.logits, fit.labels)
    exits = policy.predict(test.logits)
    assert share_at(exits, test.groups == 0, {2}) >= 0.97  # mobile profile: answered at exit m
    assert share_at(exits, test.groups == 1, {3, 4}) >= 0.95  # edge
    assert share_at(exits, test.groups == 2, {5, 6}) >= 0.97  # cloud
    assert policy.n_clusters_ in SMALL_GRID
    assert set(policy.cv_rewards_) == set(SMALL_GRID)
    assert sum(policy.tier_shares_.values()) == pytest.approx(1.0)
    # independent reference: the fit split's groups were built to be answered on mobile, edge and cloud
    expected = {tier: float((fit.groups == g).mean()) for g, tier in enumerate(("mobile", "edge", "cloud"))}
    for tier, share in expected.items():
        assert policy.tier_shares_[tier] == pytest.approx(share, abs=0.03), tier
    assert {row["tier"] for row in policy.cluster_table()} == {"mobile", "edge", "cloud"}


def test_k_is_chosen_by_held_out_reward_not_fixed(fit_test):
    fit, _ = fit_test
    policy = DimeePolicy(plan=PLAN, k_grid=(2, 3, 8), k_tolerance=0.0).fit(fit.logits, fit.labels)
    assert policy.n_clusters_ == max(policy.cv_rewards_, key=lambda k: (policy.cv_rewards_[k], -k))
    # two clusters cannot separate three groups: held-out reward is lower than with 3
    assert policy.cv_rewards_[2] < policy.cv_rewards_[3]
    assert DimeePolicy(plan=PLAN, k_grid=(5,)).fit(fit.logits, fit.labels).n_clusters_ == 5


def test_reward_weight_mu_moves_samples_down_the_tiers(fit_test):
    fit, test = fit_test
    cheap = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, mu=5.0).fit(fit.logits, fit.labels)
    assert tier_shares(cheap.predict(test.logits), PLAN)["mobile"] == pytest.approx(1.0)
    accurate = evaluate_exits(
        DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, mu=0.0).fit(fit.logits, fit.labels).predict(test.logits),
        test.logits,
        test.labels,
        PLAN,
        CostModel(),
    )
    assert accurate["accuracy_drop"] <= 0.01


def test_edge_stage_separates_what_mobile_cannot():
    # moderate and hard look the same on mobile (same weak early margin); they differ from exit 3 on
    groups = [Group(150, 1, 0.3), Group(150, 3, 0.0), Group(150, 6, 0.0)]
    fit, test = draw(0, groups), draw(1, groups)
    one_stage = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID).fit(fit.logits, fit.labels)
    two_stage = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, edge_stage=True).fit(fit.logits, fit.labels)
    moderate = test.groups == 1
    assert share_at(one_stage.predict(test.logits), moderate, {5, 6}) >= 0.9  # sent on to be safe
    exits = two_stage.predict(test.logits)
    assert share_at(exits, moderate, {4}) >= 0.95  # the edge stage keeps them on edge, at exit e
    assert share_at(exits, test.groups == 2, {6}) >= 0.95
    assert two_stage.stage2_ is not None and two_stage.edge_n_clusters_ >= 1
    r1 = evaluate_exits(one_stage.predict(test.logits), test.logits, test.labels, PLAN, CostModel())
    r2 = evaluate_exits(exits, test.logits, test.labels, PLAN, CostModel())
    assert r2["normalised_cost"] < r1["normalised_cost"] and r2["accuracy"] >= r1["accuracy"] - 0.01


def test_embedding_feature_routes_before_any_layer(fit_test):
    fit, test = fit_test
    policy = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, feature="embedding").fit(
        fit.logits, fit.labels, fit.embeddings
    )
    exits = policy.predict(test.logits, test.embeddings)
    assert share_at(exits, test.groups == 0, {1}) >= 0.97  # any mobile exit is honest: the cheapest right one
    assert share_at(exits, test.groups == 1, {3}) >= 0.95
    assert share_at(exits, test.groups == 2, {6}) >= 0.95
    with pytest.raises(PolicyError, match="embedding"):
        policy.predict(test.logits)
    with pytest.raises(PolicyError, match="embedding"):
        DimeePolicy(plan=PLAN, feature="embedding").fit(fit.logits, fit.labels)


def test_reward_clusters_beat_pools_when_a_group_is_a_coin_flip_early():
    # middle group: looks fairly confident on mobile but is right there only half the time; right at exit 6.
    # Pools label by the cheapest right tier, so half of it joins the mobile pool and the group is answered
    # on mobile; reward-labelled clusters see the cluster's mean accuracy and send it to cloud.
    groups = [Group(200, 1, 0.3), Group(200, 6, 2.0, early_correct_prob=0.5), Group(200, 6, 0.0)]
    fit, test = draw(0, groups), draw(1, groups)
    results = {}
    for assignment in ("clusters", "pools"):
        policy = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, assignment=assignment).fit(fit.logits, fit.labels)
        result = evaluate_exits(policy.predict(test.logits), test.logits, test.labels, PLAN, CostModel())
        results[assignment] = result["accuracy"] - policy.mu * result["normalised_cost"], result["accuracy"]
    assert results["clusters"][0] > results["pools"][0] + 0.1
    assert results["clusters"][1] > results["pools"][1] + 0.2


@pytest.mark.parametrize("pool_rule", ["oracle", "threshold"])
def test_pools_route_separable_groups(fit_test, pool_rule):
    fit, test = fit_test
    policy = DimeePolicy(plan=PLAN, assignment="pools", pool_rule=pool_rule).fit(fit.logits, fit.labels)
    exits = policy.predict(test.logits)
    assert share_at(exits, test.groups == 0, {2}) >= 0.97
    assert share_at(exits, test.groups == 2, {6}) >= 0.95
    assert policy.n_clusters_ == 3


def test_regression_easy_to_mobile_hard_to_cloud():
    groups = [Group(150, 1), Group(150, 6)]
    fit, test = draw(0, groups, n_classes=1), draw(1, groups, n_classes=1)
    policy = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID).fit(fit.logits, fit.labels)
    exits = policy.predict(test.logits)
    assert share_at(exits, test.groups == 0, {2}) >= 0.95
    assert share_at(exits, test.groups == 1, {6}) >= 0.95


def test_tier_ends_candidates_and_unit_temperatures(fit_test):
    fit, test = fit_test
    ends = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, candidate_exits="tier_ends").fit(fit.logits, fit.labels)
    assert set(np.unique(ends.predict(test.logits))) <= {2, 4, 6}
    plain = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID).fit(fit.logits, fit.labels)
    unit = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, temperatures=[1.0] * 6).fit(fit.logits, fit.labels)
    np.testing.assert_array_equal(plain.predict(test.logits), unit.predict(test.logits))


@pytest.mark.parametrize(
    "params",
    [
        {"assignment": "nearest"},
        {"feature": "tokens"},
        {"k_grid": ()},
        {"k_grid": (0, 2)},
        {"mu": -1.0},
        {"n_folds": 1},
        {"min_cluster_size": -1},
        {"min_cluster_size": 2.5},
    ],
)
def test_bad_params(fit_test, params):
    fit, _ = fit_test
    policy = DimeePolicy(plan=PLAN, **params)
    with pytest.raises(PolicyError):
        policy.fit(fit.logits, fit.labels)
    with pytest.raises(PolicyError, match="not fitted"):  # a failed fit leaves nothing half-fitted
        policy.predict(fit.logits)


def test_tiny_fit_set_falls_back_to_one_cluster():
    data = draw(0, [Group(2, 1), Group(2, 6)])
    policy = DimeePolicy(plan=PLAN).fit(data.logits, data.labels)
    assert policy.n_clusters_ == 1 and policy.cv_rewards_ == {}


# ---- cascade mode (a decision after each decision exit) ------------------------------------------------------
@pytest.fixture(scope="module")
def cascade(fit_test):
    fit, _ = fit_test
    return DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, decision_exits="all").fit(fit.logits, fit.labels)


def test_cascade_answers_easy_samples_at_exit_1(fit_test, cascade):
    fit, test = fit_test
    exits = cascade.predict(test.logits)
    assert share_at(exits, test.groups == 0, {1}) >= 0.97  # one mobile layer, like a threshold rule
    assert share_at(exits, test.groups == 1, {3}) >= 0.95  # right and confident from exit 3: answered there
    assert share_at(exits, test.groups == 2, {6}) >= 0.97
    np.testing.assert_array_equal(cascade.decision_exits_, [1, 2, 3, 4, 5])
    assert len(cascade.cascade_stages_) == 5 and len(cascade.cascade_cv_rewards_) == 5
    assert all(k in SMALL_GRID for k in cascade.cascade_n_clusters_)
    assert cascade.n_clusters_ == sum(cascade.cascade_n_clusters_)
    assert cascade.stage1_ is None and cascade.stage2_ is None
    for g, tier in enumerate(("mobile", "edge", "cloud")):  # the groups' tiers, by construction of the data
        assert cascade.tier_shares_[tier] == pytest.approx(float((fit.groups == g).mean()), abs=0.03), tier
    table = cascade.cluster_table()
    assert len(table) == cascade.n_clusters_
    assert {row["exit"] for row in table} <= {0, 1, 2, 3, 4, 5}
    assert all(row["exit"] in (0, row["decision_exit"]) for row in table)
    assert {row["tier"] for row in table} >= {"mobile", "edge", "continue"}
    # the per-tier policy can only answer the easy group at exit m
    one_shot = evaluate_exits(
        DimeePolicy(plan=PLAN, k_grid=SMALL_GRID).fit(fit.logits, fit.labels).predict(test.logits),
        test.logits,
        test.labels,
        PLAN,
        CostModel(),
    )
    result = evaluate_exits(exits, test.logits, test.labels, PLAN, CostModel())
    assert result["normalised_cost"] < one_shot["normalised_cost"] and result["accuracy"] >= one_shot["accuracy"]


def test_cascade_decisions_are_causal(fit_test, cascade):
    _, test = fit_test
    exits = cascade.predict(test.logits)
    rng = np.random.default_rng(7)
    for j in range(1, PLAN.num_layers):
        changed = test.logits.copy()
        changed[:, j:] = rng.normal(0.0, 5.0, size=changed[:, j:].shape)  # exits > j scrambled
        after = cascade.predict(changed)
        early = exits <= j
        np.testing.assert_array_equal(after[early], exits[early])  # answered at <= j: unchanged
        assert (after[~early] > j).all()  # the others still go past j
    # after exit j the cascade answers at j or goes on (continue; hand on at a tier's last layer)
    one = cascade.step(test.logits[:, :1], "mobile", 1)
    assert set(np.unique(one)) <= {0, 1}
    mobile = cascade.step(test.logits[:, :2], "mobile", 2)
    np.testing.assert_array_equal(mobile[exits == 2], 2)
    assert set(np.unique(mobile[exits > 2])) == {HANDOFF_EDGE}
    edge = cascade.step(test.logits[:, :4], "edge", 4)
    assert set(np.unique(edge)) <= {4, HANDOFF_CLOUD}
    cloud = cascade.step(test.logits, "cloud", 6)
    assert set(np.unique(cloud)) == {6}


def test_cascade_round_trip(fit_test, cascade):
    fit, test = fit_test
    data = json.loads(json.dumps(cascade.to_dict()))
    again = policy_from_dict(data)
    assert again.to_dict() == cascade.to_dict()
    np.testing.assert_array_equal(again.predict(test.logits), cascade.predict(test.logits))
    for tier, depth in (("mobile", 1), ("mobile", 2), ("edge", 3), ("edge", 4), ("cloud", 5), ("cloud", 6)):
        seen = test.logits[:, :depth]
        np.testing.assert_array_equal(again.step(seen, tier, depth), cascade.step(seen, tier, depth))
    assert again.cluster_table() == cascade.cluster_table()
    assert again.tier_shares_ == cascade.tier_shares_ and again.fit_reward_ == cascade.fit_reward_
    assert again.cascade_cv_rewards_ == cascade.cascade_cv_rewards_
    for a, b in zip(again.cascade_stages_, cascade.cascade_stages_):
        for name in ("mean", "scale", "centers", "exits", "sizes"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_default_is_the_per_tier_policy_and_its_format_is_unchanged(fit_test):
    fit, test = fit_test
    plain = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID).fit(fit.logits, fit.labels)
    data = plain.to_dict()
    assert plain.decision_exits_ is None and "cascade" not in data["state"]["policy"]
    # a dict written before cascade mode existed (no decision_exits / cascade_population params) still loads
    for key in ("decision_exits", "cascade_population"):
        del data["params"][key]
    old = policy_from_dict(json.loads(json.dumps(data)))
    assert old.decision_exits is None and old.decision_exits_ is None
    np.testing.assert_array_equal(old.predict(test.logits), plain.predict(test.logits))


def test_cascade_explicit_exits_and_population(fit_test):
    fit, test = fit_test
    ends = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, decision_exits="tier_ends").fit(fit.logits, fit.labels)
    np.testing.assert_array_equal(ends.decision_exits_, [2, 4])
    assert set(np.unique(ends.predict(test.logits))) <= {2, 4, 6}
    explicit = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, decision_exits=[3, 1], cascade_population="reached")
    explicit.fit(fit.logits, fit.labels)
    np.testing.assert_array_equal(explicit.decision_exits_, [1, 3])
    exits = explicit.predict(test.logits)
    assert set(np.unique(exits)) <= {1, 3, 6}
    assert share_at(exits, test.groups == 0, {1}) >= 0.97
    again = policy_from_dict(json.loads(json.dumps(explicit.to_dict())))
    np.testing.assert_array_equal(again.predict(test.logits), exits)


@pytest.mark.parametrize(
    "params",
    [
        {"decision_exits": "every"},
        {"decision_exits": 3},
        {"decision_exits": ()},
        {"decision_exits": (0, 2)},
        {"decision_exits": (6,)},
        {"decision_exits": (1.5,)},
        {"decision_exits": "all", "cascade_population": "some"},
        {"decision_exits": "all", "edge_stage": True},
        {"decision_exits": "all", "feature": "embedding"},
        {"decision_exits": "all", "assignment": "pools"},
    ],
)
def test_bad_cascade_params(fit_test, params):
    fit, _ = fit_test
    policy = DimeePolicy(plan=PLAN, **params)
    with pytest.raises(PolicyError):
        policy.fit(fit.logits, fit.labels, fit.embeddings)
    with pytest.raises(PolicyError, match="not fitted"):
        policy.predict(fit.logits)


@pytest.mark.parametrize(
    "params",
    [
        {},  # per-tier clusters: the settings' choices are made together
        {"shrinkage": 3.0, "routes": "chain"},
        {"decision_exits": "all"},  # a cascade: fitted setting by setting through fit
    ],
)
def test_fit_many_gives_each_setting_the_state_fit_gives_it(fit_test, params):
    """The sweep's fast path is fit itself: one DimeePolicy.fit_many over several (cost model, mu) equals a
    separate fit per setting, state for state, bit for bit."""
    fit, _ = fit_test
    settings = [(CostModel(mobile_to_edge=a, edge_to_cloud=b), mu) for a, b, mu in
                [(0.0, 0.3, 0.1), (0.6, 0.05, 0.3), (0.2, 0.2, 0.0), (0.6, 0.6, 1.0)]]  # fmt: skip
    proto = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, **params)
    many = proto.fit_many([{"cost_model": cost, "mu": mu} for cost, mu in settings], fit.logits, fit.labels)
    assert not hasattr(proto, "plan_")  # the prototype itself stays unfitted
    for (cost, mu), policy in zip(settings, many):
        alone = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, cost_model=cost, mu=mu, **params).fit(fit.logits, fit.labels)
        assert json.dumps(policy.to_dict(), sort_keys=True) == json.dumps(alone.to_dict(), sort_keys=True)
        assert policy.routing_digest() == alone.routing_digest()
    assert len({p.routing_digest() for p in many}) > 1  # the settings did move the choices


def test_fit_many_refuses_like_fit_and_leaves_nothing_half_fitted(fit_test):
    fit, _ = fit_test
    proto = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID)
    with pytest.raises(PolicyError, match="mu must be finite"):
        proto.fit_many([{"mu": 0.1}, {"mu": -1.0}], fit.logits, fit.labels)
    with pytest.raises(PolicyError, match="must share plan"):
        proto.fit_many([{"plan": TierPlan(1, 3, 6)}], fit.logits, fit.labels)
    assert proto.fit_many([], fit.logits, fit.labels) == []


def test_fit_many_names_an_unknown_parameter_and_the_kept_digest_follows_param_changes(fit_test):
    fit, _ = fit_test
    with pytest.raises(PolicyError, match="no parameter.*bogus"):
        DimeePolicy(plan=PLAN, k_grid=SMALL_GRID).fit_many([{"bogus": 1}], fit.logits, fit.labels)
    policy = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID).fit(fit.logits, fit.labels)
    before = policy.routing_digest()
    policy.set_params(profile_features=("confidence",))
    assert policy.routing_digest() != before


def test_min_cluster_size_sends_small_clusters_with_the_population(fit_test):
    fit, test = fit_test
    free = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID).fit(fit.logits, fit.labels)
    assert len(set(free.stage1_.exits.tolist())) > 1  # without a floor the clusters answer differently
    floor = len(fit.labels) + 1  # above any cluster of any k: every cluster answers as the whole population
    held = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, min_cluster_size=floor).fit(fit.logits, fit.labels)
    assert len(set(zip(held.stage1_.routes.tolist(), held.stage1_.exits.tolist()))) == 1
    zero = DimeePolicy(plan=PLAN, k_grid=SMALL_GRID, min_cluster_size=0).fit(fit.logits, fit.labels)
    np.testing.assert_array_equal(zero.predict(test.logits), free.predict(test.logits))  # 0: no floor
