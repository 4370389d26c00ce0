"""The one DIMEE fitting core (clustering.stages): k-means is cached per feature matrix, the reward-dependent
choice is redone per fit, and a warm fit gives exactly the state of a cold one."""

from __future__ import annotations

import numpy as np
import pytest

from clustering import DimeePolicy, Group, clear_cluster_cache, make_exit_logits
from clustering import stages
from clustering.stages import ClusterSettings, fit_cluster_stage
from tiers import CostModel, TierPlan

PLAN = TierPlan(2, 4, 6)
GROUPS = [Group(60, 1, 0.3, 0.2), Group(50, 3, 1.2, 0.2), Group(40, 6, 0.0, 0.1)]
VARIANTS = {
    "dimee": {},
    "edge": {"edge_stage": True},
    "embedding": {"feature": "embedding"},
    "paper": {"feature": "embedding", "assignment": "pools"},
    "cascade": {"decision_exits": "all"},
    "entry": {"decision_exits": "all", "entry": "embedding"},
}


@pytest.fixture(scope="module")
def data():
    return make_exit_logits(GROUPS, n_classes=2, seed=0, embedding_dim=8)


def _fit(data, cost: CostModel, mu: float, **kwargs) -> DimeePolicy:
    return DimeePolicy(PLAN, cost, mu=mu, k_grid=(1, 2, 3, 4), **kwargs).fit(
        data.logits, data.labels, features=data.embeddings
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_warm_fit_has_the_state_of_a_cold_one(data, variant):
    """Fit under other costs and mu first (the cache fills), then compare with a fit on an empty cache."""
    kwargs = VARIANTS[variant]
    _fit(data, CostModel().with_values(edge_to_cloud=0.6), 0.4, **kwargs)
    warm = _fit(data, CostModel(), 0.05, **kwargs).to_dict()
    clear_cluster_cache()
    cold = _fit(data, CostModel(), 0.05, **kwargs).to_dict()
    assert warm == cold


def test_refitting_under_other_costs_runs_no_kmeans(data, monkeypatch):
    clear_cluster_cache()
    calls = []
    real = stages._kmeans
    monkeypatch.setattr(stages, "_kmeans", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    first = _fit(data, CostModel(), 0.05)
    assert calls, "the first fit clusters"
    calls.clear()
    second = _fit(data, CostModel().with_values(mobile_to_edge=0.5, edge_to_cloud=0.5), 0.3)
    assert calls == []
    assert second.stage1_.routes.tolist() != first.stage1_.routes.tolist() or second.mu != first.mu


def test_choice_per_cluster_by_hand():
    """Two far-apart blobs; candidate 0 is right on blob A only, candidate 1 on both but costs 0.3."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-10, 0.1, (30, 2)), rng.normal(10, 0.1, (30, 2))])
    correct = np.zeros((60, 2))
    correct[:30, 0] = 1.0
    correct[:, 1] = 1.0
    rewards = correct - np.array([0.0, 0.3])[None, :]  # blob A: 1 vs 0.7 -> 0; blob B: 0 vs 0.7 -> 1
    stage, k, cv = fit_cluster_stage(x, rewards, np.array([7, 9]), ClusterSettings((1, 2, 3), 3, 2, 0, k_tolerance=0.0))
    assert k == 2  # one cluster can only pick candidate 1 everywhere: 0.7 < 0.85
    assert cv[1] == pytest.approx(0.7) and cv[2] == pytest.approx(0.85)
    assigned = stage.targets(x)
    assert (assigned[:30] == 7).all() and (assigned[30:] == 9).all()
    assert sorted(stage.sizes.tolist()) == [30, 30]


def test_a_calibration_split_too_small_for_the_requested_k_names_the_fix(data):
    from clustering import PolicyError

    few = slice(0, 12)
    with pytest.raises(PolicyError, match="pass a smaller k_grid, fewer n_folds, or a larger calibration split"):
        DimeePolicy(PLAN, mu=0.1, k_grid=(12,)).fit(data.logits[few], data.labels[few])
    # a grid with some k that fit is fine: the others are skipped
    assert DimeePolicy(PLAN, mu=0.1, k_grid=(2, 12)).fit(data.logits[few], data.labels[few]).n_clusters_ == 2


def test_the_cache_owns_its_data_and_stages_own_theirs(data):
    clear_cluster_cache()
    emb = data.embeddings.copy()
    first = DimeePolicy(PLAN, mu=0.05, k_grid=(2, 3), feature="embedding").fit(data.logits, data.labels, features=emb)
    emb[:] = 0.0  # the caller changes its array in place after the fit
    first.stage1_.centers[:] = 99.0  # and a fitted stage is changed in place
    again = DimeePolicy(PLAN, mu=0.05, k_grid=(2, 3), feature="embedding").fit(
        data.logits, data.labels, features=data.embeddings
    )
    clear_cluster_cache()
    cold = DimeePolicy(PLAN, mu=0.05, k_grid=(2, 3), feature="embedding").fit(
        data.logits, data.labels, features=data.embeddings
    )
    assert again.to_dict() == cold.to_dict()


def test_a_mu_dependent_sub_population_falls_back_instead_of_refusing(data):
    rows = np.random.default_rng(0).permutation(150)[:40]
    policy = DimeePolicy(PLAN, mu=0.8, k_grid=(12,), edge_stage=True)
    policy.fit(data.logits[rows], data.labels[rows])  # stage 1 sends 12 on: too few for k = 12 in 3 folds
    assert policy.n_clusters_ == 12 and policy.edge_n_clusters_ == 1


def test_shrinkage_keeps_a_small_cluster_with_the_population_unless_its_margin_is_clear():
    """A 3-sample cluster whose candidate 0 looks better by 0.2 on average; the 60 others prefer candidate 1.
    Plain means let the small cluster answer with 0; a pseudo-count of 10 pulls it to the population's 1."""
    groups = np.array([0] * 60 + [1] * 3)
    rewards = np.zeros((63, 2))
    rewards[:60, 1] = 1.0  # population: candidate 1 right, candidate 0 wrong
    rewards[60:, 0] = [1.0, 1.0, 0.0]  # small cluster: 0.67 vs 0.47 for candidate 1
    rewards[60:, 1] = [0.4, 0.4, 0.6]
    plain = stages._best_candidate_per_group(groups, 2, stages.LinearRewards.plain(rewards))[0]
    shrunk = stages._best_candidate_per_group(groups, 2, stages.LinearRewards.plain(rewards), shrinkage=10.0)[0]
    assert plain.tolist() == [1, 0]
    # by hand: overall means 2/63 and 61.4/63; cluster 1: (2 + 10 * 2/63) / 13 = 0.18 vs (1.4 + 10 * 61.4/63) / 13 = 0.86
    assert shrunk.tolist() == [1, 1]


def test_shrinkage_is_a_validated_parameter_that_round_trips(data):
    from clustering import ExitPolicy, PolicyError

    with pytest.raises(PolicyError, match="shrinkage must be finite and >= 0"):
        DimeePolicy(PLAN, mu=0.1, shrinkage=-1.0).fit(data.logits, data.labels)
    policy = DimeePolicy(PLAN, mu=0.1, k_grid=(2, 3), shrinkage=5.0).fit(data.logits, data.labels)
    again = ExitPolicy.from_dict(policy.to_dict())
    assert again.shrinkage == 5.0
    assert (again.predict(data.logits) == policy.predict(data.logits)).all()
