"""GLUE evaluation for DIMEE: task registry, data loading (local JSON lines or the HF hub), GLUE metrics.

Layering: may import `tiers` and `clustering`, never `services` or `dimee`. Names are imported on first use
(``tiers.lazy``), so `glue_eval.train_config` or `glue_eval.tasks` load no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiers.lazy import lazy_exports

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "GlueTask": "tasks",
    "TASKS": "tasks",
    "UnknownTaskError": "tasks",
    "get_task": "tasks",
    "GlueDataError": "data",
    "available_splits": "data",
    "default_data_dir": "data",
    "load_glue_split": "data",
    "split_for_calibration": "data",
    "subset": "data",
    "PRIMARY_METRICS": "metrics",
    "compute_glue_metrics": "metrics",
    "glue_metric_path": "metrics",
    "predictions_from_logits": "metrics",
    "primary_metric": "metrics",
    "TrainConfig": "train_config",
    "TrainingError": "train_config",
    "evaluate_run": "training",
    "train_run": "training",
}

if TYPE_CHECKING:  # static tools see the eager imports
    from glue_eval.tasks import GlueTask, TASKS, UnknownTaskError, get_task  # noqa: F401
    from glue_eval.data import GlueDataError, available_splits, default_data_dir, load_glue_split, split_for_calibration, subset  # noqa: F401
    from glue_eval.metrics import PRIMARY_METRICS, compute_glue_metrics, glue_metric_path, predictions_from_logits, primary_metric  # noqa: F401
    from glue_eval.train_config import TrainConfig, TrainingError  # noqa: F401
    from glue_eval.training import evaluate_run, train_run  # noqa: F401

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
