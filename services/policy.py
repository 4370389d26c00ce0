"""Where a sample is answered: a thin adapter over the run's fitted policy, with a built-in fallback rule.

A policy answers `decide(logits_seen [n, k, C], tier, features=None) -> [n] ints`: the 1-based exit to
answer with (an exit the tier holds) or 0 for "hand off to the next tier". The fitted policy lives in the
`clustering` package and is stored in `<run>/policy.json`; when that file is missing, the services use
`ThresholdPolicy`, a confidence threshold at the tier's last exit.

Temperatures (`<run>/temperatures.json`, one per exit) divide the logits before every softmax the services
report or threshold on; the argmax, and so the predicted label, does not change.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clustering import policy_from_dict
from tiers import TierPlan
from tiers.run import POLICY_FILE, TemperatureFileError
from tiers.run import read_temperatures as read_run_temperatures


log = logging.getLogger("services.policy")


class PolicyLoadError(ValueError):
    """policy.json or temperatures.json exists but cannot be used with this run."""


class TierPolicy(Protocol):
    def decide(self, logits_seen: np.ndarray, tier: str, features: np.ndarray | None = None) -> np.ndarray: ...


# ---- probabilities ----------------------------------------------------------------------------------------
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis, in float64, of logits divided by `temperature`."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    weights = np.exp(scaled)
    return weights / weights.sum(axis=-1, keepdims=True)


def read_temperatures(run_dir: str | Path, num_layers: int) -> np.ndarray | None:
    """Per-exit temperatures [L] from `<run>/temperatures.json`, or None (a bad file stops the service)."""
    try:
        return read_run_temperatures(run_dir, num_layers)
    except TemperatureFileError as err:
        raise PolicyLoadError(str(err)) from err


# ---- the built-in rule ------------------------------------------------------------------------------------
class ThresholdPolicy:
    """Answer at the tier's last exit when its max softmax probability reaches `threshold`, else hand off.

    The tier holding exit L always answers there. Regression heads have no probability, so a regression
    sample is always handed off to the last tier.
    """

    def __init__(self, plan: TierPlan, threshold: float = 0.9, temperatures: np.ndarray | None = None) -> None:
        self.plan = plan
        self.threshold = float(threshold)
        self.temperatures = temperatures

    def decide(self, logits_seen: np.ndarray, tier: str, features: np.ndarray | None = None) -> np.ndarray:
        n, k, classes = logits_seen.shape
        if k == self.plan.num_layers:
            return np.full(n, k, dtype=np.int64)
        if classes == 1:
            return np.zeros(n, dtype=np.int64)
        temperature = 1.0 if self.temperatures is None else float(self.temperatures[k - 1])
        confidence = softmax(logits_seen[:, -1], temperature).max(axis=-1)
        return np.where(confidence >= self.threshold, k, 0).astype(np.int64)

    def describe(self) -> str:
        return f"built-in threshold {self.threshold:g} at each tier's last exit"


# ---- loading --------------------------------------------------------------------------------------------
def load_policy(
    run_dir: str | Path, plan: TierPlan, mode: str, threshold: float, temperatures: np.ndarray | None
) -> tuple[TierPolicy, str]:
    """The policy this tier follows, and a one-line description of it for logs and /readyz.

    mode 'threshold' always uses the built-in rule. mode 'auto' uses `<run>/policy.json` through
    `clustering.policy_from_dict` when both exist; a policy.json that exists but cannot be rebuilt, or that
    was fitted for another plan, stops the service (serving a policy other than the fitted one silently
    would be worse than not starting).
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
    check_plan = getattr(policy, "check_plan", None)
    if callable(check_plan):
        try:
            check_plan(plan)
        except Exception as err:  # noqa: BLE001
            raise PolicyLoadError(f"{path}: {err}") from err
    return policy, f"{type(policy).__name__} from {path.name}"


def wants_features(policy: object, width: int) -> bool:
    """Whether to pass the mobile embedding feature [n, hidden]: only to a policy fitted on that width."""
    return getattr(policy, "n_features_", None) == width


def check_decisions(decisions: object, n: int, first_exit: int, last_exit: int) -> np.ndarray:
    """Validate a policy's output: shape [n], each 0 or an exit in first..last (the caller maps 0 to the last
    exit on the final tier)."""
    arr = np.asarray(decisions)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"policy returned {arr.dtype} of shape {arr.shape}, expected {n} integers")
    arr = arr.astype(np.int64)
    valid = (arr == 0) | ((arr >= first_exit) & (arr <= last_exit))
    if not valid.all():
        bad = np.unique(arr[~valid]).tolist()
        raise ValueError(f"policy returned exits {bad}; allowed 0 or {first_exit}..{last_exit}")
    return arr
