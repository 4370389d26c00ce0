"""Exit policies on cached per-exit logits: profiles, the DIMEE policy, baselines, calibration, evaluation.

Everything here works on arrays [n_samples, L, n_classes] of cached logits (n_classes = 1 for regression)
and labels [n]; nothing runs a model. Imports only `tiers` below it.
"""

from .base import (
    ExitPolicy,
    policy_from_dict,
    register_policy,
    registered_policies,
    tier_index,
)
from .routing import Outcome, PathTable, chain_actions, follow_targets, outcome_of_chain_exits, path_table, simulate
from .baselines import (
    AllCloudPolicy,
    AllEdgePolicy,
    AllMobilePolicy,
    FixedExitPolicy,
    OraclePolicy,
    PatiencePolicy,
    RandomTierPolicy,
    ThresholdPolicy,
    patience_counters,
    select_setting,
)
from .calibration import (
    TemperatureScaler,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_curve,
)
from .dimee import DimeePolicy
from .stages import RoutingStage, clear_cluster_cache
from .errors import CalibrationError, PolicyError
from .evaluation import evaluate_exits, evaluate_policy, offload_counts, sample_costs, tier_counts, tier_shares
from .profiles import (
    FEATURES,
    REGRESSION_TOLERANCE,
    check_temperatures,
    confidence,
    entropy,
    exit_profile,
    exit_scores,
    is_regression,
    margin,
    per_exit_correct,
    predictions,
    scale_logits,
    softmax,
)
from .transmission import (
    ConfidenceTD,
    LogisticTD,
    SNRShiftedTD,
    TransmissionRule,
    evaluate_td,
    transmission_rule_from_dict,
)
from .synthetic import Group, SyntheticExits, make_exit_logits

__all__ = [
    "ConfidenceTD",
    "LogisticTD",
    "SNRShiftedTD",
    "TransmissionRule",
    "evaluate_td",
    "transmission_rule_from_dict",
    "FEATURES",
    "REGRESSION_TOLERANCE",
    "AllCloudPolicy",
    "AllEdgePolicy",
    "AllMobilePolicy",
    "CalibrationError",
    "DimeePolicy",
    "ExitPolicy",
    "FixedExitPolicy",
    "Group",
    "OraclePolicy",
    "PatiencePolicy",
    "PolicyError",
    "RandomTierPolicy",
    "RoutingStage",
    "clear_cluster_cache",
    "SyntheticExits",
    "TemperatureScaler",
    "ThresholdPolicy",
    "calibration_report",
    "check_temperatures",
    "confidence",
    "entropy",
    "evaluate_exits",
    "evaluate_policy",
    "exit_profile",
    "exit_scores",
    "expected_calibration_error",
    "Outcome",
    "PathTable",
    "chain_actions",
    "follow_targets",
    "outcome_of_chain_exits",
    "path_table",
    "simulate",
    "fit_temperature",
    "is_regression",
    "make_exit_logits",
    "margin",
    "negative_log_likelihood",
    "offload_counts",
    "patience_counters",
    "per_exit_correct",
    "policy_from_dict",
    "predictions",
    "register_policy",
    "registered_policies",
    "reliability_curve",
    "sample_costs",
    "scale_logits",
    "select_setting",
    "softmax",
    "tier_counts",
    "tier_index",
    "tier_shares",
]
