"""GLUE metrics exactly as GLUE (and HF's `glue` metric) define them, computed with scikit-learn and scipy.

- accuracy: sst2, mnli, qnli, rte, wnli
- accuracy and F1 of the positive class (label 1): mrpc, qqp
- Matthews correlation: cola
- Pearson and Spearman correlation (keys "pearson", "spearmanr", as in HF's `glue` metric): stsb
- a task that is not GLUE (`glue_eval.tasks.custom_task`): accuracy and macro F1 ("macro_f1"), or Pearson and
  Spearman for regression

Every function takes a GLUE task name or a `GlueTask` (a run's own task: `glue_eval.tasks.run_task(info)`).

`glue_metric/glue_metric.py` is the same computation packaged for `evaluate.load(glue_metric_path(), task)`;
the tests check that both agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from glue_eval.tasks import GlueTask, get_task

#: The single number per task used in tables. It follows the GLUE leaderboard: where GLUE reports two numbers
#: (MRPC/QQP: F1 and accuracy; STS-B: Pearson and Spearman) we take the first one it lists (F1, Pearson);
#: CoLA's only metric is Matthews correlation; all other tasks use accuracy (MNLI: matched accuracy).
PRIMARY_METRICS: Mapping[str, str] = MappingProxyType(
    {
        "cola": "matthews_correlation",
        "sst2": "accuracy",
        "mrpc": "f1",
        "qqp": "f1",
        "stsb": "pearson",
        "mnli": "accuracy",
        "qnli": "accuracy",
        "rte": "accuracy",
        "wnli": "accuracy",
    }
)


def primary_metric(task: str | GlueTask) -> str:
    """Key (in `compute_glue_metrics`'s result) of the task's headline number; see `PRIMARY_METRICS` (a task
    that names its own, `GlueTask.primary`, gets that one)."""
    t = get_task(task)
    return t.primary or PRIMARY_METRICS.get(t.name) or t.metric_names[0]


def glue_metric_path() -> str:
    """Folder to pass to `evaluate.load(glue_metric_path(), task)`."""
    return str(Path(__file__).resolve().parent / "glue_metric")


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of a list, array or torch tensor (any device, with or without grad)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def predictions_from_logits(task: str | GlueTask, logits: Any) -> np.ndarray:
    """Logits of shape [..., num_labels] -> predictions of shape [...].

    Classification: argmax over the last axis (int64). Regression (stsb, num_labels 1): the raw value.
    """
    t = get_task(task)
    arr = _to_numpy(logits)
    if arr.ndim == 0 or arr.shape[-1] != t.num_labels:
        raise ValueError(f"{t.name}: logits must have shape [..., {t.num_labels}], got {arr.shape}")
    if t.is_regression:
        return arr[..., 0]
    return arr.argmax(axis=-1).astype(np.int64)


def _as_label_vector(x: Any, regression: bool, what: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim != 1:
        hint = " (pass logits through predictions_from_logits first)" if arr.ndim == 2 else ""
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}{hint}")
    if regression:
        return arr.astype(np.float64)
    if arr.dtype.kind == "f" and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{what} must be integer class ids for a classification task")
    return arr.astype(np.int64)


def compute_glue_metrics(task: str | GlueTask, predictions: Any, references: Any) -> dict[str, float]:
    """GLUE metrics of 1-D `predictions` against `references`; keys are `get_task(task).metric_names`.

    Classification predictions are class ids (use `predictions_from_logits`); stsb predictions are floats.
    A degenerate case (e.g. constant stsb predictions) gives nan, as scipy does.
    """
    t = get_task(task)
    preds = _as_label_vector(predictions, t.is_regression, "predictions")
    refs = _as_label_vector(references, t.is_regression, "references")
    if preds.shape != refs.shape:
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if len(preds) == 0:
        raise ValueError("no predictions to score")
    out: dict[str, float] = {}
    for name in t.metric_names:
        if name == "accuracy":
            out[name] = float((preds == refs).mean())
        elif name == "f1":
            out[name] = float(f1_score(refs, preds, pos_label=1, average="binary", zero_division=0.0))
        elif name == "macro_f1":
            out[name] = float(f1_score(refs, preds, average="macro", zero_division=0.0))  # as sklearn/HF `f1`
        elif name == "matthews_correlation":
            out[name] = float(matthews_corrcoef(refs, preds))
        elif name == "pearson":
            out[name] = float(pearsonr(preds, refs)[0])
        elif name == "spearmanr":
            out[name] = float(spearmanr(preds, refs)[0])
        else:  # pragma: no cover - the registry only uses the names above
            raise ValueError(f"unknown metric {name!r}")
    return out
