"""Policy comparison at an operating point, from a run's cached logits (no model is run).

Protocol, the same for every policy with a knob (DIMEE's mu, a threshold rule's confidence threshold,
patience's k): the knob is chosen on the held-out calibration split only, by two-fold cross-fitting
(fit on one half, measure the accuracy drop on the other, both ways), as the cheapest knob whose drop is
within the target. The policy is then refitted on the whole calibration split with that knob and scored
once on the evaluation split. Knob-free baselines (all-*, oracle) and the random baseline (DIMEE's tier
shares) need no choice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clustering import (
    AllCloudPolicy,
    AllEdgePolicy,
    AllMobilePolicy,
    DimeePolicy,
    ExitPolicy,
    OraclePolicy,
    PatiencePolicy,
    RandomTierPolicy,
    ThresholdPolicy,
    evaluate_exits,
)
from tiers import CachedSplit, CostModel, TierPlan, read_cached_split, read_run_info
from tiers.run import POLICY_FILE, read_temperatures

from .metrics import compute_glue_metrics, predictions_from_logits, primary_metric

CALIBRATION = "calibration"
VALIDATION = "validation"
MU_GRID = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class Tunable:
    """A policy family with one knob; `build(knob)` gives an unfitted policy."""

    name: str
    knobs: Sequence[float]
    build: Callable[[float], ExitPolicy]
    cheaper_first: bool  # True if knobs are ordered from cheapest to dearest


def tunable_policies(plan: TierPlan, cost: CostModel, temperatures: np.ndarray | None = None) -> list[Tunable]:
    """The knob-bearing policies compared in the report; `temperatures` (per exit) scale every confidence."""
    t = None if temperatures is None else [float(v) for v in temperatures]
    thresholds = tuple(np.round(np.linspace(0.5, 0.999, 60), 4))
    return [
        Tunable("dimee", sorted(MU_GRID, reverse=True), lambda mu: DimeePolicy(plan, cost, t, mu=mu), True),
        Tunable(
            "dimee-edge",
            sorted(MU_GRID, reverse=True),
            lambda mu: DimeePolicy(plan, cost, t, mu=mu, edge_stage=True),
            True,
        ),
        Tunable(
            "dimee-cascade",
            sorted(MU_GRID, reverse=True),
            lambda mu: DimeePolicy(plan, cost, t, mu=mu, decision_exits="all"),
            True,
        ),
        Tunable(
            "threshold",
            thresholds,
            lambda knob: ThresholdPolicy(plan, cost, t, score="confidence", threshold=float(knob)),
            True,
        ),
        Tunable(
            "entropy",
            tuple(np.round(np.linspace(0.9, 0.005, 60), 4)),
            lambda knob: ThresholdPolicy(plan, cost, t, score="entropy", threshold=float(knob)),
            True,
        ),
        Tunable("patience", tuple(range(1, plan.num_layers)), lambda k: PatiencePolicy(plan, cost, patience=int(k)), True),
    ]


def _subset(split: CachedSplit, rows: np.ndarray) -> CachedSplit:
    emb = None if split.embedding is None else split.embedding[rows]
    return CachedSplit(split.logits[rows], split.labels[rows], split.token_counts[rows], emb)


def _score(policy: ExitPolicy, split: CachedSplit, plan: TierPlan, cost: CostModel, task: str) -> dict:
    labels = split.labels if getattr(policy, "requires_labels", False) else None
    exits = policy.predict(split.logits, features=split.embedding, labels=labels)
    result = evaluate_exits(exits, split.logits, split.labels, plan, cost)
    chosen = predictions_from_logits(task, split.logits[np.arange(len(exits)), exits - 1])
    final = predictions_from_logits(task, split.logits[:, -1])
    metric = primary_metric(task)
    result["metric"] = compute_glue_metrics(task, chosen, split.labels)[metric]
    result["final_metric"] = compute_glue_metrics(task, final, split.labels)[metric]
    result["exits"] = exits
    return result


def choose_knob(
    family: Tunable, fit: CachedSplit, plan: TierPlan, cost: CostModel, task: str, max_drop: float, seed: int = 0
) -> tuple[float, float]:
    """Cheapest knob whose two-fold cross-fitted drop of the task metric is <= max_drop (points / 100).

    Falls back to the knob with the smallest drop if none qualifies. Returns (knob, cross-fitted drop).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(fit.labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    best: tuple[float, float, float] | None = None  # (cost, drop, knob)
    fallback: tuple[float, float] | None = None
    for knob in family.knobs:
        drops, costs = [], []
        for a, b in (halves, halves[::-1]):
            part_a, part_b = _subset(fit, a), _subset(fit, b)
            policy = family.build(knob).fit(part_a.logits, part_a.labels, features=part_a.embedding)
            scored = _score(policy, part_b, plan, cost, task)
            drops.append(scored["final_metric"] - scored["metric"])
            costs.append(scored["normalised_cost"])
        drop, mean_cost = float(np.mean(drops)), float(np.mean(costs))
        if fallback is None or drop < fallback[1]:
            fallback = (knob, drop)
        if drop <= max_drop and (best is None or mean_cost < best[0]):
            best = (mean_cost, drop, knob)
    if best is None:
        return fallback
    return best[2], best[1]


def _row(name: str, knob, cv_drop, scored: dict, task: str) -> dict:
    shares = scored["tier_shares"]
    return {
        "task": task,
        "policy": name,
        "knob": knob,
        "cv_drop": None if cv_drop is None else round(100 * cv_drop, 2),
        "metric": round(100 * scored["metric"], 2),
        "drop": round(100 * (scored["final_metric"] - scored["metric"]), 2),
        "normalised_cost": round(scored["normalised_cost"], 4),
        "cost_reduction_%": round(100 * scored["cost_reduction"], 1),
        "mobile": round(shares["mobile"], 3),
        "edge": round(shares["edge"], 3),
        "cloud": round(shares["cloud"], 3),
    }


def compare_policies(
    run_dir: str | Path,
    max_drop: float = 0.003,
    fit_split: str = CALIBRATION,
    eval_split: str = VALIDATION,
    cost_model: CostModel | None = None,
    families: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per policy at the operating point (drop <= max_drop chosen on the fit split), scored on eval."""
    info = read_run_info(run_dir)
    plan, cost, task = info.plan, cost_model or info.cost_model, info.task
    fit, evaluation = read_cached_split(run_dir, fit_split), read_cached_split(run_dir, eval_split)
    rows = []
    fixed = [("all-mobile", AllMobilePolicy(plan, cost)), ("all-edge", AllEdgePolicy(plan, cost)), ("all-cloud", AllCloudPolicy(plan, cost))]
    for name, policy in fixed:
        rows.append(_row(name, None, None, _score(policy.fit(fit.logits, fit.labels), evaluation, plan, cost, task), task))
    dimee_exits = None
    for family in tunable_policies(plan, cost):
        if families is not None and family.name not in families:
            continue
        knob, cv_drop = choose_knob(family, fit, plan, cost, task, max_drop)
        policy = family.build(knob).fit(fit.logits, fit.labels, features=fit.embedding)
        scored = _score(policy, evaluation, plan, cost, task)
        if family.name == "dimee":
            dimee_exits = scored["exits"]
        rows.append(_row(family.name, knob, cv_drop, scored, task))
    if dimee_exits is not None:
        random = RandomTierPolicy(plan, cost, seed=0).fit(evaluation.logits, evaluation.labels, reference_exits=dimee_exits)
        rows.append(_row("random (DIMEE shares)", None, None, _score(random, evaluation, plan, cost, task), task))
    oracle = OraclePolicy(plan, cost).fit(fit.logits, fit.labels)
    rows.append(_row("oracle", None, None, _score(oracle, evaluation, plan, cost, task), task))
    return pd.DataFrame(rows)


DIMEE_VARIANTS = ("dimee", "dimee-edge", "dimee-cascade")


def fit_run_policy(
    run_dir: str | Path, max_drop: float = 0.003, fit_split: str = CALIBRATION, variant: str = "dimee-cascade"
) -> tuple[DimeePolicy, float]:
    """Fit a DIMEE policy for deployment (mu chosen as in the report) and store it in the run folder."""
    if variant not in DIMEE_VARIANTS:
        raise ValueError(f"unknown DIMEE variant {variant!r}; choose one of {', '.join(DIMEE_VARIANTS)}")
    info = read_run_info(run_dir)
    fit = read_cached_split(run_dir, fit_split)
    temperatures = read_temperatures(run_dir, info.plan.num_layers)  # from `dimee calibrate`, if it was run
    family = next(f for f in tunable_policies(info.plan, info.cost_model, temperatures) if f.name == variant)
    mu, _ = choose_knob(family, fit, info.plan, info.cost_model, info.task, max_drop)
    policy = family.build(mu).fit(fit.logits, fit.labels, features=fit.embedding)
    (Path(run_dir) / POLICY_FILE).write_text(json.dumps(policy.to_dict()))
    return policy, mu


def evaluate_policy_on_run(policy: ExitPolicy, run_dir: str | Path, split: str = VALIDATION) -> dict:
    """Score a fitted policy on a cached split of its run (task metric, drop, cost, tier shares)."""
    info = read_run_info(run_dir)
    scored = _score(policy, read_cached_split(run_dir, split), info.plan, info.cost_model, info.task)
    return _row(type(policy).__name__, None, None, scored, info.task)


# ---- the GLUE report: operating-point table and Pareto curves per task ------------------------------------
def knob_curves(run_dir: str | Path, progress: bool = False) -> pd.DataFrame:
    """Each policy over its own knob (fit on calibration, scored on validation): the Pareto plot's points."""
    from .sweep import sweep

    info = read_run_info(run_dir)
    plan, cost = info.plan, info.cost_model
    families = {f.name: f for f in tunable_policies(plan, cost)}
    parts = [sweep(run_dir, "all-mobile,all-edge,all-cloud,oracle", {}, progress=progress)]
    for name in ("dimee", "dimee-cascade", "threshold", "entropy", "patience"):
        family = families[name]
        rows = []
        for knob in family.knobs:
            rows.append(sweep(run_dir, [(name, lambda plan, cost_model, f=family, k=knob: f.build(k))], {}, progress=False))
        parts.append(pd.concat(rows, ignore_index=True))
    return pd.concat(parts, ignore_index=True)


def write_glue_report(
    runs: Sequence[str | Path], out_dir: str | Path = "results", max_drop: float = 0.003, command: str = ""
) -> Path:
    """results/glue.md (+ glue.json, glue_<task>_pareto.png): every policy at the operating point, per task."""
    from .plots import plot_pareto

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables, notes = [], []
    for run in runs:
        info = read_run_info(run)
        table = compare_policies(run, max_drop=max_drop)
        tables.append(table)
        plot_pareto(knob_curves(run), out_dir / f"glue_{info.task}_pareto.png", task=info.task)
        notes.append(f"- `{run}`: {info.task}, {info.training.get('data', '')}, n_train {info.training.get('n_train')}")
    combined = pd.concat(tables, ignore_index=True)
    (out_dir / "glue.json").write_text(combined.to_json(orient="records", indent=1))
    summary = _summary(combined, max_drop)
    lines = [
        "# GLUE: DIMEE and the baselines at the operating point",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"Operating point: each policy's knob chosen on the calibration split (two-fold cross-fitting) as the "
        f"cheapest setting with a task-metric drop <= {100 * max_drop:.1f} points vs the final exit; then fitted "
        "on the whole calibration split and scored once on validation. `metric` is the task's primary GLUE "
        "metric (x100), `drop` its loss vs the final exit on validation, cost normalised by the all-cloud "
        "reference (input sent to the cloud, all L layers there = 1.0). Cost model: the run's (README defaults).",
        "",
        "## Summary (policies that kept the drop <= target on validation)",
        "",
        markdown_table(summary),
        "",
        "## Every policy, every task",
        "",
        markdown_table(combined),
        "",
        "## Runs",
        "",
        *notes,
        "",
        "Pareto plots: " + ", ".join(f"`glue_{t}_pareto.png`" for t in combined["task"].unique()),
    ]
    path = out_dir / "glue.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _summary(combined: pd.DataFrame, max_drop: float) -> pd.DataFrame:
    """Per task: DIMEE (best variant) vs the best baseline that met the target on validation, and the oracle."""
    rows = []
    for task, group in combined.groupby("task", sort=False):
        ok = group[group["drop"] <= 100 * max_drop + 1e-9]  # drop is in points
        def best(names):
            cands = ok[ok["policy"].isin(names)]
            return cands.loc[cands["cost_reduction_%"].idxmax()] if len(cands) else None
        dimee = best(["dimee", "dimee-edge", "dimee-cascade"])
        base = best(["threshold", "entropy", "patience", "all-mobile", "all-edge"])
        oracle = group[group["policy"] == "oracle"].iloc[0]
        rows.append({
            "task": task,
            "best DIMEE": None if dimee is None else f"{dimee['policy']}: {dimee['cost_reduction_%']}% (drop {dimee['drop']})",
            "best baseline": None if base is None else f"{base['policy']}: {base['cost_reduction_%']}% (drop {base['drop']})",
            "oracle": f"{oracle['cost_reduction_%']}%",
        })
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no extra dependency)."""
    cells = [[("" if pd.isna(v) else str(v)) for v in row] for row in df.itertuples(index=False)]
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    return "\n".join([header, rule, *("| " + " | ".join(row) + " |" for row in cells)])
