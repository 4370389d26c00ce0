"""The exit-policy interface shared by DIMEE and the baselines.

A policy is a scikit-learn estimator fitted on cached per-exit logits of a held-out split. Online, a tier
holding a sample calls :meth:`ExitPolicy.step` before its first layer (mobile) and after each layer with the
logits of the exits computed so far, and gets per sample an action (answer at an exit, continue, or hand off
to a tier at this boundary; the protocol is in `tiers.routes`). :meth:`ExitPolicy.predict_outcome` drives
the same protocol over cached logits with the same segment driver as the services, so offline evaluation
and the services make the same decisions by construction; every action is validated against the
deployment (a handoff at a boundary the receiver does not accept is an error).

Serialisation: :meth:`to_dict` gives a JSON-compatible dict (params, plan and cost model as dicts, fitted
state as lists), :func:`policy_from_dict` rebuilds any registered policy. No pickle.

scikit-learn: X is the cached logits [n, L, C], or an :class:`ExitData` carrying them with per-sample
features (so that model selection splits the features with the folds); y the labels. :meth:`ExitPolicy.score`
is the mean reward (right answer - ``SCORE_MU`` x normalised cost), the same for every policy and every
parameter setting, so ``GridSearchCV(policy, grid)`` (or ``scoring=reward_scorer(mu)`` for another cost
weight) compares candidates on one scale. Using a policy before fit raises :class:`PolicyNotFittedError`, a
PolicyError and scikit-learn's NotFittedError.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator

from tiers import TIERS, CostModel, RouteError, TierPlan, check_actions, default_plan

from .errors import PolicyError, PolicyNotFittedError
from .evaluation import evaluate_policy
from .exit_data import unpack_exit_data
from .profiles import as_logits, check_labels, check_temperatures
from .routing import Outcome, PathTable, path_table, simulate

FORMAT_VERSION = 1
# The cost weight of ExitPolicy.score's reward (DIMEE's default mu). Fixed, not any policy's own `mu`, so that
# every candidate of a grid search (over mu too) is scored on one scale; reward_scorer(mu) gives another weight.
SCORE_MU = 0.1
_BASE_FITTED = ("plan_", "cost_model_", "num_layers_", "n_classes_", "n_features_", "temperatures_")
_REGISTRY: dict[str, type["ExitPolicy"]] = {}


def register_policy(cls: type["ExitPolicy"]) -> type["ExitPolicy"]:
    """Class decorator: make a policy rebuildable by :func:`policy_from_dict` under its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


def registered_policies() -> dict[str, type["ExitPolicy"]]:
    return dict(_REGISTRY)


def tier_index(tier: str | int) -> int:
    """'mobile'/'edge'/'cloud' (or 0/1/2) -> 0/1/2."""
    if isinstance(tier, (int, np.integer)) and not isinstance(tier, bool) and 0 <= tier <= 2:
        return int(tier)
    if isinstance(tier, str) and tier in TIERS:
        return TIERS.index(tier)
    raise PolicyError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")


def tier_exit_range(plan: TierPlan, tier: int) -> tuple[int, int]:
    """First and last exit (1-based, inclusive) a tier holds; first > last when it holds none."""
    return plan.layer_range(TIERS[tier])


def _check_score_mu(mu: float) -> float:
    value = float(mu)
    if not np.isfinite(value) or value < 0:
        raise PolicyError(f"the score's cost weight mu must be finite and >= 0, got {mu!r}")
    return value


class RewardScorer:
    """A scikit-learn scorer ``(estimator, X, y) -> float``: :meth:`ExitPolicy.score` with cost weight `mu`.
    Build it with :func:`reward_scorer`."""

    def __init__(self, mu: float):
        self.mu = _check_score_mu(mu)

    def __call__(self, estimator: "ExitPolicy", X: Any, y: np.ndarray) -> float:
        if not isinstance(estimator, ExitPolicy):
            raise PolicyError(f"reward_scorer scores exit policies, got {type(estimator).__name__}")
        return estimator.score(X, y, mu=self.mu)

    def __repr__(self) -> str:
        return f"reward_scorer(mu={self.mu!r})"


def reward_scorer(mu: float) -> RewardScorer:
    """A scorer for scikit-learn's model selection: the mean reward of :meth:`ExitPolicy.score` with cost
    weight `mu` instead of ``SCORE_MU``, e.g. ``GridSearchCV(DimeePolicy(), {"mu": [...]},
    scoring=reward_scorer(0.05))``. The weight is the scorer's, the same for every candidate."""
    return RewardScorer(mu)


def final_tier(plan: TierPlan) -> int:
    """The tier holding exit L: cloud, or edge when e = L (cloud then runs nothing)."""
    return int(plan.exit_tiers()[-1])


# ---- JSON encoding of params ------------------------------------------------------------------------------
def _encode(value: Any) -> Any:
    if isinstance(value, TierPlan):
        return {"__type__": "TierPlan", **value.to_dict()}
    if isinstance(value, CostModel):
        return {"__type__": "CostModel", **value.to_dict()}
    if isinstance(value, ExitPolicy):
        return {"__type__": "ExitPolicy", "policy": value.to_dict()}
    if isinstance(value, np.ndarray):
        return [_encode(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise PolicyError(f"cannot serialise parameter value {value!r} of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        kind = value.get("__type__")
        body = {k: v for k, v in value.items() if k != "__type__"}
        if kind == "TierPlan":
            return TierPlan.from_dict(body)
        if kind == "CostModel":
            return CostModel.from_dict(body)
        if kind == "ExitPolicy":
            return policy_from_dict(body["policy"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class ExitPolicy(BaseEstimator):
    """Base class. Subclasses define ``__init__`` (storing params only, including ``plan`` and
    ``cost_model``), ``_fit``, ``_step``, and ``_state_to_dict`` / ``_state_from_dict`` for fitted state.

    Fitted attributes set here: ``plan_`` (the given plan, or :func:`tiers.default_plan` of the logits' exit
    count), ``cost_model_`` (the given one or ``CostModel()``), ``num_layers_``, ``n_classes_``,
    ``n_features_`` (width of the extra features seen in fit, or None), ``temperatures_`` (validated, or None).
    """

    requires_labels: ClassVar[bool] = False  # only the oracle: decide() needs the true labels
    fit_requires_labels: ClassVar[bool] = True
    # old param name -> new one, so that policies saved before a rename still load in from_dict
    _renamed_params: ClassVar[dict[str, str]] = {}

    # ---- fitting -----------------------------------------------------------------------------------
    def fit(self, logits: np.ndarray, labels: np.ndarray | None, features: np.ndarray | None = None) -> "ExitPolicy":
        """Fit on the held-out split's cached logits [n, L, C] and labels [n]; `features` [n, d] optional.
        `logits` may be an :class:`ExitData` carrying the features (then `features` stays None)."""
        arr, y, feats = self._begin_fit(logits, labels, features)
        with self._unfitted_on_failure():
            self._fit(arr, y, feats)
        return self

    def fit_many(
        self,
        params: Sequence[Mapping[str, Any]],
        logits: np.ndarray,
        labels: np.ndarray | None,
        features: np.ndarray | None = None,
    ) -> list["ExitPolicy"]:
        """One copy of this policy per dict of `params` (this policy's parameters with those replaced), each
        fitted to the state ``fit(logits, labels, features)`` gives it on the same data (a subclass whose ``fit``
        takes further arguments, such as RandomTierPolicy's reference tiers, is fitted without them). The copies may differ in ``cost_model`` and the
        subclass's own parameters, not in ``plan`` or ``temperatures``: the fit input is checked once. A
        subclass whose fit can share work across the copies (DimeePolicy) overrides ``_fit_copies``."""
        base = self.get_params(deep=False)
        for changes in params:
            unknown = sorted(set(changes) - set(base))
            if unknown:
                raise PolicyError(f"fit_many: {type(self).__name__} has no parameter(s) {', '.join(unknown)}")
            fixed = {"plan", "temperatures"} & set(changes)
            if fixed:
                raise PolicyError(f"fit_many: the copies must share {', '.join(sorted(fixed))}; fit them separately")
        policies = [type(self)(**{**base, **changes}) for changes in params]
        if not policies:
            return []
        first = policies[0]
        arr, y, feats = first._begin_fit(logits, labels, features)
        try:
            for policy in policies[1:]:
                policy._begin_fit_like(first)
            changed = set().union(*(set(changes) for changes in params))
            type(self)._fit_copies(policies, arr, y, feats, changed)
        except BaseException:
            for policy in policies:  # as fit: a failed fit leaves every copy unfitted
                policy._forget_fit()
            raise
        return policies

    @classmethod
    def _fit_copies(
        cls,
        policies: list["ExitPolicy"],
        logits: np.ndarray,
        labels: np.ndarray | None,
        features: np.ndarray | None,
        changed: set[str],
    ) -> None:
        """Fit copies whose base fitted attributes are set (``fit_many``; `changed`: the parameters in which
        they may differ); by default each one's own ``_fit``."""
        for policy in policies:
            policy._fit(logits, labels, features)

    def _begin_fit(
        self, logits: np.ndarray, labels: np.ndarray | None, features: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Check the fit input and set the base fitted attributes; returns (logits, labels, features) checked."""
        logits, features = unpack_exit_data(logits, features)
        arr = as_logits(logits)
        n, num_layers, n_classes = arr.shape
        if n == 0:
            raise PolicyError("cannot fit a policy on zero samples")
        plan = self._resolve_plan(num_layers)
        cost_model = self._resolve_cost_model()
        temps = check_temperatures(getattr(self, "temperatures", None), num_layers)
        if labels is None:
            if self.fit_requires_labels:
                raise PolicyError(f"{type(self).__name__}.fit needs labels")
            y = None
        else:
            y = check_labels(labels, n, n_classes)
        feats = self._as_features(features, n, expected_width=None)
        self.plan_ = plan
        self.cost_model_ = cost_model
        self.num_layers_ = num_layers
        self.n_classes_ = n_classes
        self.n_features_ = None if feats is None else int(feats.shape[1])
        self.temperatures_ = temps
        return arr, y, feats

    def _begin_fit_like(self, other: "ExitPolicy") -> None:
        """Set the base fitted attributes that `_begin_fit` would set on the data `other` began its fit on: a
        clone of `other` that differs in its cost model (and the subclass's own parameters) only."""
        for name in _BASE_FITTED:
            setattr(self, name, getattr(other, name))
        self.cost_model_ = self._resolve_cost_model()

    def _resolve_cost_model(self) -> CostModel:
        cost_model = getattr(self, "cost_model", None) or CostModel()
        if not isinstance(cost_model, CostModel):
            raise PolicyError(f"cost_model must be a tiers.CostModel, got {type(cost_model).__name__}")
        return cost_model

    @contextmanager
    def _unfitted_on_failure(self) -> Iterator[None]:
        """A failed fit leaves the policy unfitted, not half-fitted."""
        try:
            yield
        except BaseException:
            self._forget_fit()
            raise

    def _forget_fit(self) -> None:
        for name in _BASE_FITTED:
            self.__dict__.pop(name, None)

    def _resolve_plan(self, num_layers: int) -> TierPlan:
        plan = getattr(self, "plan", None)
        if plan is None:
            return default_plan(num_layers)
        if not isinstance(plan, TierPlan):
            raise PolicyError(f"plan must be a tiers.TierPlan, got {type(plan).__name__}")
        if plan.num_layers != num_layers:
            raise PolicyError(
                f"the policy's plan is for a {plan.num_layers}-layer model but the logits have {num_layers} exits"
            )
        return plan

    def _fit(self, logits: np.ndarray, labels: np.ndarray | None, features: np.ndarray | None) -> None:
        """Subclass hook: learn the fitted state. Base attributes are already set."""

    # ---- online decision: the step protocol of tiers.routes --------------------------------------------
    def step(
        self,
        logits_seen: np.ndarray,
        tier: str | int,
        depth: int,
        features: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per sample held at `tier` after layer `depth` (0: before any layer, mobile only): the exit to answer
        with (1..depth), ``tiers.CONTINUE`` (run the next layer here), or ``tiers.handoff_action(t)`` (send it
        to tier t at this boundary). `logits_seen` [n, depth, C] holds exits 1..depth, nothing later."""
        self._check_fitted()
        t = tier_index(tier)
        arr = as_logits(logits_seen, "logits_seen", allow_empty_exits=True)
        if arr.shape[1] != depth:
            raise PolicyError(f"after layer {depth} the policy expects the logits of exits 1..{depth}; got {arr.shape[1]}")
        if depth > 0:
            self._check_classes(arr)
        feats = self._as_features(features, arr.shape[0], expected_width=self.n_features_)
        extra = {}
        if self.requires_labels:
            if labels is None:
                raise PolicyError(f"{type(self).__name__} needs the true labels to decide (it is a bound, not a policy)")
            extra["labels"] = check_labels(labels, arr.shape[0], self.n_classes_)
        actions = np.asarray(self._step(arr, t, int(depth), feats, **extra), dtype=np.int64)
        try:
            return check_actions(actions, self.plan_, TIERS[t], int(depth))
        except RouteError as err:
            raise PolicyError(f"{type(self).__name__} at {TIERS[t]} after layer {depth}: {err}") from None

    def _step(self, logits_seen: np.ndarray, tier: int, depth: int, features: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    # ---- offline prediction ------------------------------------------------------------------------
    def predict_outcome(
        self, logits: np.ndarray, features: np.ndarray | None = None, labels: np.ndarray | None = None
    ) -> Outcome:
        """Route, exit and depth per sample, by driving :meth:`step` over the cached logits with the segment
        driver the services use. `labels` are passed only to policies with ``requires_labels`` (the oracle).
        `logits` may be an :class:`ExitData` carrying the features."""
        self._check_fitted()
        logits, features = unpack_exit_data(logits, features)
        arr = self._checked_logits(logits)
        n = arr.shape[0]
        feats = self._as_features(features, n, expected_width=self.n_features_)
        y = None
        if self.requires_labels:
            if labels is None:
                raise PolicyError(
                    f"{type(self).__name__} needs the true labels to decide (it is a bound, not a policy)"
                )
            y = check_labels(labels, n, self.n_classes_)

        def step(rows: np.ndarray, seen: np.ndarray, tier: int, depth: int) -> np.ndarray:
            return self.step(
                seen, tier, depth, None if feats is None else feats[rows], None if y is None else y[rows]
            )

        return simulate(self.plan_, n, arr, step)

    def _checked_logits(self, logits: np.ndarray) -> np.ndarray:
        arr = as_logits(logits)
        if arr.shape[1] != self.num_layers_:
            raise PolicyError(
                f"the policy was fitted for a {self.num_layers_}-layer model (plan {self.plan_.spec}); "
                f"the logits have {arr.shape[1]} exits"
            )
        self._check_classes(arr)
        return arr

    def predict(
        self, logits: np.ndarray, features: np.ndarray | None = None, labels: np.ndarray | None = None
    ) -> np.ndarray:
        """1-based answering exit per sample (the route is in :meth:`predict_outcome`); `logits` may be an
        :class:`ExitData`."""
        return self.predict_outcome(logits, features, labels).exits

    def score(
        self, X: Any, y: np.ndarray, features: np.ndarray | None = None, *, mu: float | None = None
    ) -> float:
        """Mean reward over the samples: 1 if the answer at the chosen exit is right (``per_exit_correct``,
        with the policy's regression tolerance) minus `mu` x the normalised cost of the sample's route and
        depth (the cost :func:`evaluate_policy` reports). Higher is better, as scikit-learn expects.

        X: logits [n, L, C] (with `features`) or an :class:`ExitData`; y: the true labels (also handed to
        policies that need them to decide, the oracle). `mu` defaults to the module's ``SCORE_MU`` = 0.1,
        never the policy's own ``mu`` param, so that a grid search over ``mu`` scores every candidate on one
        scale; ``scoring=reward_scorer(mu)`` picks another weight."""
        self._check_fitted()
        weight = SCORE_MU if mu is None else _check_score_mu(mu)
        logits, feats = unpack_exit_data(X, features)
        if y is None:
            raise PolicyError(f"{type(self).__name__}.score needs the true labels y")
        result = evaluate_policy(self, logits, y, feats)
        return float(result["accuracy"] - weight * result["normalised_cost"])

    # ---- checks ------------------------------------------------------------------------------------
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "plan_")

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise PolicyNotFittedError(
                f"{type(self).__name__} is not fitted yet: call fit() on a held-out split first"
            )

    def _check_classes(self, arr: np.ndarray) -> None:
        if arr.shape[2] != self.n_classes_:
            raise PolicyError(f"the policy was fitted on {self.n_classes_} output(s) per exit; got {arr.shape[2]}")

    def check_plan(self, plan: TierPlan) -> None:
        """Raise PolicyError unless `plan` is the plan this policy was fitted for."""
        self._check_fitted()
        if plan != self.plan_:
            raise PolicyError(
                f"the policy was fitted for plan {self.plan_.spec} of {self.plan_.num_layers} layers; "
                f"it cannot serve plan {plan.spec} of {plan.num_layers} layers (refit it)"
            )

    @staticmethod
    def _as_features(features: np.ndarray | None, n: int, expected_width: int | None) -> np.ndarray | None:
        if features is None:
            return None
        arr = np.asarray(features)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise PolicyError(f"features must be a 2-d array [{n}, d] (one row per sample); got shape {arr.shape}")
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
            raise PolicyError(f"features must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float64, copy=False)
        if not np.isfinite(arr).all():
            raise PolicyError("features contain NaN or inf values")
        if expected_width is not None and arr.shape[1] != expected_width:
            raise PolicyError(f"features have width {arr.shape[1]}, the policy was fitted on width {expected_width}")
        return arr

    def normalised_exit_costs(self) -> np.ndarray:
        """Cost of answering at each exit on the linear route / all-cloud reference, [L]."""
        self._check_fitted()
        return self.cost_model_.normalised_exit_costs(self.plan_)

    @property
    def paths_(self) -> PathTable:
        """The deployment's routes (fitted plan)."""
        self._check_fitted()
        return path_table(self.plan_)

    def normalised_path_costs(self) -> np.ndarray:
        """Normalised cost of answering by route p after its answering stop ran to layer j, [P, L]."""
        self._check_fitted()
        return self.cost_model_.path_costs(self.plan_, list(self.paths_.paths))

    def _temps(self, k: int) -> np.ndarray | None:
        """Temperatures of exits 1..k (the ones a tier has seen)."""
        return None if self.temperatures_ is None else self.temperatures_[:k]

    # ---- serialisation -----------------------------------------------------------------------------
    def _state_to_dict(self) -> dict[str, Any]:
        return {}

    def _state_from_dict(self, state: dict[str, Any]) -> None:
        """Subclass hook: restore fitted state written by `_state_to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible description: class name, params, and fitted state (None if unfitted)."""
        params = {k: _encode(v) for k, v in self.get_params(deep=False).items()}
        state = None
        if self.__sklearn_is_fitted__():
            state = {
                "plan": self.plan_.to_dict(),
                "cost_model": self.cost_model_.to_dict(),
                "num_layers": int(self.num_layers_),
                "n_classes": int(self.n_classes_),
                "n_features": self.n_features_,
                "temperatures": None if self.temperatures_ is None else self.temperatures_.tolist(),
                "policy": _encode(self._state_to_dict()),
            }
        return {"policy": type(self).__name__, "format_version": FORMAT_VERSION, "params": params, "state": state}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExitPolicy":
        """Rebuild a policy written by :meth:`to_dict` (fitted state included)."""
        if not isinstance(data, dict) or "policy" not in data or "params" not in data:
            raise PolicyError("not a serialised policy: expected a dict with 'policy' and 'params'")
        name = data["policy"]
        target = _REGISTRY.get(name)
        if target is None:
            raise PolicyError(f"unknown policy {name!r}; known: {', '.join(sorted(_REGISTRY))}")
        if cls is not ExitPolicy and not issubclass(target, cls):
            raise PolicyError(f"the dict describes a {name}, not a {cls.__name__}")
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise PolicyError(f"unsupported policy format version {data.get('format_version')}")
        defaults = {
            p.name: p.default for p in inspect.signature(target.__init__).parameters.values() if p.name != "self"
        }
        params = {}
        raw_params = dict(data["params"])
        for old_key, new_key in target._renamed_params.items():
            if old_key in raw_params:
                if new_key in raw_params:
                    raise PolicyError(f"{name} params give both {old_key!r} and its new name {new_key!r}")
                raw_params[new_key] = raw_params.pop(old_key)
        for key, raw in raw_params.items():
            if key not in defaults:
                raise PolicyError(f"{name} has no parameter {key!r}")
            value = _decode(raw)
            if isinstance(defaults[key], tuple) and isinstance(value, list):
                value = tuple(value)
            params[key] = value
        policy = target(**params)
        state = data.get("state")
        if state is not None:
            policy.plan_ = TierPlan.from_dict(state["plan"])
            policy.cost_model_ = CostModel.from_dict(state["cost_model"])
            policy.num_layers_ = int(state["num_layers"])
            policy.n_classes_ = int(state["n_classes"])
            policy.n_features_ = None if state["n_features"] is None else int(state["n_features"])
            temps = state.get("temperatures")
            policy.temperatures_ = None if temps is None else np.asarray(temps, dtype=np.float64)
            policy._state_from_dict(state.get("policy") or {})
        return policy


def policy_from_dict(data: dict[str, Any]) -> ExitPolicy:
    """Rebuild any registered policy from :meth:`ExitPolicy.to_dict` output."""
    return ExitPolicy.from_dict(data)
