"""DIMEE: distributed early-exit inference over mobile, edge and cloud.

The public Python API; the `dimee` command line wraps the same functions.
"""

from clustering import ExitData, reward_scorer
from glue_eval.training import TrainConfig, evaluate_run, train_run
from tiers import CostModel, EarlyExitModel, TierPlan, default_plan

from .api import exit_table, predict_texts, run_demo

__all__ = [
    "CostModel",
    "EarlyExitModel",
    "ExitData",
    "TierPlan",
    "TrainConfig",
    "default_plan",
    "evaluate_run",
    "exit_table",
    "predict_texts",
    "reward_scorer",
    "run_demo",
    "train_run",
]
