"""Whole curves, not one operating point: the Pareto area and the metric at equal cost, per task and policy.

A policy's Pareto front is the best task metric it reaches at a normalised cost <= c, over its knob's points.
Every front also holds the two trivial deployments any policy can fall back to, all-mobile (the cheapest) and
all-cloud (cost 1, the final exit's metric), so each front is defined on one common range per task:
[all-mobile's cost, 1]. On it:

* ``area``: the mean, over 2001 equally spaced costs of that range, of (front metric - all-cloud metric), in
  metric points; higher is better: 0 means "as good as all-cloud over the whole range", a front above the
  all-cloud metric is positive, and the trivial points alone score all-mobile's gap (the front is a step
  function: the best point at cost <= c);
* ``gap@b``: front metric - all-cloud metric at cost budget b (NaN where b is outside the range, e.g. a deep
  model whose all-mobile already costs more than b; both are NaN when all-mobile costs >= 1).

Both are computed twice: on the calibration split from the cross-fitted figures the knob choice uses
(``cv_drop``, ``cv_cost``), and on validation. The best DIMEE variant and the best baseline are chosen by
their calibration area only; validation is read once, to score the two choices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

BUDGETS: tuple[float, ...] = (0.5, 0.7, 0.9)
_GRID = 2001


def pareto_front(cost: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points not dominated by a cheaper-or-equal point with a higher-or-equal score, sorted by cost (NaN
    scores are dropped): the best score reachable at each cost."""
    cost, score = np.asarray(cost, dtype=float), np.asarray(score, dtype=float)
    keep = np.isfinite(cost) & np.isfinite(score)
    order = np.lexsort((-score[keep], cost[keep]))
    c, s = cost[keep][order], score[keep][order]
    front_c, front_s, best = [], [], -np.inf
    for ci, si in zip(c, s):
        if si > best:
            front_c.append(ci)
            front_s.append(si)
            best = si
    return np.array(front_c), np.array(front_s)


def front_at(cost: np.ndarray, score: np.ndarray, budgets: np.ndarray | Sequence[float]) -> np.ndarray:
    """The best score among the points with cost <= each budget. A budget below every point's cost has no
    answer: ValueError naming the cheapest point."""
    front_c, front_s = pareto_front(cost, score)
    b = np.asarray(budgets, dtype=float)
    if front_c.size == 0:
        raise ValueError("no finite (cost, metric) point to build a Pareto front from")
    if not np.isfinite(b).all() or (b < front_c[0] - 1e-12).any():
        raise ValueError(
            f"cost budget(s) {b[~np.isfinite(b) | (b < front_c[0] - 1e-12)].tolist()} are below the cheapest "
            f"point of the curve (normalised cost {front_c[0]:.4f}): choose budgets >= {front_c[0]:.4f}"
        )
    index = np.searchsorted(front_c, b + 1e-12, side="right") - 1
    return front_s[index]


def curve_scores(
    cost: np.ndarray, gap: np.ndarray, trivial: Sequence[tuple[float, float]], budgets: Sequence[float] = BUDGETS
) -> dict[str, float]:
    """Area and gaps at `budgets` of one policy's points (normalised cost, metric gap vs all-cloud in points)
    with the `trivial` (cost, gap) points (all-mobile, all-cloud) added; the range starts at the cheapest
    trivial point and ends at cost 1."""
    t_cost = np.array([c for c, _ in trivial], dtype=float)
    t_gap = np.array([g for _, g in trivial], dtype=float)
    all_cost = np.concatenate([np.asarray(cost, dtype=float), t_cost])
    all_gap = np.concatenate([np.asarray(gap, dtype=float), t_gap])
    lo = float(t_cost.min())
    in_range = np.isfinite(lo) and lo < 1.0 and bool(np.isfinite(t_gap).all())
    out = {"area": float(front_at(all_cost, all_gap, np.linspace(lo, 1.0, _GRID)).mean()) if in_range else float("nan")}
    for b in budgets:
        inside = in_range and lo - 1e-12 <= b <= 1.0 + 1e-12
        out[f"gap@{b:g}"] = float(front_at(all_cost, all_gap, [b])[0]) if inside else float("nan")
    return out


def scoreboard(
    curves: pd.DataFrame,
    dimee_names: Sequence[str],
    baseline_names: Sequence[str],
    budgets: Sequence[float] = BUDGETS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per policy, per task summary) from the report's curve rows (``task, policy, normalised_cost, drop,
    cv_cost, cv_drop``; the all-mobile and all-cloud rows included).

    Per policy: calibration area (``cal_area``) and validation area and gaps. Summary: per task the DIMEE
    variant and the baseline with the highest calibration area, their validation areas, and ``dimee_at_or_above``
    (validation area of the chosen DIMEE >= the chosen baseline's; a tie counts). Call it once per run: two runs
    of one task would mix their curves."""
    rows, summary = [], []
    for task, group in curves.groupby("task", sort=False):
        trivial = group[group["policy"].isin(["all-mobile", "all-cloud"])]
        if len(trivial) != 2:
            raise ValueError(f"{task}: the curves need the all-mobile and all-cloud rows")
        val_trivial = list(zip(trivial["normalised_cost"].astype(float), -trivial["drop"].astype(float)))
        cal_trivial = list(zip(trivial["cv_cost"].astype(float), -trivial["cv_drop"].astype(float)))
        for name in [*dimee_names, *baseline_names]:
            points = group[group["policy"] == name]
            if not len(points):
                continue
            val = curve_scores(points["normalised_cost"], -points["drop"].astype(float), val_trivial, budgets)
            cal = curve_scores(points["cv_cost"], -points["cv_drop"].astype(float), cal_trivial, ())
            rows.append({
                "task": task,
                "policy": name,
                "kind": "dimee" if name in dimee_names else "baseline",
                "cal_area": round(cal["area"], 3),
                "val_area": round(val["area"], 3),
                **{k: round(v, 2) for k, v in val.items() if k != "area"},
            })
        table = pd.DataFrame([r for r in rows if r["task"] == task])
        if not len(table):
            continue
        best = {}
        for kind in ("dimee", "baseline"):
            part = table[(table["kind"] == kind) & np.isfinite(table["cal_area"].astype(float))]
            best[kind] = None if not len(part) else part.iloc[int(np.argmax(part["cal_area"].to_numpy()))]
        d, b = best["dimee"], best["baseline"]
        summary.append({
            "task": task,
            "DIMEE (chosen on calibration)": "" if d is None else d["policy"],
            "DIMEE val_area": None if d is None else d["val_area"],
            "baseline (chosen on calibration)": "" if b is None else b["policy"],
            "baseline val_area": None if b is None else b["val_area"],
            "dimee_at_or_above": None if d is None or b is None else bool(d["val_area"] >= b["val_area"]),
        })
    return pd.DataFrame(rows), pd.DataFrame(summary)


def cross_task_choice(
    per_policy: pd.DataFrame, per_task: pd.DataFrame | None = None
) -> tuple[dict[str, str | None], pd.DataFrame]:
    """One DIMEE variant and one baseline for all of an encoder's tasks, chosen on calibration only: the
    policy of each kind with the best mean rank of ``cal_area`` over the tasks (rank 1 = highest area in
    the task; ranks, not areas, so that STS-B's ten-times-larger areas do not decide), among the policies
    scored on every task. Per-task choices on 250-1,000 calibration samples are noisy (the variant with the
    best calibration area often is not the best on validation); one choice per encoder pools the evidence of
    every task. Returns ({"dimee": name, "baseline": name}, per task the two validation areas and
    ``dimee_at_or_above``). With `per_task` (:func:`scoreboard`'s summary) DIMEE must also be at or above
    the baseline chosen per task (the stricter of the two comparisons)."""
    chosen: dict[str, str | None] = {}
    n_tasks = per_policy["task"].nunique()
    for kind in ("dimee", "baseline"):
        part = per_policy[(per_policy["kind"] == kind) & np.isfinite(per_policy["cal_area"].astype(float))]
        everywhere = part.groupby("policy")["task"].nunique()
        part = part[part["policy"].isin(everywhere[everywhere == n_tasks].index)].copy()
        if not len(part):
            chosen[kind] = None
            continue
        part["rank"] = part.groupby("task")["cal_area"].rank(ascending=False, method="average")
        mean_rank = part.groupby("policy", sort=False)["rank"].mean()
        chosen[kind] = str(mean_rank.idxmin())  # ties: the policy listed first
    rows = []
    area = per_policy.set_index(["task", "policy"])["val_area"]
    per_task_best = {} if per_task is None else dict(zip(per_task["task"], per_task["baseline val_area"]))
    for task in per_policy["task"].unique():
        d = None if chosen["dimee"] is None else float(area[(task, chosen["dimee"])])
        b = None if chosen["baseline"] is None else float(area[(task, chosen["baseline"])])
        row = {"task": task, "DIMEE": chosen["dimee"], "DIMEE val_area": d, "baseline": chosen["baseline"],
               "baseline val_area": b}
        bars = [v for v in (b, per_task_best.get(task)) if v is not None and np.isfinite(v)]
        if per_task is not None:
            row["per-task baseline val_area"] = per_task_best.get(task)
        row["dimee_at_or_above"] = None if d is None or not bars else bool(d >= max(bars))
        rows.append(row)
    return chosen, pd.DataFrame(rows)
