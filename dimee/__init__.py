"""DIMEE: distributed early-exit inference over mobile, edge and cloud.

The public Python API; the `dimee` command line wraps the same functions. The whole job from here:
`train` (a GLUE task or your own data), `evaluate`, `predict`, `compare_policies`, `sweep`, `calibrate`,
`fit_policy` and `serve` (the three tiers as local services); the older names (`train_run`, `evaluate_run`,
`predict_texts`, ...) stay. Names are imported on first use (``tiers.lazy``): `import dimee` and the command
line's ``--help`` load neither torch nor transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiers.lazy import lazy_exports

#: public name -> "module:attribute" it is
_EXPORTS: dict[str, str] = {
    "CostModel": "tiers:CostModel",
    "EarlyExitModel": "tiers:EarlyExitModel",
    "ExitData": "clustering:ExitData",
    "TierPlan": "tiers:TierPlan",
    "TrainConfig": "glue_eval.train_config:TrainConfig",
    "calibrate": "glue_eval.calibration:calibrate_run",
    "compare_policies": "glue_eval.report:compare_policies",
    "default_plan": "tiers:default_plan",
    "evaluate": "glue_eval.training:evaluate_run",
    "evaluate_run": "glue_eval.training:evaluate_run",
    "exit_table": "dimee.api:exit_table",
    "fit_policy": "glue_eval.report:fit_run_policy",
    "predict": "dimee.api:predict_texts",
    "predict_texts": "dimee.api:predict_texts",
    "reward_scorer": "clustering:reward_scorer",
    "run_demo": "dimee.api:run_demo",
    "serve": "services:start_all",
    "sweep": "glue_eval.sweep:sweep",
    "train": "dimee.api:train",
    "train_run": "glue_eval.training:train_run",
}

if TYPE_CHECKING:  # static tools see the eager imports
    from clustering import ExitData, reward_scorer  # noqa: F401
    from glue_eval.calibration import calibrate_run as calibrate  # noqa: F401
    from glue_eval.report import compare_policies  # noqa: F401
    from glue_eval.report import fit_run_policy as fit_policy  # noqa: F401
    from glue_eval.sweep import sweep  # noqa: F401
    from glue_eval.training import TrainConfig, evaluate_run, train_run  # noqa: F401
    from glue_eval.training import evaluate_run as evaluate  # noqa: F401
    from services import start_all as serve  # noqa: F401
    from tiers import CostModel, EarlyExitModel, TierPlan, default_plan  # noqa: F401

    from .api import exit_table, predict_texts, run_demo, train  # noqa: F401
    from .api import predict_texts as predict  # noqa: F401

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
