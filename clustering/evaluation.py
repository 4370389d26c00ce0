"""Offline evaluation of exit decisions on cached logits: accuracy, cost, tier shares, offloads.

Accuracy here is the fraction of samples whose chosen exit is right (for regression: within the tolerance).
The task's GLUE metric (F1, Matthews, Pearson/Spearman) is computed by a higher layer from the returned
``predictions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tiers import TIERS, CostModel, TierPlan

from .errors import PolicyError
from .exit_data import unpack_exit_data
from .profiles import REGRESSION_TOLERANCE, as_logits, check_labels, per_exit_correct, predictions
from .routing import Outcome, outcome_of_chain_exits

if TYPE_CHECKING:
    from .base import ExitPolicy


def check_exits(exits: np.ndarray, n_samples: int, num_layers: int) -> np.ndarray:
    """1-based exit per sample, each in 1..L -> int64 [n]."""
    arr = np.asarray(exits)
    if arr.ndim != 1 or arr.shape[0] != n_samples:
        raise PolicyError(f"exits must be a 1-d array of {n_samples} exit indices; got shape {arr.shape}")
    if arr.size and (not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr))):
        raise PolicyError("exits must be integers")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 1 or arr.max() > num_layers):
        raise PolicyError(f"exits must lie in 1..{num_layers}; got values {arr.min()}..{arr.max()}")
    return arr


def tier_counts(exits: np.ndarray, plan: TierPlan) -> dict[str, int]:
    """How many samples each tier answers."""
    tiers = plan.exit_tiers()[np.asarray(exits, dtype=np.int64) - 1]
    counts = np.bincount(tiers, minlength=3)
    return {tier: int(c) for tier, c in zip(TIERS, counts)}


def tier_shares(exits: np.ndarray, plan: TierPlan) -> dict[str, float]:
    """Fraction of samples each tier answers (zeros for an empty input)."""
    counts = tier_counts(exits, plan)
    n = max(1, sum(counts.values()))
    return {tier: c / n for tier, c in counts.items()}


def offload_counts(exits: np.ndarray, plan: TierPlan) -> dict[str, int]:
    """Samples that crossed each hop: mobile->edge (exit > m), edge->cloud (exit > e)."""
    arr = np.asarray(exits, dtype=np.int64)
    return {"mobile_edge": int((arr > plan.mobile_end).sum()), "edge_cloud": int((arr > plan.edge_end).sum())}


def sample_costs(
    exits: np.ndarray, plan: TierPlan, cost_model: CostModel, costs: np.ndarray | None = None
) -> np.ndarray:
    """Cost of each sample's answer [n]; `costs` overrides the cost model's per-exit costs ([L] or [n, L])."""
    arr = np.asarray(exits, dtype=np.int64)
    table = cost_model.exit_costs(plan) if costs is None else np.asarray(costs, dtype=np.float64)
    if table.ndim == 1:
        if table.shape[0] != plan.num_layers:
            raise PolicyError(f"costs must have one entry per exit ({plan.num_layers}); got shape {table.shape}")
        return table[arr - 1]
    if table.shape != (arr.shape[0], plan.num_layers):
        raise PolicyError(f"per-sample costs must have shape ({arr.shape[0]}, {plan.num_layers}); got {table.shape}")
    return table[np.arange(arr.shape[0]), arr - 1]


def outcome_costs(
    outcome: Outcome,
    plan: TierPlan,
    cost_model: CostModel,
    token_counts: np.ndarray | None = None,
    hidden_size: int = 0,
    encoding: str = "fp32",
) -> np.ndarray:
    """Normalised cost of each sample's answer [n]: its route, the layers its answering stop ran, and, when
    a link rate is set and token counts are given, the exact bytes of each hop (the services' accounting)."""
    table = cost_model.path_costs(plan, list(outcome.table.paths), token_counts, hidden_size, encoding)
    depth = outcome.depths - 1
    if table.ndim == 2:
        return table[outcome.routes, depth]
    return table[np.arange(outcome.routes.size), outcome.routes, depth]


def evaluate_exits(
    exits: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    plan: TierPlan,
    cost_model: CostModel,
    *,
    costs: np.ndarray | None = None,
    regression_tolerance: float = REGRESSION_TOLERANCE,
    outcome: Outcome | None = None,
    token_counts: np.ndarray | None = None,
    hidden_size: int = 0,
) -> dict[str, Any]:
    """Score one answer per sample: at `exits` on the linear route, or by the routes of `outcome`.

    Returns a dict with scalars as Python numbers and per-sample arrays as numpy arrays:
    ``n_samples, accuracy, final_accuracy, accuracy_drop`` (final - chosen), ``mean_cost, reference_cost,
    normalised_cost`` (mean per-sample cost / all-cloud reference route), ``cost_reduction`` (1 -
    normalised_cost), ``tier_shares, tier_counts`` (by answering tier), ``offloads`` (samples per hop),
    ``route_counts`` (per route label), ``exit_counts`` (list over exits 1..L), ``exits, routes,
    sample_costs, predictions, correct``. `costs` ([L] or [n, L] cost units per exit on the linear route)
    overrides the cost model there (the sweep's per-setting tables).
    """
    arr = as_logits(logits)
    n, num_layers, n_classes = arr.shape
    if n == 0:
        raise PolicyError("cannot evaluate an empty set of samples")
    if num_layers != plan.num_layers:
        raise PolicyError(f"logits have {num_layers} exits but the plan is for a {plan.num_layers}-layer model")
    y = check_labels(labels, n, n_classes)
    chosen = check_exits(exits, n, num_layers)
    if outcome is None:
        outcome = outcome_of_chain_exits(plan, chosen)
    elif not np.array_equal(outcome.exits, chosen):
        raise PolicyError("the outcome's exits differ from `exits`")
    rows = np.arange(n)
    correct_all = per_exit_correct(arr, y, regression_tolerance)
    correct = correct_all[rows, chosen - 1]
    preds = predictions(arr)[rows, chosen - 1]
    reference = cost_model.reference_cost(plan)
    if costs is not None:
        per_sample = sample_costs(chosen, plan, cost_model, costs) / reference
    else:
        per_sample = outcome_costs(outcome, plan, cost_model, token_counts, hidden_size)
    accuracy = float(correct.mean())
    final_accuracy = float(correct_all[:, -1].mean())
    normalised = float(per_sample.mean())
    table = outcome.table
    answering = table.final[outcome.routes]
    counts = np.bincount(answering, minlength=3)
    labels_ = table.labels()
    route_counts = {labels_[r]: int(c) for r, c in enumerate(np.bincount(outcome.routes, minlength=len(labels_))) if c}
    hops = {"mobile_edge": 0, "mobile_cloud": 0, "edge_cloud": 0}
    for r, c in enumerate(np.bincount(outcome.routes, minlength=len(labels_))):
        for (a, _), (b, _) in zip(table.paths[r][:-1], table.paths[r][1:]):
            hops[f"{a}_{b}"] += int(c)
    return {
        "n_samples": int(n),
        "accuracy": accuracy,
        "final_accuracy": final_accuracy,
        "accuracy_drop": final_accuracy - accuracy,
        "mean_cost": normalised * reference,
        "reference_cost": float(reference),
        "normalised_cost": normalised,
        "cost_reduction": 1.0 - normalised,
        "tier_shares": {tier: float(c / n) for tier, c in zip(TIERS, counts)},
        "tier_counts": {tier: int(c) for tier, c in zip(TIERS, counts)},
        "offloads": hops,
        "route_counts": route_counts,
        "exit_counts": np.bincount(chosen - 1, minlength=num_layers).tolist(),
        "exits": chosen,
        "routes": outcome.routes,
        "sample_costs": per_sample,
        "predictions": preds,
        "correct": correct,
    }


def evaluate_policy(
    policy: "ExitPolicy",
    logits: np.ndarray,
    labels: np.ndarray,
    features: np.ndarray | None = None,
    *,
    token_counts: np.ndarray | None = None,
    hidden_size: int = 0,
) -> dict[str, Any]:
    """`evaluate_exits` on a fitted policy's routed answers, with its own plan, cost model and tolerance;
    `token_counts` (and `hidden_size`) make payload-size charges per sample exact when a link rate is set.
    `logits` may be an :class:`ExitData` carrying the features."""
    logits, features = unpack_exit_data(logits, features)
    outcome = policy.predict_outcome(logits, features, labels=labels if policy.requires_labels else None)
    tolerance = getattr(policy, "regression_tolerance", REGRESSION_TOLERANCE)
    return evaluate_exits(
        outcome.exits,
        logits,
        labels,
        policy.plan_,
        policy.cost_model_,
        regression_tolerance=tolerance,
        outcome=outcome,
        token_counts=token_counts,
        hidden_size=hidden_size,
    )
