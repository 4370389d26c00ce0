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

from tiers import CostModel, TierPlan

from .base import ExitPolicy, final_tier, register_policy, route_to_exits, tier_exit_range
from .errors import PolicyError
from .evaluation import check_exits, tier_shares
from .profiles import REGRESSION_TOLERANCE, check_labels, exit_scores, is_regression, per_exit_correct, predictions

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


def _tier_block_decision(passes: np.ndarray, plan: TierPlan, tier: int) -> np.ndarray:
    """Decision at `tier` from per-exit pass flags over exits 1..k: the first passing exit the tier holds;
    otherwise hand off, or the tier's last exit at the final tier."""
    first, last = tier_exit_range(plan, tier)
    local = first_passing_exit(passes[:, first - 1 : last])
    decision = np.where(local > 0, local + first - 1, 0)
    if tier == final_tier(plan):
        decision = np.where(decision == 0, last, decision)
    return decision


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise PolicyError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _check_nonneg(name: str, value: float) -> None:
    if not np.isfinite(value) or value < 0:
        raise PolicyError(f"{name} must be finite and >= 0, got {value!r}")


# ---- fixed tier / exit --------------------------------------------------------------------------------------
class _FixedTargetPolicy(ExitPolicy):
    """Answers every sample at one exit; subclasses say which."""

    fit_requires_labels: ClassVar[bool] = False

    def _target(self) -> int:
        raise NotImplementedError

    def _decide(self, logits_seen: np.ndarray, tier: int, features: np.ndarray | None) -> np.ndarray:
        targets = np.full(logits_seen.shape[0], self._target(), dtype=np.int64)
        return route_to_exits(targets, self.plan_, tier)


class _AllTierPolicy(_FixedTargetPolicy):
    TIER: ClassVar[str] = "cloud"

    def __init__(self, plan: TierPlan | None = None, cost_model: CostModel | None = None):
        self.plan = plan
        self.cost_model = cost_model

    def _target(self) -> int:
        return {"mobile": self.plan_.mobile_end, "edge": self.plan_.edge_end, "cloud": self.plan_.num_layers}[self.TIER]


@register_policy
class AllMobilePolicy(_AllTierPolicy):
    """Every sample answered on mobile at exit m."""

    TIER = "mobile"


@register_policy
class AllEdgePolicy(_AllTierPolicy):
    """Every sample answered on edge at exit e."""

    TIER = "edge"


@register_policy
class AllCloudPolicy(_AllTierPolicy):
    """Every sample answered at the final exit L (the reference accuracy)."""

    TIER = "cloud"


@register_policy
class FixedExitPolicy(_FixedTargetPolicy):
    """Every sample answered at `exit_index` (1-based; None = L)."""

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

    def _target(self) -> int:
        return self.exit_

    def _state_to_dict(self) -> dict[str, Any]:
        return {"exit": int(self.exit_)}

    def _state_from_dict(self, state: dict[str, Any]) -> None:
        self.exit_ = int(state["exit"])


# ---- threshold (DeeBERT) ----------------------------------------------------------------------------------
@register_policy
class ThresholdPolicy(ExitPolicy):
    """Answer at the first exit whose score passes a threshold (DeeBERT style), else at L.

    `score`: 'confidence' (max prob >= t), 'margin' (top1 - top2 >= t) or 'entropy' (normalised entropy
    <= t). `threshold=None` chooses it in fit among the observed score values at exits 1..L-1 (at most
    `n_candidates`, by quantile) plus "never exit early", using `selection` (module doc). Scores use
    `temperatures` when given.
    """

    def __init__(
        self,
        plan: TierPlan | None = None,
        cost_model: CostModel | None = None,
        temperatures: Sequence[float] | None = None,
        score: str = "confidence",
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
        self.score = score
        self.threshold = threshold
        self.selection = selection
        self.max_drop = max_drop
        self.mu = mu
        self.n_candidates = n_candidates
        self.regression_tolerance = regression_tolerance

    def _passes(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        return scores >= threshold if _HIGHER_IS_CONFIDENT[self.score] else scores <= threshold

    def _never(self) -> float:
        """A threshold no score passes (scores lie in [0, 1])."""
        return 1.0 + 1e-6 if _HIGHER_IS_CONFIDENT[self.score] else -1e-6

    def candidate_thresholds(self, scores: np.ndarray) -> np.ndarray:
        """Observed scores at exits 1..L-1 (thinned to `n_candidates` quantiles), then 'never exit early'."""
        values = scores[:, :-1].ravel()
        if values.size == 0:
            return np.array([self._never()])
        unique = np.unique(values)
        if unique.size > self.n_candidates:
            unique = np.unique(np.quantile(values, np.linspace(0.0, 1.0, self.n_candidates), method="nearest"))
        if not _HIGHER_IS_CONFIDENT[self.score]:
            unique = unique[::-1]  # most permissive first, like the confidence order
        return np.append(unique, self._never())

    def exits_for_threshold(self, logits: np.ndarray, threshold: float) -> np.ndarray:
        """Exit per sample over all L exits (what predict gives), for a given threshold."""
        scores = exit_scores(logits, self.score, self.temperatures_)
        return self._exits_from_scores(scores, threshold)

    def _exits_from_scores(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        passes = self._passes(scores, threshold)
        passes[:, -1] = True
        return first_passing_exit(passes)

    def _fit(self, logits: np.ndarray, labels: np.ndarray | None, features: np.ndarray | None) -> None:
        _check_choice("score", self.score, tuple(_HIGHER_IS_CONFIDENT))
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
        scores = exit_scores(logits, self.score, self.temperatures_)
        candidates = self.candidate_thresholds(scores)
        exits = np.stack([self._exits_from_scores(scores, t) for t in candidates])
        correct = per_exit_correct(logits, labels, self.regression_tolerance)
        chosen = select_setting(exits, correct, self.normalised_exit_costs(), self.selection, self.max_drop, self.mu)
        self.threshold_ = float(candidates[chosen])

    def _decide(self, logits_seen: np.ndarray, tier: int, features: np.ndarray | None) -> np.ndarray:
        scores = exit_scores(logits_seen, self.score, self._temps(logits_seen.shape[1]))
        return _tier_block_decision(self._passes(scores, self.threshold_), self.plan_, tier)

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

    def _decide(self, logits_seen: np.ndarray, tier: int, features: np.ndarray | None) -> np.ndarray:
        counters = patience_counters(logits_seen, self.tolerance)
        return _tier_block_decision(counters >= self.patience_, self.plan_, tier)

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
    ) -> "RandomTierPolicy":
        super().fit(logits, labels, features)
        if reference_exits is not None:
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
        exits = policy.predict(logits, features, labels=labels)
        return cls(plan=policy.plan_, cost_model=policy.cost_model_, seed=seed).fit(logits, reference_exits=exits)

    def _fit(self, logits: np.ndarray, labels: np.ndarray | None, features: np.ndarray | None) -> None:
        self.proportions_ = _check_proportions(self.proportions)

    def _decide(self, logits_seen: np.ndarray, tier: int, features: np.ndarray | None) -> np.ndarray:
        u = sample_uniforms(logits_seen[:, 0, :], self.seed)
        tiers = np.minimum(np.searchsorted(np.cumsum(self.proportions_), u, side="right"), 2)
        targets = np.array([self.plan_.mobile_end, self.plan_.edge_end, self.plan_.num_layers])[tiers]
        return route_to_exits(targets, self.plan_, tier)

    def _state_to_dict(self) -> dict[str, Any]:
        return {"proportions": self.proportions_.tolist()}

    def _state_from_dict(self, state: dict[str, Any]) -> None:
        self.proportions_ = np.asarray(state["proportions"], dtype=np.float64)


# ---- oracle -----------------------------------------------------------------------------------------------
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

    def decide(
        self,
        logits_seen: np.ndarray,
        tier: str | int,
        features: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        if labels is None:
            raise PolicyError("OraclePolicy.decide needs the true labels")
        return self._decide_checked(logits_seen, tier, features, labels=labels)

    def _decide(
        self, logits_seen: np.ndarray, tier: int, features: np.ndarray | None, labels: np.ndarray | None = None
    ) -> np.ndarray:
        y = check_labels(labels, logits_seen.shape[0], logits_seen.shape[2])
        correct = per_exit_correct(logits_seen, y, self.regression_tolerance)
        return _tier_block_decision(correct, self.plan_, tier)
