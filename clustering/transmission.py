"""Transmission-decision (TD) rules: at mobile, keep the local early-exit answer or transmit to the next tier.

A TD rule sees the mobile exits' logits [n, m, C] and the channel state (SNR in dB, a scalar or one per
sample) and returns, per sample, True = transmit the hidden state, False = answer locally. The local answer
is exit m (``local="last"``) or the most confident mobile exit (``local="best"``).

Fitting uses a held-out split evaluated over a grid of SNRs, stacked: for every (sample, SNR) row the mobile
logits, the SNR, the label and whether the *remote* answer (after the noisy hop) was right. Every fitted rule
maximises the same objective on those rows::

    reward = accuracy - cost_weight * transmit_rate

(`cost_weight` = accuracy points one is willing to give up to transmit nothing; 0 = accuracy only).

Rules:

* :class:`ConfidenceTD` - fixed threshold on the local exit's confidence (transmit when below), SNR-blind.
* :class:`SNRShiftedTD` - threshold t(snr) = t0 + slope * clip((snr_ref - snr) / snr_span, 0, 1): a worse
  channel moves the threshold (fitted slope < 0 -> keep more answers locally when the link is noisy).
* :class:`LogisticTD` - two small logistic models: P(local right | confidence features of exits 1..m) and
  P(remote right | those features, SNR); transmit when P(remote) - P(local) > cost_weight.
* :class:`DimeeTD` - DIMEE's cluster stage on the mobile exit profile, one per channel state (SNR) seen in
  fit, the nearest chosen online.

Decisions in the :class:`clustering.ExitPolicy` style are available through :meth:`TransmissionRule.decide`
(the local exit, or 0 = hand off). Serialisation: ``to_dict`` / :func:`transmission_rule_from_dict`, no pickle.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression

from .errors import PolicyError
from .profiles import as_logits, confidence, exit_profile, margin, predictions
from .stages import ClusterSettings, RoutingStage, fit_cluster_stage

LOCAL_CHOICES = ("last", "best")
_RULES: dict[str, type["TransmissionRule"]] = {}


def _register(cls):
    _RULES[cls.__name__] = cls
    return cls


def _snr_column(snr, n: int) -> np.ndarray:
    arr = np.asarray(snr, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise PolicyError(f"snr must be a scalar or one value per sample ({n}), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PolicyError("snr must be finite (dB)")
    return arr


def local_exit_index(logits: np.ndarray, local: str = "last") -> np.ndarray:
    """0-based mobile exit that gives the local answer, per sample."""
    if local not in LOCAL_CHOICES:
        raise PolicyError(f"local must be one of {LOCAL_CHOICES}, got {local!r}")
    arr = as_logits(logits)
    if local == "last":
        return np.full(arr.shape[0], arr.shape[1] - 1, dtype=np.int64)
    return np.argmax(confidence(arr), axis=1)


def local_predictions(logits: np.ndarray, local: str = "last") -> np.ndarray:
    arr = as_logits(logits)
    idx = local_exit_index(arr, local)
    return predictions(arr)[np.arange(arr.shape[0]), idx]


def local_confidence(logits: np.ndarray, local: str = "last") -> np.ndarray:
    arr = as_logits(logits)
    idx = local_exit_index(arr, local)
    return confidence(arr)[np.arange(arr.shape[0]), idx]


def td_reward(transmit: np.ndarray, local_correct: np.ndarray, remote_correct: np.ndarray, cost_weight: float) -> float:
    transmit = np.asarray(transmit, dtype=bool)
    correct = np.where(transmit, remote_correct, local_correct)
    return float(correct.mean() - cost_weight * transmit.mean())


class TransmissionRule(BaseEstimator):
    """Base class: ``fit(mobile_logits, snr, labels, remote_correct)``, ``predict(mobile_logits, snr)``."""

    fit_requires_remote: ClassVar[bool] = True

    def fit(self, mobile_logits: np.ndarray, snr, labels: np.ndarray, remote_correct: np.ndarray) -> "TransmissionRule":
        arr = as_logits(mobile_logits)
        n = arr.shape[0]
        if n == 0:
            raise PolicyError("cannot fit a transmission rule on zero samples")
        snr_col = _snr_column(snr, n)
        labels = np.asarray(labels)
        remote = np.asarray(remote_correct, dtype=bool)
        if labels.shape != (n,) or remote.shape != (n,):
            raise PolicyError(f"labels and remote_correct need one value per sample ({n})")
        if not np.isfinite(self.cost_weight) or self.cost_weight < 0:
            raise PolicyError(f"cost_weight must be a finite number >= 0, got {self.cost_weight}")
        self.n_exits_ = arr.shape[1]
        local_correct = local_predictions(arr, self.local) == labels
        self._fit(arr, snr_col, local_correct, remote)
        return self

    def predict(self, mobile_logits: np.ndarray, snr) -> np.ndarray:
        """True = transmit, per sample."""
        if not hasattr(self, "n_exits_"):
            raise PolicyError(f"{type(self).__name__} is not fitted; call fit() first")
        arr = as_logits(mobile_logits)
        if arr.shape[1] != self.n_exits_:
            raise PolicyError(f"fitted on {self.n_exits_} mobile exits, got logits with {arr.shape[1]}")
        return np.asarray(self._predict(arr, _snr_column(snr, arr.shape[0])), dtype=bool)

    def decide(self, mobile_logits: np.ndarray, snr) -> np.ndarray:
        """ExitPolicy-style answer at mobile: the 1-based local exit, or 0 = transmit."""
        arr = as_logits(mobile_logits)
        exits = local_exit_index(arr, self.local) + 1
        return np.where(self.predict(arr, snr), 0, exits)

    # ---- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        state = self._state() if hasattr(self, "n_exits_") else None
        if state is not None:
            state["n_exits"] = self.n_exits_
        return {"rule": type(self).__name__, "params": self.get_params(), "state": state}

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _fit(self, logits, snr, local_correct, remote_correct) -> None:
        raise NotImplementedError

    def _predict(self, logits, snr) -> np.ndarray:
        raise NotImplementedError


def transmission_rule_from_dict(data: dict[str, Any]) -> TransmissionRule:
    name = data.get("rule")
    if name not in _RULES:
        raise PolicyError(f"unknown transmission rule {name!r}; known: {', '.join(sorted(_RULES))}")
    rule = _RULES[name](**data.get("params", {}))
    state = data.get("state")
    if state is not None:
        rule.n_exits_ = int(state["n_exits"])
        rule._load_state(state)
    return rule


def _threshold_grid(conf: np.ndarray, n: int = 101) -> np.ndarray:
    qs = np.unique(np.quantile(conf, np.linspace(0, 1, n)))
    return np.concatenate([[0.0], qs + 1e-9, [1.0 + 1e-9]])  # 0 = never transmit, >1 = always


@_register
class ConfidenceTD(TransmissionRule):
    """Transmit when the local exit's confidence < threshold; `threshold=None` fits it (SNR pooled)."""

    def __init__(self, threshold: float | None = None, cost_weight: float = 0.0, local: str = "last"):
        self.threshold = threshold
        self.cost_weight = cost_weight
        self.local = local

    def _fit(self, logits, snr, local_correct, remote_correct) -> None:
        if self.threshold is not None:
            if not np.isfinite(self.threshold):
                raise PolicyError(f"threshold must be finite, got {self.threshold}")
            self.threshold_ = float(self.threshold)
            return
        conf = local_confidence(logits, self.local)
        grid = _threshold_grid(conf)
        transmit = conf[None, :] < grid[:, None]
        correct = np.where(transmit, remote_correct[None, :], local_correct[None, :])
        reward = correct.mean(axis=1) - self.cost_weight * transmit.mean(axis=1)
        self.threshold_ = float(grid[int(np.argmax(reward))])

    def _predict(self, logits, snr):
        return local_confidence(logits, self.local) < self.threshold_

    def _state(self):
        return {"threshold": self.threshold_}

    def _load_state(self, state):
        self.threshold_ = float(state["threshold"])


@_register
class SNRShiftedTD(TransmissionRule):
    """t(snr) = t0 + slope * clip((snr_ref - snr) / snr_span, 0, 1); transmit when confidence < t(snr).

    Fitted by grid search over (t0, slope) on the stacked (sample, SNR) rows; `t0`/`slope` given = fixed."""

    def __init__(
        self,
        t0: float | None = None,
        slope: float | None = None,
        snr_ref: float = 20.0,
        snr_span: float = 25.0,
        cost_weight: float = 0.0,
        local: str = "last",
        n_slopes: int = 41,
    ):
        self.t0 = t0
        self.slope = slope
        self.snr_ref = snr_ref
        self.snr_span = snr_span
        self.cost_weight = cost_weight
        self.local = local
        self.n_slopes = n_slopes

    def shift(self, snr: np.ndarray) -> np.ndarray:
        if not self.snr_span > 0:
            raise PolicyError(f"snr_span must be > 0, got {self.snr_span}")
        return np.clip((self.snr_ref - np.asarray(snr, dtype=float)) / self.snr_span, 0.0, 1.0)

    def thresholds(self, snr) -> np.ndarray:
        snr = np.atleast_1d(np.asarray(snr, dtype=float))
        return self.t0_ + self.slope_ * self.shift(snr)

    def _fit(self, logits, snr, local_correct, remote_correct) -> None:
        conf = local_confidence(logits, self.local)
        shift = self.shift(snr)
        t0_grid = np.array([self.t0], dtype=float) if self.t0 is not None else _threshold_grid(conf, 61)
        if self.slope is not None:
            slope_grid = np.array([self.slope], dtype=float)
        else:
            slope_grid = np.linspace(-1.0, 1.0, int(self.n_slopes))
        best = (-np.inf, 0.0, 0.0)
        for slope in slope_grid:
            thr = t0_grid[:, None] + slope * shift[None, :]  # [grid, n]
            transmit = conf[None, :] < thr
            correct = np.where(transmit, remote_correct[None, :], local_correct[None, :])
            reward = correct.mean(axis=1) - self.cost_weight * transmit.mean(axis=1)
            i = int(np.argmax(reward))
            # ties: prefer the smaller |slope| (the SNR-blind rule unless the shift helps)
            if reward[i] > best[0] + 1e-12 or (abs(reward[i] - best[0]) <= 1e-12 and abs(slope) < abs(best[2])):
                best = (float(reward[i]), float(t0_grid[i]), float(slope))
        _, self.t0_, self.slope_ = best

    def _predict(self, logits, snr):
        return local_confidence(logits, self.local) < self.t0_ + self.slope_ * self.shift(snr)

    def _state(self):
        return {"t0": self.t0_, "slope": self.slope_}

    def _load_state(self, state):
        self.t0_, self.slope_ = float(state["t0"]), float(state["slope"])


def confidence_features(logits: np.ndarray) -> np.ndarray:
    """[n, 2m]: confidence and margin of every mobile exit."""
    arr = as_logits(logits)
    return np.concatenate([confidence(arr), margin(arr)], axis=1)


@_register
class LogisticTD(TransmissionRule):
    """Transmit when P(remote right | conf. features, SNR) - P(local right | conf. features) > cost_weight.

    SNR enters the remote model as snr/10 and its hinges at `snr_knots` (so the remote accuracy need not be
    a single sigmoid of SNR), plus its product with the local confidence."""

    def __init__(
        self,
        C: float = 1.0,
        cost_weight: float = 0.0,
        local: str = "last",
        snr_knots: tuple[float, ...] = (0.0, 10.0, 20.0),
    ):
        self.C = C
        self.cost_weight = cost_weight
        self.local = local
        self.snr_knots = snr_knots

    def _snr_features(self, logits, snr) -> np.ndarray:
        conf = confidence_features(logits)
        s = snr[:, None] / 10.0
        hinges = [np.maximum(snr - k, 0.0)[:, None] / 10.0 for k in self.snr_knots]
        local_conf = local_confidence(logits, self.local)[:, None]
        return np.concatenate([conf, s, *hinges, s * local_conf], axis=1)

    @staticmethod
    def _fit_one(x, y, C) -> dict[str, Any]:
        if y.all() or not y.any():  # a constant outcome: store the constant
            return {"constant": float(y.mean())}
        model = LogisticRegression(C=C, max_iter=2000).fit(x, y)
        return {"coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])}

    @staticmethod
    def _proba(params: dict[str, Any], x) -> np.ndarray:
        if "constant" in params:
            return np.full(x.shape[0], params["constant"])
        z = x @ np.asarray(params["coef"]) + params["intercept"]
        return 1.0 / (1.0 + np.exp(-z))

    def _fit(self, logits, snr, local_correct, remote_correct) -> None:
        if not self.C > 0:
            raise PolicyError(f"C must be > 0, got {self.C}")
        self.local_model_ = self._fit_one(confidence_features(logits), local_correct, self.C)
        self.remote_model_ = self._fit_one(self._snr_features(logits, snr), remote_correct, self.C)

    def gain(self, mobile_logits: np.ndarray, snr) -> np.ndarray:
        """Estimated P(remote right) - P(local right) per sample."""
        arr = as_logits(mobile_logits)
        snr = _snr_column(snr, arr.shape[0])
        return self._proba(self.remote_model_, self._snr_features(arr, snr)) - self._proba(
            self.local_model_, confidence_features(arr)
        )

    def _predict(self, logits, snr):
        return self.gain(logits, snr) > self.cost_weight

    def _state(self):
        return {"local_model": self.local_model_, "remote_model": self.remote_model_}

    def _load_state(self, state):
        self.local_model_, self.remote_model_ = state["local_model"], state["remote_model"]


@_register
class DimeeTD(TransmissionRule):
    """DIMEE as a transmission rule, with the link state as its input: one DIMEE cluster stage per channel
    state seen in fit (the distinct SNRs), chosen online by the nearest fitted SNR.

    Each stage clusters the mobile exit profile (``profile_features`` of exits 1..m) and gives each cluster
    the better of two candidates by mean reward on its fit rows: answer locally (reward: the local answer is
    right) or transmit (the remote answer under that SNR is right, minus `cost_weight`): the same fitting
    core as :class:`clustering.DimeePolicy` (:func:`clustering.stages.fit_cluster_stage`, k by cross-validated
    reward). Fitting per state rather than with the SNR as a cluster feature keeps the folds honest: the fit
    rows are the same samples repeated over SNRs, so pooled folds would hold a sample's twin out of its own
    fold."""

    def __init__(
        self,
        cost_weight: float = 0.0,
        local: str = "last",
        profile_features: tuple[str, ...] = ("confidence", "entropy", "margin"),
        k_grid: tuple[int, ...] = tuple(range(1, 13)),
        n_folds: int = 3,
        n_init: int = 4,
        random_state: int = 0,
        k_tolerance: float = 0.002,
        shrinkage: float = 0.0,
    ):
        self.cost_weight = cost_weight
        self.local = local
        self.profile_features = profile_features
        self.k_grid = k_grid
        self.n_folds = n_folds
        self.n_init = n_init
        self.random_state = random_state
        self.k_tolerance = k_tolerance
        self.shrinkage = shrinkage

    def _profile(self, logits) -> np.ndarray:
        return exit_profile(logits, None, tuple(self.profile_features))

    def _fit(self, logits, snr, local_correct, remote_correct) -> None:
        settings = ClusterSettings(
            tuple(int(k) for k in self.k_grid), int(self.n_folds), int(self.n_init), int(self.random_state),
            float(self.k_tolerance), float(self.shrinkage),
        )  # fmt: skip
        x = self._profile(logits)
        rewards = np.stack([local_correct, remote_correct - self.cost_weight], axis=1).astype(np.float64)
        self.snrs_ = np.unique(snr)
        self.stages_ = [
            fit_cluster_stage(x[snr == s], rewards[snr == s], np.array([0, 1]), settings, strict=False)[0]
            for s in self.snrs_
        ]

    def _predict(self, logits, snr):
        state = np.abs(snr[:, None] - self.snrs_[None, :]).argmin(axis=1)
        x = self._profile(logits)
        transmit = np.zeros(x.shape[0], dtype=bool)
        for i, stage in enumerate(self.stages_):
            rows = state == i
            if rows.any():
                transmit[rows] = stage.targets(x[rows]) == 1
        return transmit

    def _state(self):
        return {"snrs": self.snrs_.tolist(), "stages": [stage.to_dict() for stage in self.stages_]}

    def _load_state(self, state):
        self.snrs_ = np.asarray(state["snrs"], dtype=np.float64)
        self.stages_ = [RoutingStage.from_dict(stage) for stage in state["stages"]]


def evaluate_td(
    transmit: np.ndarray,
    local_correct: np.ndarray,
    remote_correct: np.ndarray,
    payload_bytes: np.ndarray,
) -> dict[str, float]:
    """Accuracy, offload rate and mean bytes sent per sample of one TD decision vector."""
    transmit = np.asarray(transmit, dtype=bool)
    correct = np.where(transmit, remote_correct, local_correct)
    return {
        "accuracy": float(correct.mean()),
        "offload_rate": float(transmit.mean()),
        "bytes_per_sample": float((np.asarray(payload_bytes, dtype=float) * transmit).mean()),
    }
