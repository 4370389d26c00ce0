"""Per-exit temperature scaling, NLL, expected calibration error and reliability-curve data (no plotting).

Temperature scaling divides exit i's logits by T_i > 0. Each T_i is fitted by minimising the NLL on a
validation split with L-BFGS(-B) over log T_i (so T stays positive), starting from T = 1.5 as in the
calibration-aided offloading paper's code. ``fit_on="all"`` fits every exit on all samples;
``fit_on="exiting"`` fits exit i on the samples that exit there (give ``exits`` to fit), falling back to all
samples when fewer than ``min_samples`` exit there (recorded in ``fallback_exits_``).
Classification only: regression heads have no softmax to calibrate.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp
from sklearn.base import BaseEstimator

from .errors import CalibrationError, PolicyError
from .profiles import as_logits, check_labels, check_temperatures, is_regression

FIT_ON: tuple[str, ...] = ("all", "exiting")


def _as_probs(probs: np.ndarray) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim not in (2, 3) or arr.shape[-1] < 2:
        raise CalibrationError(
            f"probabilities must be [n, classes] or [n, exits, classes] with >= 2 classes; got {arr.shape}"
        )
    if not np.isfinite(arr).all() or (arr < -1e-9).any() or (arr > 1 + 1e-9).any():
        raise CalibrationError("probabilities must be finite and within [0, 1]")
    return arr


def _bins(confidences: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index per confidence; bins (lo, hi] of equal width, 0 falling in the first."""
    if int(n_bins) < 1:
        raise CalibrationError(f"n_bins must be >= 1, got {n_bins}")
    return np.clip(np.ceil(confidences * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Data for a reliability diagram from probabilities [n, C]: per equal-width confidence bin its bounds,
    sample count, mean confidence and accuracy (NaN where the bin is empty)."""
    arr = _as_probs(probs)
    if arr.ndim != 2:
        raise CalibrationError("reliability_curve takes one exit's probabilities [n, classes]")
    y = check_labels(labels, arr.shape[0], arr.shape[1])
    conf = arr.max(axis=1)
    hit = (arr.argmax(axis=1) == y).astype(np.float64)
    index = _bins(conf, n_bins)
    count = np.bincount(index, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=hit, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "count": count,
        "confidence": mean_conf,
        "accuracy": accuracy,
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float | np.ndarray:
    """ECE = sum over bins of (bin share) * |accuracy - mean confidence|. [n, C] -> float; [n, L, C] -> [L]."""
    arr = _as_probs(probs)
    if arr.ndim == 3:
        return np.array([expected_calibration_error(arr[:, i], labels, n_bins) for i in range(arr.shape[1])])
    if arr.shape[0] == 0:
        raise CalibrationError("ECE of zero samples is undefined")
    curve = reliability_curve(arr, labels, n_bins)
    filled = curve["count"] > 0
    gaps = np.abs(curve["accuracy"][filled] - curve["confidence"][filled])
    return float((curve["count"][filled] * gaps).sum() / arr.shape[0])


def _classification_logits(logits: np.ndarray) -> np.ndarray:
    arr = np.asarray(logits)
    squeeze = arr.ndim == 2
    arr = as_logits(arr[:, None, :] if squeeze else arr)
    if is_regression(arr):
        raise CalibrationError(
            "temperature scaling and NLL need classification logits (regression heads have one output)"
        )
    return arr


def negative_log_likelihood(
    logits: np.ndarray, labels: np.ndarray, temperatures: Sequence[float] | float | None = None
) -> float | np.ndarray:
    """Mean NLL of the true class. [n, C] -> float; [n, L, C] -> [L] (after per-exit temperatures)."""
    squeeze = np.ndim(logits) == 2
    arr = _classification_logits(logits)
    y = check_labels(labels, arr.shape[0], arr.shape[2])
    temps = check_temperatures(temperatures, arr.shape[1])
    z = arr if temps is None else arr / temps[None, :, None]
    nll = (logsumexp(z, axis=2) - z[np.arange(arr.shape[0]), :, y]).mean(axis=0)
    return float(nll[0]) if squeeze else nll


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, init: float = 1.5, bounds: tuple[float, float] = (0.01, 100.0)
) -> float:
    """The temperature minimising the NLL of one exit's logits [n, C] (L-BFGS-B over u = log T)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    true = z[np.arange(z.shape[0]), y]

    def objective(u: np.ndarray) -> tuple[float, np.ndarray]:
        s = np.exp(-u[0])  # 1 / T
        scaled = s * z
        lse = logsumexp(scaled, axis=1)
        p = np.exp(scaled - lse[:, None])
        nll = float((lse - s * true).mean())
        d_s = float(((p * z).sum(axis=1) - true).mean())
        return nll, np.array([-s * d_s])

    result = minimize(
        objective,
        x0=np.array([np.log(init)]),
        jac=True,
        method="L-BFGS-B",
        bounds=[(np.log(bounds[0]), np.log(bounds[1]))],
    )
    return float(np.exp(result.x[0]))


class TemperatureScaler(BaseEstimator):
    """One temperature per exit (module doc). Fitted: ``temperatures_`` [L], ``n_samples_`` (fit samples per
    exit), ``fallback_exits_`` (1-based exits fitted on all samples for lack of exiting ones)."""

    def __init__(self, init_temperature: float = 1.5, fit_on: str = "all", min_samples: int = 20):
        self.init_temperature = init_temperature
        self.fit_on = fit_on
        self.min_samples = min_samples

    def fit(self, logits: np.ndarray, labels: np.ndarray, exits: np.ndarray | None = None) -> "TemperatureScaler":
        arr = _classification_logits(logits)
        n, num_layers, n_classes = arr.shape
        if n == 0:
            raise CalibrationError("cannot fit temperatures on zero samples")
        y = check_labels(labels, n, n_classes)
        check_temperatures(self.init_temperature, 1)
        if self.fit_on not in FIT_ON:
            raise CalibrationError(f"fit_on={self.fit_on!r} is not one of {', '.join(map(repr, FIT_ON))}")
        if self.fit_on == "exiting":
            if exits is None:
                raise CalibrationError("fit_on='exiting' needs the exit of every sample (exits=...)")
            chosen = np.asarray(exits, dtype=np.int64)
            if chosen.shape != (n,) or chosen.min() < 1 or chosen.max() > num_layers:
                raise CalibrationError(f"exits must be {n} values in 1..{num_layers}")
        temps, counts, fallback = [], [], []
        for i in range(num_layers):
            mask = np.ones(n, dtype=bool) if self.fit_on == "all" else chosen == i + 1
            if self.fit_on == "exiting" and mask.sum() < self.min_samples:
                fallback.append(i + 1)
                mask = np.ones(n, dtype=bool)
            temps.append(fit_temperature(arr[mask, i], y[mask], float(self.init_temperature)))
            counts.append(int(mask.sum()))
        self.temperatures_ = np.array(temps)
        self.n_samples_ = counts
        self.fallback_exits_ = fallback
        return self

    def _check_fitted(self, num_layers: int | None = None) -> None:
        if not hasattr(self, "temperatures_"):
            raise CalibrationError("TemperatureScaler is not fitted yet")
        if num_layers is not None and num_layers != self.temperatures_.shape[0]:
            raise CalibrationError(f"fitted on {self.temperatures_.shape[0]} exits; got logits with {num_layers}")

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Logits [n, L, C] divided by each exit's temperature."""
        arr = _classification_logits(logits)
        self._check_fitted(arr.shape[1])
        return arr / self.temperatures_[None, :, None]

    def transform(self, logits: np.ndarray) -> np.ndarray:
        return self.apply(logits)

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        z = self.apply(logits)
        return np.exp(z - logsumexp(z, axis=2, keepdims=True))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"params": self.get_params(), "temperatures": None}
        if hasattr(self, "temperatures_"):
            data.update(
                temperatures=self.temperatures_.tolist(), n_samples=self.n_samples_, fallback_exits=self.fallback_exits_
            )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TemperatureScaler":
        scaler = cls(**data.get("params", {}))
        if data.get("temperatures") is not None:
            temps = check_temperatures(data["temperatures"], len(data["temperatures"]))
            scaler.temperatures_ = temps
            scaler.n_samples_ = list(data.get("n_samples", []))
            scaler.fallback_exits_ = list(data.get("fallback_exits", []))
        return scaler


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, temperatures: Sequence[float], n_bins: int = 15
) -> dict[str, list[float]]:
    """Per exit: ECE and NLL before and after the temperatures (lists over exits 1..L)."""
    arr = _classification_logits(logits)
    temps = check_temperatures(temperatures, arr.shape[1])
    if temps is None:
        raise PolicyError("calibration_report needs temperatures")

    def probs(z: np.ndarray) -> np.ndarray:
        return np.exp(z - logsumexp(z, axis=2, keepdims=True))

    scaled = arr / temps[None, :, None]
    return {
        "temperatures": temps.tolist(),
        "ece_before": expected_calibration_error(probs(arr), labels, n_bins).tolist(),
        "ece_after": expected_calibration_error(probs(scaled), labels, n_bins).tolist(),
        "nll_before": negative_log_likelihood(arr, labels).tolist(),
        "nll_after": negative_log_likelihood(arr, labels, temps).tolist(),
    }
