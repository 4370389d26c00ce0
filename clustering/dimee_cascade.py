"""DIMEE's cascade mode fitted: the backward fit of the stages after each decision exit (cluster stages, or the
confidence threshold's rule as threshold stages) and the entry stage that picks, from the embedding feature, the
tier a sample enters. `clustering.dimee` describes the policy; this module holds the fitting of those stages.

Separate from `clustering.dimee` to keep the policy class readable in one sitting; the functions read and set the
policy's fitted attributes through its own helpers (duck-typed), as `clustering.dimee_fit` does for the
per-tier stage, so nothing here imports `clustering.dimee` at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tiers import TierPlan

from .errors import PolicyError
from .routing import path_table
from .stages import CONTINUE, RoutingStage, fit_cluster_stage, threshold_stage

if TYPE_CHECKING:
    from .dimee import DimeePolicy


def fit_cascade(policy: "DimeePolicy", logits: np.ndarray, correct: np.ndarray) -> None:
    """Backward fit of the cascade stages (`clustering.dimee` module doc); sets the policy's cascade attributes."""
    exits = [int(j) for j in policy.decision_exits_]
    if policy.exit_threshold is not None:
        stages = [threshold_stage(float(policy.exit_threshold), j, policy._cascade_features(logits, j)) for j in exits]
        policy._set_cascade(stages, [2] * len(exits), [{} for _ in exits])
        return
    n, L = logits.shape[0], policy.num_layers_
    answer_rewards = correct - policy.mu * policy.normalised_exit_costs()[None, :]  # [n, L]
    feats = {j: policy._cascade_features(logits, j) for j in exits}
    min_population = 2 * int(policy.n_folds)
    fitted: dict[int, tuple[RoutingStage, int, dict[int, float]]] = {}
    passes = 1 if policy.cascade_population == "all" else 2
    for pass_no in range(passes):
        reached = {j: np.ones(n, dtype=bool) for j in exits}
        if pass_no > 0:  # who reaches each stage under the current (previous pass's) earlier stages
            alive = np.ones(n, dtype=bool)
            for j in exits:
                reached[j] = alive.copy()
                alive &= fitted[j][0].targets(feats[j]) != j
        cont = answer_rewards[:, L - 1].copy()  # reward of continuing past the deepest stage: exit L
        for j in reversed(exits):
            rows = reached[j] if reached[j].sum() >= min_population else np.ones(n, dtype=bool)
            rewards = np.stack([answer_rewards[:, j - 1], cont], axis=1)  # [answer at j, continue]
            fitted[j] = fit_cluster_stage(
                feats[j][rows],
                rewards[rows],
                np.array([j, CONTINUE], dtype=np.int64),
                policy._cluster_settings(),
                strict=bool(rows.all()),  # a "reached" subset's size depends on mu: fall back, never refuse
            )
            answers = fitted[j][0].targets(feats[j]) == j
            cont = np.where(answers, answer_rewards[:, j - 1], cont)
    policy._set_cascade([fitted[j][0] for j in exits], [int(fitted[j][1]) for j in exits], [dict(fitted[j][2]) for j in exits])


def cascade_exits(policy: "DimeePolicy", logits: np.ndarray) -> np.ndarray:
    """Where the cascade answers each sample: its first decision exit whose stage answers, else L. The
    same on every entry tier, since the stages read the exits' logits only."""
    n, L = logits.shape[0], logits.shape[1]
    exits = np.full(n, L, dtype=np.int64)
    open_ = np.ones(n, dtype=bool)
    for j, stage in zip(policy.decision_exits_, policy.cascade_stages_):
        answers = open_ & policy._stage_answers(stage, policy._cascade_features(logits, int(j)), int(j))
        exits[answers] = int(j)
        open_ &= ~answers
    return exits


def entry_routes(plan: TierPlan, exits: np.ndarray) -> np.ndarray:
    """[n, 3] route index of a sample answering at `exits` when it enters at mobile (the linear route),
    edge or cloud (token ids); -1 where the deployment has no such route."""
    table = path_table(plan)
    e = plan.edge_end
    out = np.full((exits.size, 3), -1, dtype=np.int64)
    out[:, 0] = table.chain_indices(exits)
    for tier, name in ((1, "edge"), (2, "cloud")):
        if 0 not in plan.accepts(name):
            continue
        for j in np.unique(exits):
            path = (("mobile", 0), (name, 0))
            if name == "edge" and j > e:
                path = path + (("cloud", e),)
            if path in table.paths:
                out[exits == j, tier] = table.index(path)
    return out


def fit_entry(policy: "DimeePolicy", logits: np.ndarray, correct: np.ndarray, features: np.ndarray | None) -> None:
    """Entry stage (entry='embedding'): on the embedding feature, before any layer, choose the tier the
    sample enters (mobile: the linear route; edge or cloud: token ids straight there), by the reward of
    the cascade's answer on that route."""
    if features is None:
        raise PolicyError("entry='embedding' routes on embedding features: pass them to fit, predict and step")
    exits = cascade_exits(policy, logits)
    routes = entry_routes(policy.plan_, exits)
    rows = np.arange(exits.size)
    costs = policy.normalised_path_costs()
    rewards = np.full((exits.size, 3), -np.inf)
    for tier in range(3):
        valid = routes[:, tier] >= 0
        rewards[valid, tier] = correct[rows[valid], exits[valid] - 1] - policy.mu * costs[
            routes[valid, tier], exits[valid] - 1
        ]
    usable = np.isfinite(rewards).all(axis=0)
    tiers_ = np.flatnonzero(usable)
    policy.entry_stage_, policy.entry_n_clusters_, policy.entry_cv_rewards_ = fit_cluster_stage(
        features,
        rewards[:, usable],
        tiers_.astype(np.int64),
        policy._cluster_settings(),
    )
