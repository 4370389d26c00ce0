"""Baseline exit policies: fixed tier, confidence/entropy threshold (DeeBERT), patience (PABEE), random tier
assignment and the oracle bound.

Choosing a setting in fit (threshold, patience) on the held-out split, by the ``selection`` param:

* ``"max_drop"`` (default): the cheapest setting (lowest mean normalised cost) whose accuracy drop vs the
  final exit is <= ``max_drop``; ties go to the higher accuracy. Never empty: the setting that never exits
  early has drop 0.
* ``"reward"``: the setting maximising accuracy - ``mu`` * mean normalised cost (DIMEE's reward).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np

from tiers import CONTINUE, CostModel, TierPlan, chain_path, reference_path

from .base import ExitPolicy, register_policy
from .errors import PolicyError
from .evaluation import check_exits, tier_shares
from .exit_data import unpack_exit_data
from .routing import Outcome, chain_actions, follow_targets, path_table
from .profiles import REGRESSION_TOLERANCE, check_labels, exit_profile, exit_scores, is_regression, per_exit_correct, predictions

SELECTIONS: tuple[str, ...] = ("max_drop", "reward")
_HIGHER_IS_CONFIDENT = {"confidence": True, "margin": True, "entropy": False}


# ---- shared helpers ---------------------------------------------------------------------------------------
def select_setting(
    exits_per_setting: np.ndarray,
    correct: np.ndarray,
    cost_norm: np.ndarray,
    selection: str = "max_drop",
    max_drop: float = 0.01,
    mu: float = 0.1,
) -> int:
    """Index of the chosen setting. `exits_per_setting` [G, n] (1-based exits each setting gives), `correct`
    [n, L], `cost_norm` [L] (normalised exit costs). See the module doc for the two rules."""
    if selection not in SELECTIONS:
        raise PolicyError(f"unknown selection {selection!r}; expected one of {', '.join(SELECTIONS)}")
    rows = np.arange(correct.shape[0])[None, :]
    acc = correct[rows, exits_per_setting - 1].mean(axis=1)
    cost = cost_norm[exits_per_setting - 1].mean(axis=1)
    order_index = np.arange(acc.shape[0])
    if selection == "max_drop":
        final_acc = correct[:, -1].mean()
        feasible = final_acc - acc <= max_drop + 1e-12
        if not feasible.any():
            raise PolicyError("no setting keeps the accuracy drop within max_drop (a bug: 'never exit early' should)")
        # lexsort: last key is primary -> infeasible last, then cheapest, then most accurate, then first listed
        order = np.lexsort((order_index, -acc, cost, ~feasible))
    else:
        reward = acc - mu * cost
        order = np.lexsort((order_index, cost, -np.round(reward, 12)))
    return int(order[0])


def first_passing_exit(passes: np.ndarray) -> np.ndarray:
    """1-based index of the first True per row of [n, k]; 0 where none."""
    hit = passes.any(axis=1)
    return np.where(hit, passes.argmax(axis=1) + 1, 0)


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise PolicyError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _check_nonneg(name: str, value: float) -> None:
    if not np.isfinite(value) or value < 0:
        raise PolicyError(f"{name} must be finite and >= 0, got {value!r}")


# ---- fixed tier / exit --------------------------------------------------------------------------------------
class _FixedTargetPolicy(ExitPolicy):
    """Answers every sample by one route at one exit; subclasses say which."""

    fit_requires_labels: ClassVar[bool] = False

    def _target(self) -> tuple[tuple, int]:
        """(route, exit) every sample takes."""
        raise NotImplementedError

    def _step(self, logits_seen: np.ndarray, tier: int, depth: int, features: np.ndarray | None) -> np.ndarray:
        path, exit_index = self._target()
        table = path_table(self.plan_)
        n = logits_seen.shape[0]
        routes = np.full(n, table.index(path), dtype=np.int64)
        return follow_targets(table, routes, np.full(n, exit_index, dtype=np.int64), tier, depth)


class _AllTierPolicy(_FixedTargetPolicy):
    TIER: ClassVar[str] = "cloud"

    def __init__(self, plan: TierPlan | None = None, cost_model: CostModel | None = None):
        self.plan = plan
        self.cost_model = cost_model

    def _target(self) -> tuple[tuple, int]:
        plan = self.plan_
        if self.TIER == "mobile":
            return chain_path(plan, plan.mobile_end), plan.mobile_end
        if self.TIER == "edge":
            if 0 in plan.accepts("edge"):
                return (("mobile", 0), ("edge", 0)), plan.edge_end
            return chain_path(plan, plan.edge_end), plan.edge_end
        return reference_path(plan), plan.num_layers


@register_policy
class AllMobilePolicy(_AllTierPolicy):
    """Every sample answered on mobile at exit m."""

    TIER = "mobile"


@register_policy
class AllEdgePolicy(_AllTierPolicy):
    """Every sample sent as token ids straight to edge and answered there at exit e (through mobile's
    layers when edge does not accept token ids)."""

    TIER = "edge"


@register_policy
class AllCloudPolicy(_AllTierPolicy):
    """The all-cloud reference route: token ids straight to the cloud, answered at the final exit L."""

    TIER = "cloud"


@register_policy
class FixedExitPolicy(_FixedTargetPolicy):
    """Every sample answered at `exit_index` (1-based; None = L) on the linear route."""

    def __init__(
        self, plan: TierPlan | None = None, cost_model: CostModel | None = None, exit_index: int | None = None
    ):
        self.plan = plan
        self.cost_model = cost_model
        self.exit_index = exit_index

    def _fit(self, logits: np.ndarray, labels: np.ndarray | None, features: np.ndarray | None) -> None:
        target = self.num_layers_ if self.exit_index is None else int(self.exit_index)
        if not 1 <= target <= self.num_layers_:
            raise PolicyError(f"exit_index={self.exit_index} is outside 1..{self.num_layers_}")
        self.exit_ = target

    def _target(self) -> tuple[tuple, int]:
        return chain_path(self.plan_, int(self.exit_)), int(self.exit_)

    def _state_to_dict(self) -> dict[str, Any]:
        return {"exit": int(self.exit_)}

    def _state_from_dict(self, state: dict[str, Any]) -> None:
        self.exit_ = int(state["exit"])


# ---- threshold (DeeBERT) ----------------------------------------------------------------------------------
@register_policy
class ThresholdPolicy(ExitPolicy):
    """Answer at the first exit whose score passes a threshold (DeeBERT style), else at L.

    `criterion`: 'confidence' (max prob >= t), 'margin' (top1 - top2 >= t) or 'entropy' (normalised entropy
    <= t); it was called ``score`` before that name was freed for the estimator method
    :meth:`ExitPolicy.score` (saved policies with ``"score"`` in their params still load). `threshold=None`
    chooses it in fit among the observed score values at exits 1..L-1 (at most `n_candidates`, by quantile)
    plus "never exit early", using `selection` (module doc); a given `threshold` is used as is. Scores use
    `temperatures` when given.
    """

    _renamed_params: ClassVar[dict[str, str]] = {"score": "criterion"}

    def __init__(
        self,
        plan: TierPlan | None = None,
        cost_model: CostModel | None = None,
        temperatures: Sequence[float] | None = None,
        criterion: str = "confidence",
        threshold: float | None = None,
        selection: str = "max_drop",
        max_drop: float = 0.01,
        mu: float = 0.1,
        n_candidates: int = 200,
        regression_tolerance: float = REGRESSION_TOLERANCE,
    ):
        self.plan = plan
        self.cost_model = cost_model
        self.temperatures = temperatures
        self.criterion = criterion
        self.threshold = threshold
        self.selection = selection
        self.max_drop = max_drop
        self.mu = mu
        self.n_candidates = n_candidates
        self.regression_tolerance = regression_tolerance

    def _passes(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        return scores >= threshold if _HIGHER_IS_CONFIDENT[self.criterion] else scores <= threshold

    def _never(self) -> float:
        """A threshold no score passes (scores lie in [0, 1])."""
        return 1.0 + 1e-6 if _HIGHER_IS_CONFIDENT[self.criterion] else -1e-6

    def candidate_thresholds(self, scores: np.ndarray) -> np.ndarray:
        """Observed scores at exits 1..L-1 (thinned to `n_candidates` quantiles), then 'never exit early'."""
        values = scores[:, :-1].ravel()
        if values.size == 0:
            return np.array([self._never()])
        unique = np.unique(values)
        if unique.size > self.n_candidates:
            unique = np.unique(np.quantile(values, np.linspace(0.0, 1.0, self.n_candidates), method="nearest"))
        if not _HIGHER_IS_CONFIDENT[self.criterion]:
            unique = unique[::-1]  # most permissive first, like the confidence order
        return np.append(unique, self._never())

    def exits_for_threshold(self, logits: np.ndarray, threshold: float) -> np.ndarray:
        """Exit per sample over all L exits (what predict gives), for a given threshold."""
        scores = exit_scores(logits, self.criterion, self.temperatures_)
        return self._exits_from_scores(scores, threshold)

    def _exits_from_scores(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        passes = self._passes(scores, threshold)
        passes[:, -1] = True
        return first_passing_exit(passes)

    def _fit(self, logits: np.ndarray, labels: np.ndarray | None, features: np.ndarray | None) -> None:
        _check_choice("criterion", self.criterion, tuple(_HIGHER_IS_CONFIDENT))
        _check_choice("selection", self.selection, SELECTIONS)
        _check_nonneg("max_drop", self.max_drop)
        _check_nonneg("mu", self.mu)
        if self.threshold is not None:
            if not np.isfinite(self.threshold):
                raise PolicyError(f"threshold must be finite, got {self.threshold}")
            self.threshold_ = float(self.threshold)
            return
        if int(self.n_candidates) < 2:
            raise PolicyError(f"n_candidates must be >= 2, got {self.n_candidates}")
        scores = exit_scores(logits, self.criterion, self.temperatures_)
        candidates = self.candidate_thresholds(scores)
        exits = np.stack([self._exits_from_scores(scores, t) for t in candidates])
        correct = per_exit_correct(logits, labels, self.regression_tolerance)
        chosen = select_setting(exits, correct, self.normalised_exit_costs(), self.selection, self.max_drop, self.mu)
        self.threshold_ = float(candidates[chosen])

    def _step(self, logits_seen: np.ndarray, tier: int, depth: int, features: np.ndarray | None) -> np.ndarray:
        if depth == 0:
            return np.full(logits_seen.shape[0], CONTINUE, dtype=np.int64)
        # exit `depth`'s score read from the exits seen so far: a regression exit's confidence is its agreement
        # with the exit before it, so scoring exit `depth` alone would give it none
        temps = None if self.temperatures_ is None else self.temperatures_[:depth]
        scores = exit_profile(logits_seen[:, :depth], slice(depth - 1, depth), (self.criterion,), temps)[:, 0]
        return chain_actions(self._passes(scores, self.threshold_), self.plan_, tier, depth)

    def _state_to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold_}

    def _state_from_dict(self, state: dict[str, Any]) -> None:
        self.threshold_ = float(state["threshold"])


# ---- patience (PABEE) -------------------------------------------------------------------------------------
def patience_counters(logits: np.ndarray, tolerance: float = 0.1) -> np.ndarray:
    """PABEE's counter per exit [n, k]: 0 at exit 1; +1 when exit i agrees with exit i-1, else reset to 0.
    Agreement: same class; regression: |v_i - v_{i-1}| < tolerance."""
    preds = predictions(logits)
    if is_regression(logits):
        agree = np.abs(np.diff(preds, axis=1)) < tolerance
    else:
        agree = preds[:, 1:] == preds[:, :-1]
    counters = np.zeros(preds.shape, dtype=np.int64)
    for i in range(1, preds.shape[1]):
        counters[:, i] = np.where(agree[:, i - 1], counters[:, i - 1] + 1, 0)
    return counters


@register_policy
class PatiencePolicy(ExitPolicy):
    """PABEE: answer at the first exit where the prediction has stayed unchanged for `patience` consecutive
    exits (so patience + 1 exits agree), else at L. Regression: consecutive values within `tolerance`
    (default 0.1 on the 0-5 STS-B scale). `patience=None` chooses it in fit from 1..L-1 by `selection`."""

    def __init__(
        self,
        plan: TierPlan | None = None,
        cost_model: CostModel | None = None,
        patience: int | None = None,
        selection: str = "max_drop",
        max_drop: float = 0.01,
        mu: float = 0.1,
        tolerance: float = 0.1,
        regression_tolerance: float = REGRESSION_TOLERANCE,
    ):
        self.plan = plan
        self.cost_model = cost_model
        self.patience = patience
        self.selection = selection
        self.max_drop = max_drop
        self.mu = mu
        self.tolerance = tolerance
        self.regression_tolerance = regression_tolerance

    @staticmethod
    def _exits_from_counters(counters: np.ndarray, patience: int) -> np.ndarray:
        passes = counters >= patience
        passes[:, -1] = True
        return first_passing_exit(passes)

    def _fit(self, logits: np.ndarray, labels: np.ndarray | None, features: np.ndarray | None) -> None:
        _check_choice("selection", self.selection, SELECTIONS)
        _check_nonneg("tolerance", self.tolerance)
        _check_nonneg("max_drop", self.max_drop)
        _check_nonneg("mu", self.mu)
        if self.patience is not None:
            if int(self.patience) < 1 or int(self.patience) != self.patience:
                raise PolicyError(f"patience must be an integer >= 1, got {self.patience}")
            self.patience_ = int(self.patience)
            return
        counters = patience_counters(logits, self.tolerance)
        candidates = np.arange(1, max(2, self.num_layers_))
        exits = np.stack([self._exits_from_counters(counters, int(p)) for p in candidates])
        correct = per_exit_correct(logits, labels, self.regression_tolerance)
        chosen = select_setting(exits, correct, self.normalised_exit_costs(), self.selection, self.max_drop, self.mu)
        self.patience_ = int(candidates[chosen])

    def _step(self, logits_seen: np.ndarray, tier: int, depth: int, features: np.ndarray | None) -> np.ndarray:
        if depth == 0:
            return np.full(logits_seen.shape[0], CONTINUE, dtype=np.int64)
        counters = patience_counters(logits_seen, self.tolerance)
        return chain_actions(counters[:, -1] >= self.patience_, self.plan_, tier, depth)

    def _state_to_dict(self) -> dict[str, Any]:
        return {"patience": self.patience_}

    def _state_from_dict(self, state: dict[str, Any]) -> None:
        self.patience_ = int(state["patience"])


# ---- random tier assignment ---------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_uniforms(first_exit_logits: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per sample, a hash of (seed, the sample's exit-1 logits).

    Why a hash and not an RNG stream: each tier sees a different subset of the batch, yet must draw the same
    number for a sample as mobile did, and batch order must not matter. Exit 1 exists on every tier, so the
    draw is causal. Samples with identical exit-1 logits get the same draw.
    """
    bits = np.ascontiguousarray(first_exit_logits, dtype=np.float64).view(np.uint64)
    h = np.full(bits.shape[0], np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    h = _splitmix64(h)
    for column in range(bits.shape[1]):
        h = _splitmix64(h ^ bits[:, column])
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def _check_proportions(proportions: Sequence[float]) -> np.ndarray:
    arr = np.asarray(proportions, dtype=np.float64)
    if arr.shape != (3,) or not np.isfinite(arr).all() or (arr < 0).any() or arr.sum() <= 0:
        raise PolicyError(f"proportions must be 3 non-negative numbers (mobile, edge, cloud); got {proportions!r}")
    return arr / arr.sum()


@register_policy
class RandomTierPolicy(ExitPolicy):
    """Each sample goes to mobile / edge / cloud (answering at m / e / L) with the given proportions,
    drawn reproducibly per sample (see :func:`sample_uniforms`). `fit(..., reference_exits=...)` or
    :meth:`matching` take the proportions from another policy's decisions instead."""

    fit_requires_labels: ClassVar[bool] = False

    def __init__(
        self,
        plan: TierPlan | None = None,
        cost_model: CostModel | None = None,
        proportions: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
        seed: int = 0,
    ):
        self.plan = plan
        self.cost_model = cost_model
        self.proportions = proportions
        self.seed = seed

    def fit(
        self,
        logits: np.ndarray,
        labels: np.ndarray | None = None,
        features: np.ndarray | None = None,
        reference_exits: np.ndarray | None = None,
        reference_tiers: np.ndarray | None = None,
    ) -> "RandomTierPolicy":
        """`reference_tiers` (answering tier index per sample) or `reference_exits` (exits on the linear
        route) set the proportions from another policy's answers."""
        super().fit(logits, labels, features)
        if reference_tiers is not None:
            tiers_ = np.asarray(reference_tiers, dtype=np.int64)
            if tiers_.size == 0 or tiers_.min() < 0 or tiers_.max() > 2:
                raise PolicyError("reference_tiers must be a non-empty array of tier indices 0..2")
            self.proportions_ = np.bincount(tiers_, minlength=3) / tiers_.size
        elif reference_exits is not None:
            exits = check_exits(reference_exits, np.shape(reference_exits)[0], self.num_layers_)
            if exits.size == 0:
                raise PolicyError("reference_exits is empty")
            shares = tier_shares(exits, self.plan_)
            self.proportions_ = np.array([shares["mobile"], shares["edge"], shares["cloud"]])
        return self

    @classmethod
    def matching(
        cls,
        policy: ExitPolicy,
        logits: np.ndarray,
        features: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        seed: int = 0,
    ) -> "RandomTierPolicy":
        """A fitted random policy with the tier proportions `policy` gives on `logits`."""
        outcome = policy.predict_outcome(logits, features, labels=labels)
        answering = outcome.table.final[outcome.routes]
        return cls(plan=policy.plan_, cost_model=policy.cost_model_, seed=seed).fit(logits, reference_tiers=answering)

    def _fit(self, logits: np.ndarray, labels: np.ndarray | None, features: np.ndarray | None) -> None:
        self.proportions_ = _check_proportions(self.proportions)

    def _step(self, logits_seen: np.ndarray, tier: int, depth: int, features: np.ndarray | None) -> np.ndarray:
        """On the linear route: a tier answers at its last exit the samples drawn for it."""
        if depth == 0:
            return np.full(logits_seen.shape[0], CONTINUE, dtype=np.int64)
        u = sample_uniforms(logits_seen[:, 0, :], self.seed)
        tiers = np.minimum(np.searchsorted(np.cumsum(self.proportions_), u, side="right"), 2)
        targets = np.array([self.plan_.mobile_end, self.plan_.edge_end, self.plan_.num_layers])[tiers]
        table = path_table(self.plan_)
        return follow_targets(table, table.chain_indices(targets), targets, tier, depth)

    def _state_to_dict(self) -> dict[str, Any]:
        return {"proportions": self.proportions_.tolist()}

    def _state_from_dict(self, state: dict[str, Any]) -> None:
        self.proportions_ = np.asarray(state["proportions"], dtype=np.float64)


# ---- oracle -----------------------------------------------------------------------------------------------
def cheapest_first(exits: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """The order in which the oracle tries its candidates (exit, cost): cheapest first; ties -> the earlier
    exit. Its answers depend on the cost model through this order only."""
    return np.lexsort((exits, costs))


@register_policy
class OraclePolicy(ExitPolicy):
    """Lower bound on cost: each sample at the cheapest exit that is right (L if none). Needs the true labels
    at decision time, so it is a bound, not a deployable policy. Exit costs never decrease with depth (compute
    accumulates, hops only add), so the cheapest right exit is the first right one."""

    requires_labels: ClassVar[bool] = True
    fit_requires_labels: ClassVar[bool] = False

    def __init__(
        self,
        plan: TierPlan | None = None,
        cost_model: CostModel | None = None,
        regression_tolerance: float = REGRESSION_TOLERANCE,
    ):
        self.plan = plan
        self.cost_model = cost_model
        self.regression_tolerance = regression_tolerance

    def predict_outcome(
        self, logits: np.ndarray, features: np.ndarray | None = None, labels: np.ndarray | None = None
    ) -> Outcome:
        """Per sample the cheapest (route, exit) whose answer is right; the all-cloud reference route if none."""
        self._check_fitted()
        logits, features = unpack_exit_data(logits, features)
        if labels is None:
            raise PolicyError("OraclePolicy needs the true labels to decide (it is a bound, not a policy)")
        arr = self._checked_logits(logits)
        y = check_labels(labels, arr.shape[0], self.n_classes_)
        correct = per_exit_correct(arr, y, self.regression_tolerance)
        table = path_table(self.plan_)
        routes, exits = table.candidates(0)
        order = cheapest_first(exits, self.normalised_path_costs()[routes, exits - 1])
        routes, exits = routes[order], exits[order]
        hits = correct[:, exits - 1]
        fallback_route = table.index(reference_path(self.plan_))
        best = hits.argmax(axis=1)
        any_hit = hits.any(axis=1)
        chosen_routes = np.where(any_hit, routes[best], fallback_route)
        chosen_exits = np.where(any_hit, exits[best], self.num_layers_)
        return Outcome(table, chosen_routes.astype(np.int64), chosen_exits.astype(np.int64), chosen_exits.copy())

    def _step(self, logits_seen: np.ndarray, tier: int, depth: int, features: np.ndarray | None, labels=None):
        raise PolicyError("OraclePolicy is a bound computed offline from all exits; it cannot decide step by step")
