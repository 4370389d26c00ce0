"""DIMEE's batched fit: the per-tier cluster policy's stage 1 for many copies that differ in cost model and
mu only, fitted at once (``DimeePolicy.fit_many``, and ``fit`` for one copy), and the candidate-cluster stages
it and ``DimeePolicy._fit_stage`` share.

Separate from `clustering.dimee` because it works on many policies together, not on one: the features,
candidates and k-means clusterings are shared and every copy's per-cluster choice is made in one pass
(``fit_cluster_stages``), which is what makes a cost sweep fast. It reads the policies through their fitted
attributes and helpers only (duck-typed), so it needs no import of `clustering.dimee` at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tiers import path_costs_many

from .routing import Outcome
from .stages import ClusterSettings, LinearRewards, RoutingStage, fit_cluster_stages

if TYPE_CHECKING:
    from .dimee import DimeePolicy


def _fit_candidate_clusters(
    x: np.ndarray,
    correct: np.ndarray,
    candidates: tuple[np.ndarray, np.ndarray],
    penalty: np.ndarray,
    settings: ClusterSettings,
    strict: bool = True,
) -> list[tuple[RoutingStage, int, dict[int, float]]]:
    """Cluster stages over (route, exit) candidates, one per row of `penalty` [S, J] (mu times each
    candidate's normalised cost): reward = right at the candidate's exit - penalty. Each stage answers with
    its clusters' (route, exit)."""
    routes, exits = candidates
    index = np.arange(routes.size, dtype=np.int64)
    fitted = fit_cluster_stages(x, LinearRewards(correct[:, exits - 1], penalty), index, settings, strict=strict)
    for stage, _, _ in fitted:  # every setting's stage is its own object (ClusterBank hands out copies)
        chosen = stage.exits
        stage.routes, stage.exits = routes[chosen], exits[chosen]
    return fitted


def _fit_per_tier_clusters(
    policies: list["DimeePolicy"], logits: np.ndarray, features: np.ndarray | None, correct: np.ndarray
) -> None:
    """Stage 1 of per-tier cluster policies that differ in cost model and mu only, all at once (one policy:
    its ``fit``): the features, candidates and clusterings are shared, every policy's choices made together
    (``fit_cluster_stages``), and the fit-data outcome computed once per distinct fitted routing."""
    first = policies[0]
    x1 = first._stage1_features(logits, features)
    routes, exits = first._candidates(1)
    costs = path_costs_many([p.cost_model_ for p in policies], first.plan_, list(first.paths_.paths))  # [S, P, L]
    mus = np.array([float(p.mu) for p in policies])
    penalty = mus[:, None] * costs[:, routes, exits - 1]
    fitted = _fit_candidate_clusters(x1, correct, (routes, exits), penalty, first._cluster_settings())
    outcomes: dict[tuple, tuple[Outcome, str]] = {}
    for policy, (stage, k, cv), path_costs in zip(policies, fitted, costs):
        policy.stage1_, policy.n_clusters_, policy.cv_rewards_ = stage, k, cv
        policy.stage2_, policy.edge_n_clusters_, policy.edge_cv_rewards_ = None, 0, {}
        key = (k, stage.routes.tobytes(), stage.exits.tobytes())  # the copies share their clustering for each k
        if key not in outcomes:
            outcomes[key] = (policy.predict_outcome(logits, features), policy.routing_digest())
        outcome, digest = outcomes[key]
        policy._routing_digest = (policy._digest_basis(), digest)  # kept while the stages and params stay
        policy._set_fit_summary_from(outcome, correct, path_costs)
