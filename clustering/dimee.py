"""DIMEE: route each sample to mobile, edge or cloud by the cluster its features fall in.

Fitting (on a held-out split):

1. Features: the mobile exit-confidence profile (exits 1..m, ``profile_features``, after ``temperatures``;
   by default confidence, entropy and margin per exit, chosen on the first ablation, with a 12-value mu grid:
   entropy and margin raised the cross-fitted calibration Pareto area of the cascade on 4 of 5 tasks and of
   the per-tier policy on 3, lowering it on none. With the report's 60-value grid, ``results/dimee_ablation.md``
   shows a smaller edge: confidence only is ahead on calibration for the per-tier policy on 2 tasks, and
   behind for the cascade on 3. For a binary task the margin is 2 x confidence - 1, so after standardisation
   it only doubles confidence's weight), or the embedding-layer feature passed as ``features`` when
   ``feature="embedding"``. Standardised (StandardScaler statistics kept in the fitted state).
2. Each fit sample's reward at candidate exit j: ``correct_j - mu * normalised_cost_j`` (cost model §4).
3. ``assignment="clusters"`` (default): k-means for each k in ``k_grid``; k is the smallest whose held-out
   reward in ``n_folds``-fold cross-validation on the fit data is within ``k_tolerance`` of the best; then k-means
   on all fit data, and each cluster gets the candidate exit with the highest mean reward on its samples
   (``shrinkage`` s > 0: the mean is pulled towards all samples' mean, ``(sum + s * overall) / (n + s)``, so
   a small cluster answers differently from the population only on a clear margin; ``min_cluster_size`` n:
   a cluster of fewer than n fit samples answers as the whole population does).
   ``assignment="pools"`` (the paper's rule): each fit sample is labelled with a tier, by the cheapest exit
   that is right (``pool_rule="oracle"``) or where a confidence-threshold rule exits it
   (``pool_rule="threshold"``, threshold chosen with ``max_drop``); a pool's centre is the mean of its
   samples, and a pool answers at the best-reward candidate exit of its tier. A new sample goes to the
   nearest centre in both cases.
4. ``edge_stage=True``: the samples stage 1 sends onward are fitted again, the same way, on their edge
   profile (exits 1..e), to choose edge (exit e) or cloud; online, edge and cloud consult this stage.

Candidate exits are the ones whose cost is honest for the decision: a decision on the mobile profile has
already run all m mobile layers, so it can answer on mobile only at exit m (at the same cost, m's answer is
the natural pick) or later; a decision on embedding features, made before any layer, may answer at any exit
1..L. The edge stage reads exits 1..e, so it answers at e or later, and stage 1 then only chooses between
mobile and "onward" (exits >= e). ``candidate_exits="tier_ends"`` restricts the candidates to m, e and L.

Cascade mode (``decision_exits`` not None): a decision after each decision exit j (``"all"``: every exit
1..L-1; ``"tier_ends"``: m and e; or an explicit sequence of exits in 1..L-1), instead of one decision per
tier. The stage at exit j sees the profile of exits 1..j only (causal: what is known when exit j has run) and
chooses, per k-means cluster, between "answer at j" and "continue" (k by cross-validation as above,
``fit_cluster_stage``). Stages are fitted backward, from the deepest decision exit to the first: the reward
of "answer at j" is ``correct_j - mu * normalised_cost_j``; the reward of "continue" is the reward the
sample gets from the already-fitted deeper stages (exit L if none of them answers). Online, a tier answers
at the first of its decision exits whose stage says "answer", else hands off (the last tier answers at L).
So exit 1 can answer on mobile at the cost of one layer, as a threshold rule does, while later stages see
the whole confidence trajectory.

Which samples fit a stage (``cascade_population``): ``"all"`` (default) fits every stage once, on all fit
samples (each stage is causal, so any sample can be scored by it, and the "continue" reward of every sample
is defined). ``"reached"`` fits each stage on the samples that reach it, i.e. that no earlier stage answers:
those are not known during the backward pass, so it runs a first backward pass on all samples and a second
one where stage j is fitted on the samples the current earlier stages pass on. "reached" is the population
a stage really serves, but its deeper stages fit fewer samples. On the cached GLUE runs (SST-2 and MRPC,
22 values of mu from 0.001 to 1, fitted on calibration, scored on validation) "all" had the higher held-out
reward ``accuracy - mu * normalised cost`` summed over the sweep (by 2.5 points on SST-2, 2.2 on MRPC; where
"reached" was ahead, by at most 0.3 and 0.6 points), and it fits in half the time, hence the default.

Threshold stages (``exit_threshold`` t, cascade mode only): every decision exit's stage answers where that
exit's confidence (after ``temperatures``) is >= t and continues elsewhere, the confidence-threshold rule's
decision, as a two-centre stage on that one score (``clustering.stages.threshold_stage``), so nothing of the
cascade is fitted and t is the knob. Its use is under an entry stage: DIMEE's own idea, judging a sample
before any layer runs and sending a hard one straight to the tier that will answer it, on top of the exit rule
that the cluster stages could not beat on small calibration splits. The entry stage's rewards differ between
tiers in cost only (the sample answers at the same exit whatever tier it enters), so mu only scales them (and
with them the absolute ``k_tolerance`` and ``shrinkage``); the report and the sweep fit it with
``ENTRY_THRESHOLD_MU`` = 1. With ``decision_exits="all"`` and no entry stage the policy answers as
``ThresholdPolicy(threshold=t)``; other decision exits give the threshold at those exits only.
``profile_features`` and ``cascade_population`` do not apply to threshold stages.

Cascade mode routes on exit profiles only: it does not combine with ``feature="embedding"``,
``assignment="pools"`` or ``edge_stage`` (its own stages at exits > m play the edge stage's part), and
``candidate_exits`` does not apply (a stage answers at its own exit).
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from tiers import HANDOFF_CLOUD, HANDOFF_EDGE, TIERS, CostModel, TierPlan, exit_span

from .base import ExitPolicy, register_policy
from .baselines import ThresholdPolicy
from .dimee_cascade import fit_cascade, fit_entry
from .dimee_fit import _fit_candidate_clusters, _fit_per_tier_clusters
from .errors import PolicyError
from .profiles import REGRESSION_TOLERANCE, exit_profile, per_exit_correct
from .routing import Outcome, chain_actions, follow_targets, path_table
from .stages import (
    CONTINUE,
    ClusterSettings,
    RoutingStage,
    cheapest_correct_candidates,
    fit_pool_stage,
)

ASSIGNMENTS: tuple[str, ...] = ("clusters", "pools")
POOL_RULES: tuple[str, ...] = ("oracle", "threshold")
FEATURE_KINDS: tuple[str, ...] = ("profile", "embedding")
CANDIDATE_SETS: tuple[str, ...] = ("all", "tier_ends")
DECISION_EXIT_SETS: tuple[str, ...] = ("all", "tier_ends")
CASCADE_POPULATIONS: tuple[str, ...] = ("all", "reached")
ROUTE_SETS: tuple[str, ...] = ("all", "chain")
ENTRY_FEATURES: tuple[str | None, ...] = (None, "embedding")
# mu for an entry stage over threshold stages (module doc): its rewards differ between entry tiers in cost only,
# so mu only scales them; 1 weighs a normalised cost of 1 against one right answer
ENTRY_THRESHOLD_MU: float = 1.0


# ---- the policy -------------------------------------------------------------------------------------------
@register_policy
class DimeePolicy(ExitPolicy):
    """DIMEE tier selection by clustering (module doc). Fitted attributes: ``stage1_``, ``stage2_`` (or
    None), ``n_clusters_``, ``edge_n_clusters_``, ``cv_rewards_`` / ``edge_cv_rewards_`` (k -> held-out
    reward), ``tier_shares_`` and ``fit_reward_`` on the fit data.

    With ``feature="embedding"`` the services must pass the sample's embedding feature to every tier that
    consults stage 1 (mobile always; edge and cloud unless ``edge_stage``).

    Cascade mode (``decision_exits``, module doc) fits instead ``decision_exits_`` (int array of the decision
    exits, None outside cascade mode), ``cascade_stages_`` (one RoutingStage per decision exit, each centre's
    exit being that decision exit or ``CONTINUE`` = 0), ``cascade_n_clusters_`` and ``cascade_cv_rewards_``
    (per decision exit); ``stage1_`` and ``stage2_`` are None there and ``n_clusters_`` is the total number
    of centres over all stages.
    """

    def __init__(
        self,
        plan: TierPlan | None = None,
        cost_model: CostModel | None = None,
        temperatures: Sequence[float] | None = None,
        mu: float = 0.1,
        k_grid: Sequence[int] = tuple(range(2, 13)),
        feature: str = "profile",
        profile_features: Sequence[str] = ("confidence", "entropy", "margin"),
        assignment: str = "clusters",
        pool_rule: str = "oracle",
        max_drop: float = 0.01,
        edge_stage: bool = False,
        candidate_exits: str = "all",
        n_folds: int = 3,
        n_init: int = 4,
        random_state: int = 0,
        k_tolerance: float = 0.002,
        regression_tolerance: float = REGRESSION_TOLERANCE,
        decision_exits: str | Sequence[int] | None = None,
        cascade_population: str = "all",
        routes: str = "all",
        entry: str | None = None,
        shrinkage: float = 0.0,
        min_cluster_size: int = 0,
        exit_threshold: float | None = None,
    ):
        self.plan = plan
        self.cost_model = cost_model
        self.temperatures = temperatures
        self.mu = mu
        self.k_grid = k_grid
        self.feature = feature
        self.profile_features = profile_features
        self.assignment = assignment
        self.pool_rule = pool_rule
        self.max_drop = max_drop
        self.edge_stage = edge_stage
        self.candidate_exits = candidate_exits
        self.n_folds = n_folds
        self.n_init = n_init
        self.random_state = random_state
        self.k_tolerance = k_tolerance
        self.regression_tolerance = regression_tolerance
        self.decision_exits = decision_exits
        self.cascade_population = cascade_population
        self.routes = routes
        self.entry = entry
        self.shrinkage = shrinkage
        self.min_cluster_size = min_cluster_size
        self.exit_threshold = exit_threshold

    # ---- candidates and features ------------------------------------------------------------------
    def _cluster_settings(self) -> ClusterSettings:
        return ClusterSettings(
            tuple(int(k) for k in self.k_grid),
            int(self.n_folds),
            int(self.n_init),
            int(self.random_state),
            float(self.k_tolerance),
            float(self.shrinkage),
            int(self.min_cluster_size),
        )

    def _validate_params(self) -> None:
        for name, value, allowed in (
            ("feature", self.feature, FEATURE_KINDS),
            ("assignment", self.assignment, ASSIGNMENTS),
            ("pool_rule", self.pool_rule, POOL_RULES),
            ("candidate_exits", self.candidate_exits, CANDIDATE_SETS),
            ("routes", self.routes, ROUTE_SETS),
            ("entry", self.entry, ENTRY_FEATURES),
        ):
            if value not in allowed:
                raise PolicyError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")
        if not np.isfinite(self.mu) or self.mu < 0:
            raise PolicyError(f"mu must be finite and >= 0, got {self.mu}")
        if len(self.k_grid) == 0 or any(int(k) != k or int(k) < 1 for k in self.k_grid):
            raise PolicyError(f"k_grid must be a non-empty list of integers >= 1, got {self.k_grid!r}")
        if int(self.n_folds) < 2:
            raise PolicyError(f"n_folds must be >= 2, got {self.n_folds}")
        if not np.isfinite(self.k_tolerance) or self.k_tolerance < 0:
            raise PolicyError(f"k_tolerance must be finite and >= 0, got {self.k_tolerance}")
        if not np.isfinite(self.shrinkage) or self.shrinkage < 0:
            raise PolicyError(f"shrinkage must be finite and >= 0, got {self.shrinkage}")
        size = self.min_cluster_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise PolicyError(f"min_cluster_size must be an integer >= 0, got {size!r}")
        if int(self.n_init) < 1:
            raise PolicyError(f"n_init must be >= 1, got {self.n_init}")
        if self.entry is not None and self.decision_exits is None:
            raise PolicyError("entry='embedding' chooses the entry tier of a cascade: set decision_exits too")
        if self.exit_threshold is not None:
            t = self.exit_threshold
            if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not np.isfinite(t):
                raise PolicyError(f"exit_threshold must be a finite number (a confidence threshold), got {t!r}")
            if self.decision_exits is None:
                raise PolicyError(
                    "exit_threshold sets the stages of a cascade: set decision_exits too (e.g. decision_exits='all')"
                )
        if self.edge_stage and self.feature != "profile":
            raise PolicyError("edge_stage=True decides again at edge on the exit profile: it needs feature='profile'")
        if self.decision_exits is not None:
            if self.cascade_population not in CASCADE_POPULATIONS:
                raise PolicyError(
                    f"cascade_population={self.cascade_population!r} is not one of "
                    f"{', '.join(map(repr, CASCADE_POPULATIONS))}"
                )
            for name, value, plain in (
                ("feature", self.feature, "profile"),
                ("assignment", self.assignment, "clusters"),
                ("edge_stage", self.edge_stage, False),
            ):
                if value != plain:
                    raise PolicyError(f"decision_exits (cascade mode) needs {name}={plain!r}, got {value!r}")

    def _resolve_decision_exits(self) -> np.ndarray | None:
        """Sorted decision exits of cascade mode (1..L-1), or None outside it."""
        spec = self.decision_exits
        if spec is None:
            return None
        m, e, L = self.plan_.mobile_end, self.plan_.edge_end, self.plan_.num_layers
        if isinstance(spec, str):
            if spec not in DECISION_EXIT_SETS:
                raise PolicyError(
                    f"decision_exits={spec!r} is not one of {', '.join(map(repr, DECISION_EXIT_SETS))}, "
                    "None or a sequence of exits"
                )
            chosen = set(range(1, L)) if spec == "all" else {j for j in (m, e) if 1 <= j < L}
        else:
            try:
                values = list(spec)
            except TypeError:
                raise PolicyError(
                    f"decision_exits must be None, a keyword or a sequence of exits, got {spec!r}"
                ) from None
            if not values:
                raise PolicyError("decision_exits is an empty sequence (use None for the per-tier policy)")
            chosen = set()
            for j in values:
                if isinstance(j, bool) or not isinstance(j, (int, np.integer, float)) or int(j) != j:
                    raise PolicyError(f"decision_exits must hold integer exits, got {j!r}")
                if not 1 <= int(j) <= L - 1:
                    raise PolicyError(
                        f"decision exit {int(j)} is outside 1..{L - 1} (exit {L} always answers; no decision there)"
                    )
                chosen.add(int(j))
        return np.array(sorted(chosen), dtype=np.int64)

    def _candidates(self, stage: int) -> tuple[np.ndarray, np.ndarray]:
        """(route indices, exits) a stage may choose. Stage 1 decides on mobile: after layer m on the exit
        profile (so it answers at m or hands on at m), before any layer on embedding features (any route,
        any exit). Stage 2 (edge_stage) decides at edge after layer e, on the linear route."""
        plan = self.plan_
        m, e = plan.mobile_end, plan.edge_end
        table = path_table(plan)
        if stage == 2:
            exits = np.arange(e, plan.num_layers + 1, dtype=np.int64)
            routes = table.chain_indices(exits)
        else:
            routes, exits = table.candidates(m if self.feature == "profile" else 0)
        keep = np.ones(routes.size, dtype=bool)
        if self.routes == "chain" or self.edge_stage:  # the edge stage decides on the linear route
            keep &= routes == table.chain_indices(exits)
        if stage == 1 and self.edge_stage:
            keep &= (exits <= m) | (exits >= e)
        if self.candidate_exits == "tier_ends":
            ends = np.array([exit_span(plan, table.paths[r])[1] for r in routes])
            keep &= exits == ends
        if not keep.any():
            raise PolicyError(f"no candidate route for DIMEE stage {stage} in plan {plan.spec} with these settings")
        return routes[keep], exits[keep]

    def _stage1_features(self, logits_seen: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        if self.feature == "embedding":
            if features is None:
                raise PolicyError(
                    "this DIMEE policy routes on embedding features: pass them (the [n, d] array used in fit) "
                    "to fit, predict and decide"
                )
            return features
        m = self.plan_.mobile_end
        return exit_profile(logits_seen[:, :m], None, tuple(self.profile_features), self._temps(m))

    def _stage2_features(self, logits_seen: np.ndarray) -> np.ndarray:
        e = self.plan_.edge_end
        return exit_profile(logits_seen[:, :e], None, tuple(self.profile_features), self._temps(e))

    def _cascade_features(self, logits_seen: np.ndarray, j: int) -> np.ndarray:
        """Profile of exits 1..j (computed from those exits only, so a stage never reads a later exit); with
        threshold stages, exit j's confidence alone [n, 1]."""
        if self.exit_threshold is not None:
            return exit_profile(logits_seen[:, :j], slice(j - 1, j), ("confidence",), self._temps(j))
        return exit_profile(logits_seen[:, :j], None, tuple(self.profile_features), self._temps(j))

    def _candidate_costs(self, routes: np.ndarray, exits: np.ndarray) -> np.ndarray:
        """Normalised cost of each candidate (route, exit), answering as soon as the exit is reached [J]."""
        return self.normalised_path_costs()[routes, exits - 1]

    def _rewards(self, correct: np.ndarray, routes: np.ndarray, exits: np.ndarray) -> np.ndarray:
        return correct[:, exits - 1] - self.mu * self._candidate_costs(routes, exits)[None, :]

    # ---- fitting ----------------------------------------------------------------------------------
    @classmethod
    def _fit_copies(
        cls,
        policies: list["ExitPolicy"],
        logits: np.ndarray,
        labels: np.ndarray | None,
        features: np.ndarray | None,
        changed: set[str],
    ) -> None:
        """``fit_many``: copies of the per-tier cluster policy (no cascade, no edge stage, clusters) that differ
        in cost model and mu only share their features, candidates and clusterings, and every copy's choices
        are made at once, which is what makes a cost sweep fast; any other configuration is fitted copy by
        copy. ``fit`` runs this same code for one copy."""
        first = policies[0]
        if not (first._per_tier_clusters() and changed <= {"cost_model", "mu"}):
            super()._fit_copies(policies, logits, labels, features, changed)
            return
        for policy in policies:
            policy._validate_params()
            policy._reset_fitted_state()
        correct = per_exit_correct(logits, labels, first.regression_tolerance)
        _fit_per_tier_clusters(policies, logits, features, correct)

    def _per_tier_clusters(self) -> bool:
        return self.decision_exits is None and self.assignment == "clusters" and not self.edge_stage

    def _digest_basis(self) -> tuple:
        """What a kept routing digest was computed from: the stage objects and the feature parameters."""
        stages = (self.stage1_, self.stage2_, *getattr(self, "cascade_stages_", []), getattr(self, "entry_stage_", None))
        return (tuple(id(stage) for stage in stages), self.feature, tuple(self.profile_features), self.exit_threshold)

    def _reset_fitted_state(self) -> None:
        self.__dict__.pop("_routing_digest", None)
        self.decision_exits_ = self._resolve_decision_exits()
        self.cascade_stages_, self.cascade_n_clusters_, self.cascade_cv_rewards_ = [], [], []
        self.__dict__.pop("pool_threshold_", None)
        self.entry_stage_, self.entry_n_clusters_, self.entry_cv_rewards_ = None, 0, {}

    def routing_digest(self) -> str:
        """Digest of everything that decides a sample's route and exit: the fitted stages, plan, features
        and temperatures (not the fit summaries). Two fitted copies of one policy that differ in cost model
        or mu only, with equal digests, answer every input alike."""
        self._check_fitted()
        known = self.__dict__.get("_routing_digest")
        if known is not None and known[0] == self._digest_basis():
            return known[1]
        h = hashlib.blake2b(digest_size=16)
        stages = [self.stage1_, self.stage2_, *self.cascade_stages_, getattr(self, "entry_stage_", None)]
        for stage in stages:
            arrays = [] if stage is None else [stage.mean, stage.scale, stage.centers, stage.exits, stage.routes]
            for arr in arrays:
                h.update(b"-" if arr is None else np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode())
            h.update(b"|")
        temps = None if self.temperatures_ is None else np.asarray(self.temperatures_, dtype=np.float64).tobytes()
        exits = None if self.decision_exits_ is None else self.decision_exits_.tolist()
        threshold = None if self.exit_threshold is None else float(self.exit_threshold)
        extra = (self.plan_, exits, self.feature, tuple(self.profile_features), self.n_features_, temps, threshold)
        h.update(repr(extra).encode())
        return h.hexdigest()

    def _fit(self, logits: np.ndarray, labels: np.ndarray | None, features: np.ndarray | None) -> None:
        self._validate_params()
        correct = per_exit_correct(logits, labels, self.regression_tolerance)
        self._reset_fitted_state()
        if self._per_tier_clusters():
            _fit_per_tier_clusters([self], logits, features, correct)
            return
        if self.decision_exits_ is not None:
            fit_cascade(self, logits, correct)
            if self.entry is not None:
                fit_entry(self, logits, correct, features)
            self._set_fit_summary(logits, features, correct)
            return
        threshold_exits = None
        if self.assignment == "pools" and self.pool_rule == "threshold":
            rule = ThresholdPolicy(
                plan=self.plan_,
                cost_model=self.cost_model_,
                temperatures=None if self.temperatures_ is None else self.temperatures_.tolist(),
                criterion="confidence",
                max_drop=self.max_drop,
                regression_tolerance=self.regression_tolerance,
            ).fit(logits, labels)
            threshold_exits = rule.predict(logits)
            self.pool_threshold_ = rule.threshold_

        x1 = self._stage1_features(logits, features)
        self.stage1_, self.n_clusters_, self.cv_rewards_ = self._fit_stage(
            x1, correct, self._candidates(1), threshold_exits
        )
        self.stage2_, self.edge_n_clusters_, self.edge_cv_rewards_ = None, 0, {}
        if self.edge_stage:
            onward = self.stage1_.target_routes(x1)[1] > self.plan_.mobile_end
            if not onward.any():
                onward = np.ones(logits.shape[0], dtype=bool)  # nothing sent on in fit: fit on all samples
            x2 = self._stage2_features(logits)[onward]
            sub_thr = None if threshold_exits is None else threshold_exits[onward]
            self.stage2_, self.edge_n_clusters_, self.edge_cv_rewards_ = self._fit_stage(
                x2, correct[onward], self._candidates(2), sub_thr, strict=False  # its size depends on mu
            )
        self._set_fit_summary(logits, features, correct)

    def _set_fit_summary(self, logits: np.ndarray, features: np.ndarray | None, correct: np.ndarray) -> None:
        self._set_fit_summary_from(self.predict_outcome(logits, features), correct, self.normalised_path_costs())

    def _set_fit_summary_from(self, outcome: Outcome, correct: np.ndarray, path_costs: np.ndarray) -> None:
        """Tier shares and mean reward on the fit data, from the policy's outcome there and its [P, L] costs."""
        shares = np.bincount(outcome.table.final[outcome.routes], minlength=len(TIERS)) / outcome.routes.size
        self.tier_shares_ = {tier: float(shares[i]) for i, tier in enumerate(TIERS)}
        cost = path_costs[outcome.routes, outcome.depths - 1]
        rows = np.arange(outcome.exits.size)
        self.fit_reward_ = float((correct[rows, outcome.exits - 1] - self.mu * cost).mean())

    def _set_cascade(self, stages: list[RoutingStage], n_clusters: list[int], cv_rewards: list[dict[int, float]]) -> None:
        self.cascade_stages_, self.cascade_n_clusters_, self.cascade_cv_rewards_ = stages, n_clusters, cv_rewards
        self.stage1_, self.stage2_ = None, None
        self.n_clusters_ = int(sum(self.cascade_n_clusters_))
        self.cv_rewards_, self.edge_n_clusters_, self.edge_cv_rewards_ = {}, 0, {}

    def _fit_stage(
        self,
        x: np.ndarray,
        correct: np.ndarray,
        candidates: tuple[np.ndarray, np.ndarray],
        threshold_exits: np.ndarray | None,
        strict: bool = True,
    ) -> tuple[RoutingStage, int, dict[int, float]]:
        routes, exits = candidates
        if self.assignment == "clusters":
            penalty = self.mu * self._candidate_costs(routes, exits)[None, :]
            return _fit_candidate_clusters(x, correct, candidates, penalty, self._cluster_settings(), strict)[0]
        candidate_tiers = path_table(self.plan_).final[routes]  # pools: the paper's nearest tier centroid
        if self.pool_rule == "oracle":
            picked = cheapest_correct_candidates(correct[:, exits - 1], self._candidate_costs(routes, exits))
            pools = candidate_tiers[picked]
        else:
            pools = self.plan_.exit_tiers()[threshold_exits - 1]
        index = np.arange(routes.size, dtype=np.int64)
        stage = fit_pool_stage(x, pools, self._rewards(correct, routes, exits), index, candidate_tiers)
        chosen = stage.exits
        stage.routes, stage.exits = routes[chosen], exits[chosen]
        return stage, int(chosen.size), {}

    # ---- deciding ---------------------------------------------------------------------------------
    def _step(self, logits_seen: np.ndarray, tier: int, depth: int, features: np.ndarray | None) -> np.ndarray:
        n = logits_seen.shape[0]
        if getattr(self, "decision_exits_", None) is not None:
            if getattr(self, "entry_stage_", None) is not None and tier == 0 and depth == 0:
                entry = self.entry_stage_.targets(self._entry_features(features))
                return np.select([entry == 1, entry == 2], [HANDOFF_EDGE, HANDOFF_CLOUD], CONTINUE).astype(np.int64)
            return chain_actions(self._cascade_answers(logits_seen, depth), self.plan_, tier, depth)
        m = self.plan_.mobile_end
        table = path_table(self.plan_)
        if self.stage2_ is not None and tier >= 1:
            targets = self.stage2_.target_routes(self._stage2_features(logits_seen))[1] if depth >= self.plan_.edge_end else None
            if targets is None:
                return np.full(n, CONTINUE, dtype=np.int64)
            return chain_actions(targets <= depth, self.plan_, tier, depth)
        if self.feature == "profile" and depth < m:
            return np.full(n, CONTINUE, dtype=np.int64)
        routes, exits = self.stage1_.target_routes(self._stage1_features(logits_seen, features))
        return follow_targets(table, routes, exits, tier, depth)

    def _entry_features(self, features: np.ndarray | None) -> np.ndarray:
        if features is None:
            raise PolicyError("this DIMEE policy chooses the entry tier on embedding features: pass them to step")
        return features

    def _cascade_answers(self, logits_seen: np.ndarray, depth: int) -> np.ndarray:
        """Whether the cascade stage at exit `depth` answers each sample (False where no stage sits there)."""
        where = np.flatnonzero(self.decision_exits_ == depth)
        if depth == 0 or where.size == 0:
            return np.zeros(logits_seen.shape[0], dtype=bool)
        stage = self.cascade_stages_[int(where[0])]
        return self._stage_answers(stage, self._cascade_features(logits_seen, depth), depth)

    def _stage_answers(self, stage: RoutingStage, x: np.ndarray, exit_: int) -> np.ndarray:
        """Whether the cascade stage at `exit_` answers each row of its features `x`. Threshold stages compare the
        score itself (``>=``, as ThresholdPolicy), not the distances to their two centres, whose float rounding
        could send on a score at the threshold; their centres record the rule for ``cluster_table`` and JSON."""
        if self.exit_threshold is not None:
            return x[:, 0] >= float(self.exit_threshold)
        return stage.targets(x) == exit_

    def cluster_table(self) -> list[dict[str, Any]]:
        """One row per centre: stage (1 mobile decision, 2 edge decision), centre index, fit samples, exit, tier.

        Cascade mode: stage is the stage's position (1 = first decision exit), plus ``decision_exit``; a
        centre that answers has that exit and its tier, one that continues has exit 0 and tier "continue"."""
        self._check_fitted()
        rows = []
        if getattr(self, "decision_exits_", None) is not None:
            tiers_of_exit = self.plan_.exit_tiers()
            for stage_no, (j, stage) in enumerate(zip(self.decision_exits_, self.cascade_stages_), start=1):
                for index, (size, exit_) in enumerate(zip(stage.sizes, stage.exits)):
                    rows.append(
                        {
                            "stage": stage_no,
                            "decision_exit": int(j),
                            "cluster": index,
                            "size": int(size),
                            "exit": int(exit_),
                            "tier": "continue" if exit_ == CONTINUE else TIERS[int(tiers_of_exit[exit_ - 1])],
                        }
                    )
            entry = getattr(self, "entry_stage_", None)
            if entry is not None:
                for index, (size, tier) in enumerate(zip(entry.sizes, entry.exits)):
                    rows.append({"stage": 0, "cluster": index, "size": int(size), "exit": 0, "tier": f"enter {TIERS[int(tier)]}"})
            return rows
        for stage_no, stage in ((1, self.stage1_), (2, self.stage2_)):
            if stage is None:
                continue
            table = path_table(self.plan_)
            for index, (size, exit_, route) in enumerate(zip(stage.sizes, stage.exits, stage.routes)):
                rows.append(
                    {
                        "stage": stage_no,
                        "cluster": index,
                        "size": int(size),
                        "exit": int(exit_),
                        "tier": TIERS[int(table.final[route])],
                        "route": table.labels()[int(route)],
                    }
                )
        return rows

    # ---- serialisation ----------------------------------------------------------------------------
    def _state_to_dict(self) -> dict[str, Any]:
        state = {
            "stage1": None if self.stage1_ is None else self.stage1_.to_dict(),
            "stage2": None if self.stage2_ is None else self.stage2_.to_dict(),
            "n_clusters": int(self.n_clusters_),
            "edge_n_clusters": int(self.edge_n_clusters_),
            "cv_rewards": {str(k): v for k, v in self.cv_rewards_.items()},
            "edge_cv_rewards": {str(k): v for k, v in self.edge_cv_rewards_.items()},
            "tier_shares": dict(self.tier_shares_),
            "fit_reward": self.fit_reward_,
            "pool_threshold": getattr(self, "pool_threshold_", None),
        }
        if getattr(self, "decision_exits_", None) is not None:  # absent outside cascade mode: format unchanged
            state["cascade"] = {
                "exits": self.decision_exits_.tolist(),
                "stages": [stage.to_dict() for stage in self.cascade_stages_],
                "n_clusters": [int(k) for k in self.cascade_n_clusters_],
                "cv_rewards": [{str(k): v for k, v in cv.items()} for cv in self.cascade_cv_rewards_],
            }
            if getattr(self, "entry_stage_", None) is not None:
                state["cascade"]["entry"] = {
                    "stage": self.entry_stage_.to_dict(),
                    "n_clusters": int(self.entry_n_clusters_),
                    "cv_rewards": {str(k): v for k, v in self.entry_cv_rewards_.items()},
                }
        return state

    def _state_from_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.pop("_routing_digest", None)
        self.stage1_ = None if state.get("stage1") is None else RoutingStage.from_dict(state["stage1"])
        self.stage2_ = None if state.get("stage2") is None else RoutingStage.from_dict(state["stage2"])
        self.n_clusters_ = int(state["n_clusters"])
        self.edge_n_clusters_ = int(state["edge_n_clusters"])
        self.cv_rewards_ = {int(k): float(v) for k, v in state.get("cv_rewards", {}).items()}
        self.edge_cv_rewards_ = {int(k): float(v) for k, v in state.get("edge_cv_rewards", {}).items()}
        self.tier_shares_ = {k: float(v) for k, v in state["tier_shares"].items()}
        self.fit_reward_ = float(state["fit_reward"])
        if state.get("pool_threshold") is not None:
            self.pool_threshold_ = float(state["pool_threshold"])
        cascade = state.get("cascade")
        if cascade is None:
            self.decision_exits_ = None
            self.cascade_stages_, self.cascade_n_clusters_, self.cascade_cv_rewards_ = [], [], []
        else:
            self.decision_exits_ = np.asarray(cascade["exits"], dtype=np.int64)
            self.cascade_stages_ = [RoutingStage.from_dict(stage) for stage in cascade["stages"]]
            self.cascade_n_clusters_ = [int(k) for k in cascade["n_clusters"]]
            self.cascade_cv_rewards_ = [
                {int(k): float(v) for k, v in cv.items()} for cv in cascade.get("cv_rewards", [])
            ]
            if len(self.cascade_stages_) != self.decision_exits_.size:
                raise PolicyError("corrupt DIMEE state: one cascade stage per decision exit expected")
        entry = None if cascade is None else cascade.get("entry")
        self.entry_stage_ = None if entry is None else RoutingStage.from_dict(entry["stage"])
        self.entry_n_clusters_ = 0 if entry is None else int(entry["n_clusters"])
        self.entry_cv_rewards_ = {} if entry is None else {int(k): float(v) for k, v in entry["cv_rewards"].items()}
        if self.stage1_ is not None and self.stage1_.routes is None:
            raise PolicyError("this policy.json was written before routes existed (no route per cluster): refit it")
        self._check_stage_routes()

    def _check_stage_routes(self) -> None:
        """Every route a fitted stage may choose exists in the fitted plan (refused at load, not per request)."""
        table = path_table(self.plan_)
        for stage in (self.stage1_, self.stage2_):
            if stage is not None and stage.routes is not None:
                if stage.routes.min() < 0 or stage.routes.max() >= len(table.paths):
                    raise PolicyError(f"the policy names route {int(stage.routes.max())}; plan {self.plan_.spec} has {len(table.paths)}")
