"""DIMEE: distributed early-exit inference over mobile, edge and cloud.

The public Python API; the `dimee` command line wraps the same functions. The whole job from here:
`train` (a GLUE task or your own data), `evaluate`, `predict`, `compare_policies`, `sweep`, `calibrate`,
`fit_policy` and `serve` (the three tiers as local services); the older names (`train_run`, `evaluate_run`,
`predict_texts`, ...) stay.
"""

from clustering import ExitData, reward_scorer
from glue_eval.calibration import calibrate_run as calibrate
from glue_eval.report import compare_policies
from glue_eval.report import fit_run_policy as fit_policy
from glue_eval.sweep import sweep
from glue_eval.training import TrainConfig, evaluate_run, train_run
from services import start_all as serve
from tiers import CostModel, EarlyExitModel, TierPlan, default_plan

from .api import exit_table, predict_texts, run_demo, train

evaluate = evaluate_run
predict = predict_texts

__all__ = [
    "CostModel",
    "EarlyExitModel",
    "ExitData",
    "TierPlan",
    "TrainConfig",
    "calibrate",
    "compare_policies",
    "default_plan",
    "evaluate",
    "evaluate_run",
    "exit_table",
    "fit_policy",
    "predict",
    "predict_texts",
    "reward_scorer",
    "run_demo",
    "serve",
    "sweep",
    "train",
    "train_run",
]
