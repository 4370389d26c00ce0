"""Exit-confidence profiles from cached per-exit logits.

Every function here works on the cached logits of a run: a float array ``[n_samples, n_exits, n_classes]``
(exit i at index i-1). ``n_classes == 1`` means a regression head (STS-B); there the "logit" is the
predicted value itself.

Regression analogues (documented choice, used by every policy):

* prediction at exit i: the value ``v_i``;
* correct at exit i: ``|v_i - label| <= regression_tolerance`` (default :data:`REGRESSION_TOLERANCE` = 0.5,
  a tenth of the 0-5 STS-B scale);
* confidence at exit i: agreement with the previous exit, ``exp(-|v_i - v_{i-1}| / T_i)`` (T_i the exit's
  temperature, 1 by default). Exit 1 has no previous exit and gets confidence 0 ("no evidence yet"), so a
  threshold rule never answers a regression sample at exit 1. Confidence at exit i reads exits i-1 and i
  only, so a profile over exits 1..k stays causal.
* entropy analogue: ``1 - confidence``; margin analogue: ``confidence``; agreement: ``confidence`` (it is
  already the agreement of consecutive exits).

Agreement (classification): the probability exit i gives to the class exit i-1 predicts, so it is high where
consecutive exits agree with confidence and low where exit i turns away from exit i-1; exit 1 has no previous
exit and gets 0, like a regression confidence.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import CalibrationError, PolicyError

REGRESSION_TOLERANCE: float = 0.5
FEATURES: tuple[str, ...] = ("confidence", "entropy", "margin")


# ---- validation ----------------------------------------------------------------------------------------
def as_logits(logits: np.ndarray, name: str = "logits", allow_empty_exits: bool = False) -> np.ndarray:
    """Check that `logits` is a finite numeric [n, exits, classes] array; return it as float64."""
    arr = np.asarray(logits)
    if arr.ndim != 3:
        raise PolicyError(
            f"{name} must be a 3-d array [n_samples, n_exits, n_classes] (n_classes = 1 for regression); "
            f"got shape {arr.shape}"
        )
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise PolicyError(f"{name} must be numeric, got dtype {arr.dtype}")
    if (arr.shape[1] < 1 and not allow_empty_exits) or arr.shape[2] < 1:
        raise PolicyError(f"{name} need at least one exit and one class; got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        bad = np.unique(np.nonzero(~np.isfinite(arr))[0])
        raise PolicyError(f"{name} contain NaN or inf values (sample(s) {bad[:10].tolist()})")
    return arr


def is_regression(logits: np.ndarray) -> bool:
    """A single output per exit means a regression head."""
    return np.shape(logits)[-1] == 1


def check_labels(labels: np.ndarray, n_samples: int, n_classes: int) -> np.ndarray:
    """Labels [n]: integer class ids in 0..C-1 for classification, finite floats for regression."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n_samples:
        raise PolicyError(f"labels must be a 1-d array of {n_samples} values (one per sample); got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise PolicyError(f"labels must be numeric, got dtype {arr.dtype}")
    values = arr.astype(np.float64)
    if not np.isfinite(values).all():
        raise PolicyError("labels contain NaN or inf values")
    if n_classes == 1:
        return values
    if not np.all(values == np.round(values)) or (values.size and (values.min() < 0 or values.max() >= n_classes)):
        raise PolicyError(f"classification labels must be integers in 0..{n_classes - 1}")
    return values.astype(np.int64)


def check_temperatures(temperatures: Sequence[float] | np.ndarray | float | None, n_exits: int) -> np.ndarray | None:
    """None, a scalar (same for every exit) or one positive finite temperature per exit -> [n_exits] or None."""
    if temperatures is None:
        return None
    arr = np.asarray(temperatures, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n_exits, float(arr))
    if arr.ndim != 1 or arr.shape[0] != n_exits:
        raise CalibrationError(f"expected one temperature per exit ({n_exits}); got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise CalibrationError(f"temperatures must be finite and > 0; got {arr.tolist()}")
    return arr


def _exit_slice(exits: int | slice | None, n_exits: int) -> slice:
    """`exits`: None (all), k (exits 1..k) or a Python slice over the 0-based exit axis."""
    if exits is None:
        return slice(0, n_exits)
    if isinstance(exits, slice):
        start, stop, step = exits.indices(n_exits)
        if step != 1 or stop <= start:
            raise PolicyError(f"exit slice {exits} must select a contiguous, non-empty range of the {n_exits} exits")
        return slice(start, stop)
    if isinstance(exits, (int, np.integer)) and not isinstance(exits, bool):
        if not 1 <= exits <= n_exits:
            raise PolicyError(f"exits={exits} is outside 1..{n_exits}")
        return slice(0, int(exits))
    raise PolicyError(f"exits must be None, an int k (exits 1..k) or a slice; got {exits!r}")


# ---- probabilities and per-exit scores -----------------------------------------------------------------
def scale_logits(logits: np.ndarray, temperatures: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Divide each exit's logits by its temperature (identity without temperatures)."""
    arr = as_logits(logits)
    temps = check_temperatures(temperatures, arr.shape[1])
    return arr if temps is None else arr / temps[None, :, None]


def softmax(logits: np.ndarray, temperatures: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Class probabilities [n, exits, classes] (after per-exit temperatures if given)."""
    z = scale_logits(logits, temperatures)
    if z.shape[2] == 1:
        raise PolicyError("softmax needs classification logits (n_classes >= 2); these are regression outputs")
    z = z - z.max(axis=2, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=2, keepdims=True)


def predictions(logits: np.ndarray) -> np.ndarray:
    """Per-exit predictions [n, exits]: class id (int) for classification, value (float) for regression."""
    arr = as_logits(logits)
    if is_regression(arr):
        return arr[:, :, 0]
    return arr.argmax(axis=2)


def _regression_confidence(values: np.ndarray, temps: np.ndarray | None) -> np.ndarray:
    delta = np.zeros_like(values)
    delta[:, 1:] = np.abs(np.diff(values, axis=1))
    if temps is not None:
        delta = delta / temps[None, :]
    conf = np.exp(-delta)
    conf[:, 0] = 0.0
    return conf


def confidence(logits: np.ndarray, temperatures: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Max softmax probability per exit [n, exits]; regression: agreement with the previous exit (module doc)."""
    arr = as_logits(logits)
    if is_regression(arr):
        return _regression_confidence(arr[:, :, 0], check_temperatures(temperatures, arr.shape[1]))
    return softmax(arr, temperatures).max(axis=2)


def entropy(logits: np.ndarray, temperatures: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Softmax entropy divided by log(n_classes), in [0, 1] per exit; regression: 1 - confidence."""
    arr = as_logits(logits)
    if is_regression(arr):
        return 1.0 - confidence(arr, temperatures)
    p = softmax(arr, temperatures)
    h = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=2)
    return np.clip(h / np.log(arr.shape[2]), 0.0, 1.0)


def margin(logits: np.ndarray, temperatures: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Top-1 minus top-2 probability per exit [n, exits]; regression: confidence."""
    arr = as_logits(logits)
    if is_regression(arr):
        return confidence(arr, temperatures)
    p = np.sort(softmax(arr, temperatures), axis=2)
    return p[:, :, -1] - p[:, :, -2]


def agreement(logits: np.ndarray, temperatures: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Probability at exit i of exit i-1's predicted class, [n, exits] (0 at exit 1); regression: confidence."""
    arr = as_logits(logits)
    if is_regression(arr):
        return confidence(arr, temperatures)
    p = softmax(arr, temperatures)
    out = np.zeros(arr.shape[:2])
    previous = arr[:, :-1].argmax(axis=2)
    out[:, 1:] = np.take_along_axis(p[:, 1:], previous[:, :, None], axis=2)[:, :, 0]
    return out


_SCORES = {"confidence": confidence, "entropy": entropy, "margin": margin, "agreement": agreement}


def exit_scores(logits: np.ndarray, kind: str, temperatures: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """One of 'confidence', 'entropy', 'margin', 'agreement' per exit, [n, exits]."""
    if kind not in _SCORES:
        raise PolicyError(f"unknown profile feature {kind!r}; expected one of {', '.join(_SCORES)}")
    return _SCORES[kind](logits, temperatures)


def exit_profile(
    logits: np.ndarray,
    exits: int | slice | None = None,
    features: Sequence[str] = FEATURES,
    temperatures: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Profile matrix [n, k * len(features)] over the selected exits.

    `exits`: None (all), an int k (exits 1..k, the mobile profile for k = m) or a slice over the 0-based exit
    axis. `temperatures` has one entry per exit of `logits`. Columns are exit-major:
    ``[exit_a f_1, exit_a f_2, ..., exit_b f_1, ...]``. Scores are computed on exits up to the slice's end
    only, so the profile never reads a later exit.
    """
    arr = as_logits(logits)
    if isinstance(features, str):
        features = (features,)
    if len(features) == 0:
        raise PolicyError("exit_profile needs at least one feature")
    sel = _exit_slice(exits, arr.shape[1])
    temps = check_temperatures(temperatures, arr.shape[1])
    head = arr[:, : sel.stop]
    head_t = None if temps is None else temps[: sel.stop]
    stacked = np.stack([exit_scores(head, f, head_t)[:, sel.start :] for f in features], axis=2)
    return stacked.reshape(arr.shape[0], stacked.shape[1] * stacked.shape[2])


# ---- correctness -----------------------------------------------------------------------------------------
def per_exit_correct(
    logits: np.ndarray, labels: np.ndarray, regression_tolerance: float = REGRESSION_TOLERANCE
) -> np.ndarray:
    """Bool [n, exits]: is exit i's prediction right? Regression: within `regression_tolerance` of the label."""
    arr = as_logits(logits)
    y = check_labels(labels, arr.shape[0], arr.shape[2])
    preds = predictions(arr)
    if is_regression(arr):
        if not np.isfinite(regression_tolerance) or regression_tolerance < 0:
            raise PolicyError(f"regression_tolerance must be finite and >= 0, got {regression_tolerance}")
        return np.abs(preds - y[:, None]) <= regression_tolerance
    return preds == y[:, None]
