"""Where a sample is answered: a thin adapter over the run's fitted policy, with a built-in fallback rule.

A policy speaks the step protocol of `tiers.routes`: `step(logits_seen [n, depth, C], tier, depth,
features=None) -> [n] actions`, asked by a tier before its first layer (mobile, depth 0) and after each layer
it runs: an exit j > 0 to answer with, `tiers.CONTINUE` (0) to run the next layer here, or a handoff
(`tiers.HANDOFF_EDGE` / `tiers.HANDOFF_CLOUD`) at this boundary. The fitted policy lives in the
`clustering` package and is stored in `<run>/policy.json`; when that file is missing, the services use
`ThresholdPolicy`, a confidence threshold at each tier's last layer of the linear route.

Temperatures (`<run>/temperatures.json`, one per exit) divide the logits before every softmax the services
report or threshold on; the argmax, and so the predicted label, does not change.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from clustering import policy_from_dict
from tiers import (
    CONTINUE,
    TIERS,
    RouteError,
    TierPlan,
    TierPlanError,
    chain_path,
    check_actions,
    final_tier_index,
    handoff_action,
    reference_path,
)
from tiers.run import POLICY_FILE, TemperatureFileError
from tiers.run import read_temperatures as read_run_temperatures

from .schemas import Answer


log = logging.getLogger("services.policy")


class PolicyLoadError(ValueError):
    """policy.json or temperatures.json exists but cannot be used with this run."""


class TierPolicy(Protocol):
    def step(
        self, logits_seen: np.ndarray, tier: str, depth: int, features: np.ndarray | None = None
    ) -> np.ndarray: ...


# ---- probabilities ----------------------------------------------------------------------------------------
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis, in float64, of logits divided by `temperature`."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    weights = np.exp(scaled)
    return weights / weights.sum(axis=-1, keepdims=True)


def exit_answer(
    row_logits: np.ndarray,
    exit_index: int,
    tier: str,
    route: list[str],
    depth: int,
    label_names: list[str],
    temperatures: np.ndarray | None,
    reason: str | None = None,
    **extra: Any,
) -> Answer:
    """The answer at `exit_index` (1-based) from one sample's logits of exits 1..depth: a score for a
    regression head, else the label, its name and the (temperature-scaled) probabilities. Served tiers and the
    device client build every answer here."""
    row = row_logits[exit_index - 1]
    common = dict(
        exit=exit_index, tier=tier, degraded=reason is not None, degraded_reason=reason, route=route,
        depth=int(depth), **extra,
    )  # fmt: skip
    if row.shape[0] == 1:
        return Answer(label=None, label_name=None, probabilities=None, score=float(row[0]), **common)
    temperature = 1.0 if temperatures is None else float(temperatures[exit_index - 1])
    label = int(np.argmax(row))
    return Answer(
        label=label,
        label_name=label_names[label] if label < len(label_names) else str(label),
        probabilities=softmax(row, temperature).tolist(),
        **common,
    )


def read_temperatures(run_dir: str | Path, num_layers: int) -> np.ndarray | None:
    """Per-exit temperatures [L] from `<run>/temperatures.json`, or None (a bad file stops the service)."""
    try:
        return read_run_temperatures(run_dir, num_layers)
    except TemperatureFileError as err:
        raise PolicyLoadError(str(err)) from err


# ---- the built-in rule ------------------------------------------------------------------------------------
class ThresholdPolicy:
    """Answer at a tier's last layer of the linear route (m on mobile, e on edge) when the max softmax
    probability there reaches `threshold`, else hand off to the next tier at that boundary; the final tier
    answers at exit L. Everywhere else: continue. Regression heads have no probability, so a regression
    sample is always handed on to the final tier.
    """

    def __init__(self, plan: TierPlan, threshold: float = 0.9, temperatures: np.ndarray | None = None) -> None:
        self.plan = plan
        self.threshold = float(threshold)
        self.temperatures = temperatures

    def step(
        self, logits_seen: np.ndarray, tier: str, depth: int, features: np.ndarray | None = None
    ) -> np.ndarray:
        n, k, classes = np.shape(logits_seen)
        if k != depth:
            raise ValueError(f"after layer {depth} the rule expects the logits of exits 1..{depth}; got {k}")
        index = TIERS.index(tier)
        last = self.plan.held_range(tier)[1]  # = the tier's last layer of the linear route (m, e, L)
        if depth < last:
            return np.full(n, CONTINUE, dtype=np.int64)
        onward = None if index >= final_tier_index(self.plan) else self._onward(index, depth)
        if onward is None:  # the final tier, or no tier takes a sample here: answer
            return np.full(n, depth, dtype=np.int64)
        if classes == 1:
            return np.full(n, onward, dtype=np.int64)
        temperature = 1.0 if self.temperatures is None else float(self.temperatures[depth - 1])
        confidence = softmax(np.asarray(logits_seen)[:, depth - 1], temperature).max(axis=-1)
        return np.where(confidence >= self.threshold, depth, onward).astype(np.int64)

    def _onward(self, index: int, depth: int) -> int | None:
        """The handoff from tier `index` after layer `depth`: the next tier of the chain if it accepts the
        boundary, else a later one that does; None if none does."""
        for target in range(index + 1, final_tier_index(self.plan) + 1):
            action = handoff_action(target)
            try:
                check_actions(np.array([action]), self.plan, TIERS[index], depth)
            except RouteError:
                continue
            return action
        return None

    def describe(self) -> str:
        return f"built-in threshold {self.threshold:g} at each tier's last layer of the linear route"


def policy_actions(
    policy: TierPolicy,
    fallback: ThresholdPolicy,
    plan: TierPlan,
    tier: str,
    seen: np.ndarray,
    depth: int,
    features: np.ndarray | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> np.ndarray:
    """The step actions of samples held at `tier` after layer `depth` (`seen`: their logits of exits 1..depth):
    the policy's, validated by `tiers.check_actions`. Samples whose logits hold NaN or infinity get the built-in
    rule's (the policy never sees them), and so does every sample when the policy fails (`on_error` is called
    inside the except block, so it can log the traceback). The one decision a served tier and the device
    client (`services.device`) make."""
    seen = np.asarray(seen)
    n = seen.shape[0]
    actions = np.zeros(n, dtype=np.int64)
    finite = np.isfinite(seen.reshape(n, -1)).all(axis=1)
    good, bad = np.flatnonzero(finite), np.flatnonzero(~finite)
    if good.size:
        try:
            raw = policy.step(seen[good], tier, depth, None if features is None else features[good])
            chosen = check_actions(np.asarray(raw), plan, tier, depth)
            if chosen.shape != (good.size,):
                raise RouteError(f"policy returned {chosen.shape[0]} actions for {good.size} samples")
            actions[good] = chosen
        except Exception as err:  # noqa: BLE001 - a policy bug must not lose the request
            if on_error is not None:
                on_error(err)
            actions[good] = fallback.step(seen[good], tier, depth)
    if bad.size:
        with np.errstate(invalid="ignore", over="ignore"):
            actions[bad] = fallback.step(seen[bad], tier, depth)
    return actions


def forced_route(plan: TierPlan, tier: str) -> tuple[tuple, int]:
    """(route, exit) of a sample forced to `tier`: mobile answers at m; edge and cloud get the token ids
    straight away (the direct route) when they accept them, else the sample goes along the linear route;
    either way it is answered at that tier's last exit."""
    if tier == "mobile":
        return chain_path(plan, plan.mobile_end), plan.mobile_end
    target = TIERS[min(TIERS.index(tier), final_tier_index(plan))]
    last = plan.layer_range(target)[1]
    if target == "cloud":
        try:
            return reference_path(plan), last
        except TierPlanError:
            return chain_path(plan, last), last
    if 0 in plan.accepts(target):
        return (("mobile", 0), (target, 0)), last
    return chain_path(plan, last), last


def forced_actions(plan: TierPlan, force: str, tier: str, depth: int, n: int) -> np.ndarray:
    """Step actions of `n` samples forced to tier `force`, held at `tier` after layer `depth`."""
    path, exit_index = forced_route(plan, force)
    here = TIERS.index(tier)
    stops = [TIERS.index(t) for t, _ in path]
    if here >= stops[-1] or here not in stops:  # the answering tier (or a tier off the route: answer here)
        last = plan.held_range(tier)[1]
        answer_at = min(exit_index, last) if here == stops[-1] else last
        return np.full(n, answer_at if depth >= answer_at else CONTINUE, dtype=np.int64)
    following, boundary = path[stops.index(here) + 1]
    if depth == boundary:
        return np.full(n, handoff_action(following), dtype=np.int64)
    return np.full(n, CONTINUE, dtype=np.int64)


# ---- loading --------------------------------------------------------------------------------------------
def load_policy(
    run_dir: str | Path, plan: TierPlan, mode: str, threshold: float, temperatures: np.ndarray | None
) -> tuple[TierPolicy, str]:
    """The policy this tier follows, and a one-line description of it for logs and /readyz.

    mode 'threshold' always uses the built-in rule. mode 'auto' uses `<run>/policy.json` through
    `clustering.policy_from_dict` when both exist; a policy.json that exists but cannot be rebuilt, that
    was fitted for another plan or deployment (accepted boundaries), or whose routes this deployment cannot
    carry, stops the service (serving a policy other than the fitted one silently would be worse than not
    starting, and a route that cannot be served must fail here, not at request time).
    """
    fallback = ThresholdPolicy(plan, threshold, temperatures)
    path = Path(run_dir) / POLICY_FILE
    if mode == "threshold" or not path.exists():
        return fallback, fallback.describe()
    try:
        policy = policy_from_dict(json.loads(path.read_text()))
    except Exception as err:  # noqa: BLE001 - any failure to rebuild is reported the same way
        raise PolicyLoadError(f"{path} cannot be loaded by clustering.policy_from_dict: {err}") from err
    is_fitted = getattr(policy, "__sklearn_is_fitted__", None)
    if callable(is_fitted) and not is_fitted():
        raise PolicyLoadError(f"{path} holds an unfitted {type(policy).__name__}; fit it before serving")
    if getattr(policy, "requires_labels", False):
        raise PolicyLoadError(f"{path} holds a {type(policy).__name__}, which needs the true labels: a bound, not a policy")
    fitted_plan = getattr(policy, "plan_", None)
    if isinstance(fitted_plan, TierPlan) and fitted_plan != plan and fitted_plan.spec == plan.spec:
        raise PolicyLoadError(
            f"{path}: the policy was fitted for a deployment where edge accepts boundaries "
            f"{list(fitted_plan.accepts('edge'))} and cloud {list(fitted_plan.accepts('cloud'))}; this one accepts "
            f"{list(plan.accepts('edge'))} and {list(plan.accepts('cloud'))}: its routes may need boundaries "
            "this deployment does not accept (refit it for this plan)"
        )
    check_plan = getattr(policy, "check_plan", None)
    if callable(check_plan):
        try:
            check_plan(plan)
        except Exception as err:  # noqa: BLE001
            raise PolicyLoadError(f"{path}: {err}") from err
    if not callable(getattr(policy, "step", None)):
        raise PolicyLoadError(f"{path} holds a {type(policy).__name__} without step(): it cannot route samples")
    _probe_routes(policy, plan, path)
    return policy, f"{type(policy).__name__} from {path.name}"


def _probe_routes(policy: Any, plan: TierPlan, path: Path, n: int = 64, seed: int = 0) -> None:
    """Drive the policy over synthetic logits (and features) through every tier with the segment driver, so
    that a policy whose routes need a boundary the deployment does not accept (or that fails to step at all)
    is refused at load time. Every action is validated by `tiers.check_actions`."""
    predict_outcome = getattr(policy, "predict_outcome", None)
    if not callable(predict_outcome):
        return
    rng = np.random.default_rng(seed)
    classes = int(getattr(policy, "n_classes_", 2) or 2)
    logits = rng.normal(0.0, 3.0, size=(n, plan.num_layers, classes))
    logits[: n // 4] = 0.0  # undecided samples too
    width = getattr(policy, "n_features_", None)
    features = None if width is None else rng.normal(0.0, 1.0, size=(n, int(width)))
    try:
        predict_outcome(logits, features)
    except Exception as err:  # noqa: BLE001 - RouteError, PolicyError, TierPlanError ...
        raise PolicyLoadError(f"{path}: the policy cannot be served on plan {plan.spec} of this deployment: {err}") from err


def wants_features(policy: object, width: int) -> bool:
    """Whether to pass the embedding feature [n, hidden]: only to a policy fitted on that width."""
    return getattr(policy, "n_features_", None) == width
