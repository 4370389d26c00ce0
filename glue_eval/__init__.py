"""GLUE evaluation for DIMEE: task registry, data loading (local JSON lines or the HF hub), GLUE metrics.

Layering: may import `tiers` and `clustering`, never `services` or `dimee`.
"""

from glue_eval.data import (
    GlueDataError,
    available_splits,
    default_data_dir,
    load_glue_split,
    split_for_calibration,
    subset,
)
from glue_eval.metrics import (
    PRIMARY_METRICS,
    compute_glue_metrics,
    glue_metric_path,
    predictions_from_logits,
    primary_metric,
)
from glue_eval.tasks import TASKS, GlueTask, UnknownTaskError, get_task
from glue_eval.training import TrainConfig, TrainingError, evaluate_run, train_run

__all__ = [
    # tasks
    "GlueTask",
    "TASKS",
    "UnknownTaskError",
    "get_task",
    # data
    "GlueDataError",
    "available_splits",
    "default_data_dir",
    "load_glue_split",
    "split_for_calibration",
    "subset",
    # metrics
    "PRIMARY_METRICS",
    "compute_glue_metrics",
    "glue_metric_path",
    "predictions_from_logits",
    "primary_metric",
    # training and logit caching
    "TrainConfig",
    "TrainingError",
    "evaluate_run",
    "train_run",
]
