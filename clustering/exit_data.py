"""`ExitData`: cached per-exit logits and per-sample features in one X that scikit-learn splits by rows.

A policy's `fit`, `predict`, `predict_outcome` and `score` take the logits [n, L, C] and, separately,
optional features [n, d] (the embedding-layer feature DIMEE can route on). scikit-learn's model selection
(`GridSearchCV`, `cross_val_score`, ...) splits only X and y, so features passed apart would not follow the
folds. ``ExitData(logits, features)`` carries both; it has ``shape`` and ``len`` (the number of samples)
and row indexing (``data[rows]`` with an index array, a boolean mask or a slice gives a new ExitData), which
is what `sklearn.utils.indexable` and `sklearn.utils._indexing._safe_indexing` use to split it.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .errors import PolicyError
from .profiles import as_logits


class ExitData:
    """Cached per-exit `logits` [n, L, C] (C = 1 for regression) with optional `features` [n, d].

    ``X = ExitData(val.logits, val.embedding)`` can be passed as X to a policy's ``fit`` / ``predict`` /
    ``predict_outcome`` / ``score`` (then without a separate ``features=``) and to scikit-learn's model
    selection, which indexes it by rows. Both arrays are validated here (3-d finite numeric logits, 2-d finite
    numeric features, the same number of rows).
    """

    __slots__ = ("logits", "features")

    def __init__(self, logits: np.ndarray, features: np.ndarray | None = None):
        arr = as_logits(logits)
        feats = None
        if features is not None:
            feats = np.asarray(features)
            if feats.ndim != 2:
                raise PolicyError(f"ExitData features must be a 2-d array [n, d]; got shape {feats.shape}")
            if feats.dtype == bool or not np.issubdtype(feats.dtype, np.number):
                raise PolicyError(f"ExitData features must be numeric, got dtype {feats.dtype}")
            if feats.shape[0] != arr.shape[0]:
                raise PolicyError(
                    f"ExitData logits and features must have one row per sample each: "
                    f"{arr.shape[0]} rows of logits, {feats.shape[0]} rows of features"
                )
            feats = feats.astype(np.float64, copy=False)
            if not np.isfinite(feats).all():
                raise PolicyError("ExitData features contain NaN or inf values")
        self.logits = arr
        self.features = feats

    @property
    def shape(self) -> tuple[int, ...]:
        """The logits' shape (n_samples, n_exits, n_classes); scikit-learn reads n_samples from it."""
        return self.logits.shape

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def __getitem__(self, key: Any) -> "ExitData":
        """Rows `key` (an int, a slice, an integer index array or list, a boolean mask) as a new ExitData; an
        int keeps the sample axis (one row). `data[rows, ...]` (how `_safe_indexing` indexes arrays) is the
        same as `data[rows]`."""
        if isinstance(key, tuple):
            if len(key) == 2 and key[1] is Ellipsis:
                key = key[0]
            else:
                raise PolicyError("ExitData is indexed by rows only: data[rows] or data[rows, ...]")
        if isinstance(key, (numbers.Integral, np.integer)) and not isinstance(key, (bool, np.bool_)):
            n = len(self)
            if not -n <= int(key) < n:
                raise IndexError(f"sample {key} is out of range for {n} samples")
            key = [int(key)]
        elif not isinstance(key, slice):
            key = np.asarray(key)
            if key.ndim != 1 or not (key.dtype == bool or np.issubdtype(key.dtype, np.integer) or key.size == 0):
                raise PolicyError(f"ExitData rows must be a slice, an int, or a 1-d integer or boolean array; got {key!r}")
            if key.size == 0:
                key = key.astype(np.int64)
        data = ExitData.__new__(ExitData)
        data.logits = self.logits[key]
        data.features = None if self.features is None else self.features[key]
        return data

    def __repr__(self) -> str:
        width = "no features" if self.features is None else f"features of width {self.features.shape[1]}"
        n, exits, classes = self.shape
        return f"ExitData({n} samples, {exits} exits, {classes} output(s), {width})"


def unpack_exit_data(X: Any, features: np.ndarray | None = None) -> tuple[Any, np.ndarray | None]:
    """(logits, features) from what a policy was given: an ExitData (then `features` must be None), or plain
    logits with `features` as given."""
    if isinstance(X, ExitData):
        if features is not None:
            raise PolicyError(
                "X is an ExitData, which carries its own features: pass features inside it "
                "(ExitData(logits, features)), not also as features="
            )
        return X.logits, X.features
    return X, features
