"""Policy comparison at an operating point, from a run's cached logits (no model is run).

Protocol (DESIGN.md section 10), the same for every policy: every choice is made on the fit split (the
held-out ``calibration`` split carved from train) and the evaluation split (``validation``, the one reported)
is touched once, to score.

* A policy with a knob (DIMEE's mu, a threshold rule's confidence threshold, patience's k) gets it by
  two-fold cross-fitting on the fit split (fit on one half, measure the task-metric drop vs the final exit and
  the cost on the other, both ways): the cheapest knob whose cross-fitted drop is within the target. If no
  knob meets the target the knob with the smallest cross-fitted drop is used and the row says
  ``meets_target = False``; such a row is never counted as an operating point. The policy is then refitted
  on the whole fit split with that knob and scored on the evaluation split.
* Knob-free policies (all-*, oracle) need no choice; their fit-split figures (``cv_drop``, ``cv_cost``,
  ``meets_target``) are measured on the whole fit split. The random baseline copies the tier shares DIMEE
  gives on the fit split.
* The summary's "best DIMEE" / "best baseline" is, among rows that met the target on the fit split, the one
  with the lowest cross-fitted (fit-split) cost; its validation figures are then reported, never used to pick.
* One scoring function, :func:`_score` (``clustering.evaluate_policy`` plus the task's GLUE metric), scores
  the knob choice, the table, the Pareto curves and the deployed policy. The run's ``temperatures.json``
  (from ``dimee calibrate``) is applied to every temperature-aware policy, in the report and in the deployed
  policy alike, by one setting (``use_temperatures``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from clustering import (
    ENTRY_THRESHOLD_MU,
    AllCloudPolicy,
    AllEdgePolicy,
    AllMobilePolicy,
    DimeePolicy,
    ExitPolicy,
    OraclePolicy,
    PatiencePolicy,
    RandomTierPolicy,
    ThresholdPolicy,
    evaluate_policy,
)
from tiers import CachedSplit, CostModel, TierPlan, read_cached_split, read_run_info
from tiers.run import OOF_SPLIT, POLICY_FILE, cached_splits, read_temperatures

from .metrics import compute_glue_metrics, predictions_from_logits, primary_metric
from .tasks import run_task

CALIBRATION = "calibration"
VALIDATION = "validation"
# DIMEE's knob: 60 values log-spaced over 0.001..1, as many as the threshold's 60, so no family's Pareto front is
# coarser for lack of knob values (with 12 values DIMEE's fronts were visibly steppier; results/dimee_ablation.md)
MU_GRID = tuple(float(v) for v in np.round(np.geomspace(0.001, 1.0, 60), 5))
# the variants that also come fitted on calibration pooled with the run's out-of-fold split (`dimee oof`), named
# "<variant>+oof"; a run without that split has no such rows
POOLED_VARIANTS = ("dimee-cascade", "dimee-embedding", "dimee-entry", "dimee-entry-threshold")

POOL_SUFFIX = "+oof"
DIMEE_VARIANTS = (
    "dimee", "dimee-edge", "dimee-cascade", "dimee-embedding", "dimee-paper", "dimee-entry", "dimee-entry-threshold",
    *(name + POOL_SUFFIX for name in POOLED_VARIANTS),
)
BASELINES = ("threshold", "entropy", "patience", "all-mobile", "all-edge")  # candidates for "best baseline"
FIXED = ("all-mobile", "all-edge", "all-cloud")
RANDOM = "random (DIMEE shares)"
ORACLE = "oracle"


@dataclass(frozen=True)
class Tunable:
    """A policy family with one knob; `build(knob)` gives an unfitted policy."""

    name: str
    knobs: Sequence[float]
    build: Callable[[float], ExitPolicy]
    cheaper_first: bool  # True if knobs are ordered from cheapest to dearest
    needs_embedding: bool = False  # routes on the embedding-layer feature (skipped for a run without it)
    knob_param: str | None = None  # the knob's parameter name: the family's knobs are fitted in one `fit_many`
    pools: str | None = None  # a further cached split pooled into every fit set (skipped for a run without it)


@dataclass(frozen=True)
class KnobChoice:
    """The knob chosen on the fit split, with its cross-fitted figures there (drop and cost as fractions)."""

    knob: float
    cv_drop: float
    cv_cost: float
    meets_target: bool
    points: tuple[tuple[float, float, float], ...] = ()  # (knob, cv_drop, cv_cost) of every knob tried


def tunable_policies(plan: TierPlan, cost: CostModel, temperatures: np.ndarray | None = None) -> list[Tunable]:
    """The knob-bearing policies compared in the report; `temperatures` (per exit) scale every confidence."""
    t = None if temperatures is None else [float(v) for v in temperatures]
    thresholds = tuple(np.round(np.linspace(0.5, 0.999, 60), 4))
    families = [
        Tunable("dimee", sorted(MU_GRID, reverse=True), lambda mu: DimeePolicy(plan, cost, t, mu=mu), True, knob_param="mu"),
        Tunable(
            "dimee-edge",
            sorted(MU_GRID, reverse=True),
            lambda mu: DimeePolicy(plan, cost, t, mu=mu, edge_stage=True),
            True,
            knob_param="mu",
        ),
        Tunable(
            "dimee-cascade",
            sorted(MU_GRID, reverse=True),
            lambda mu: DimeePolicy(plan, cost, t, mu=mu, decision_exits="all"),
            True,
            knob_param="mu",
        ),
        Tunable(
            "dimee-embedding",
            sorted(MU_GRID, reverse=True),
            lambda mu: DimeePolicy(plan, cost, t, mu=mu, feature="embedding"),
            True,
            needs_embedding=True,
            knob_param="mu",
        ),
        Tunable(
            "dimee-paper",  # the paper's rule: embedding feature, pools labelled by tier, nearest centroid
            sorted(MU_GRID, reverse=True),
            lambda mu: DimeePolicy(plan, cost, t, mu=mu, feature="embedding", assignment="pools"),
            True,
            needs_embedding=True,
            knob_param="mu",
        ),
        Tunable(
            "dimee-entry",  # entry tier from the embedding feature, then a cascade inside it
            sorted(MU_GRID, reverse=True),
            lambda mu: DimeePolicy(plan, cost, t, mu=mu, decision_exits="all", entry="embedding"),
            True,
            needs_embedding=True,
            knob_param="mu",
        ),
        Tunable(
            "dimee-entry-threshold",  # entry tier from the embedding feature, then the confidence threshold inside it
            thresholds,
            lambda knob: DimeePolicy(
                plan, cost, t, mu=ENTRY_THRESHOLD_MU, decision_exits="all", entry="embedding", exit_threshold=float(knob)
            ),
            True,
            needs_embedding=True,
            knob_param="exit_threshold",
        ),
        Tunable(
            "threshold",
            thresholds,
            lambda knob: ThresholdPolicy(plan, cost, t, criterion="confidence", threshold=float(knob)),
            True,
        ),
        Tunable(
            "entropy",
            tuple(np.round(np.linspace(0.9, 0.005, 60), 4)),
            lambda knob: ThresholdPolicy(plan, cost, t, criterion="entropy", threshold=float(knob)),
            True,
        ),
        Tunable("patience", tuple(range(1, plan.num_layers)), lambda k: PatiencePolicy(plan, cost, patience=int(k)), True),
    ]
    pooled = [replace(f, name=f.name + POOL_SUFFIX, pools=OOF_SPLIT) for f in families if f.name in POOLED_VARIANTS]
    return families + pooled


def run_temperatures(run_dir: str | Path, num_layers: int, use_temperatures: bool = True) -> np.ndarray | None:
    """The run's per-exit temperatures (``temperatures.json``) if `use_temperatures` and the file exists."""
    return read_temperatures(run_dir, num_layers) if use_temperatures else None


def pool_split(run_dir: str | Path, family: Tunable) -> CachedSplit | None:
    """The split `family` pools into its fit sets, or None (no pooling, or the run has not cached it)."""
    if family.pools is None or family.pools not in cached_splits(run_dir):
        return None
    return read_cached_split(run_dir, family.pools)


def _with_pool(fit: CachedSplit, extra: CachedSplit | None) -> CachedSplit:
    return fit if extra is None else CachedSplit.concat([fit, extra])


def fit_family(family: Tunable, knobs: Sequence[float], fit: CachedSplit) -> list[ExitPolicy]:
    """`family` fitted at each knob on `fit`: one `fit_many` where the family names its knob's parameter (the
    same fitted state as a `fit` per knob; DIMEE shares its clusterings across the knobs), else a fit each."""
    if family.knob_param is not None and len(knobs):
        return family.build(knobs[0]).fit_many(
            [{family.knob_param: knob} for knob in knobs], fit.logits, fit.labels, fit.embedding
        )
    return [family.build(knob).fit(fit.logits, fit.labels, features=fit.embedding) for knob in knobs]


def _score(policy: ExitPolicy, split: CachedSplit, task: str) -> dict:
    """The one scoring path: a fitted policy on a cached split -> `clustering.evaluate_policy`'s dict (exits,
    predictions, normalised cost, tier shares, ...) plus the task's primary GLUE metric of the chosen exits
    (``metric``) and of the final exit (``final_metric``), as fractions."""
    result = evaluate_policy(policy, split.logits, split.labels, split.embedding)
    metric = primary_metric(task)
    final = predictions_from_logits(task, split.logits[:, -1])
    result["metric"] = compute_glue_metrics(task, np.asarray(result["predictions"]), split.labels)[metric]
    result["final_metric"] = compute_glue_metrics(task, final, split.labels)[metric]
    return result


def _meets(drop: float, max_drop: float) -> bool:
    return bool(drop <= max_drop + 1e-12)


def cross_fit_knob(
    family: Tunable, fit: CachedSplit, task: str, max_drop: float, seed: int = 0, extra: CachedSplit | None = None
) -> KnobChoice:
    """Cheapest knob whose two-fold cross-fitted drop of the task metric is <= max_drop (a fraction).

    If none qualifies: the knob with the smallest cross-fitted drop, with ``meets_target=False``. `extra`
    (the family's pooled split) joins each half's fit set; it is never scored, so the figures stay the fit
    split's.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(fit.labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    parts = [(_with_pool(fit.rows(a), extra), fit.rows(b)) for a, b in (halves, halves[::-1])]
    knobs = list(family.knobs)
    fitted = [fit_family(family, knobs, part_a) for part_a, _ in parts]
    best: KnobChoice | None = None
    fallback: KnobChoice | None = None
    points: list[tuple[float, float, float]] = []
    for i, knob in enumerate(knobs):
        drops, costs = [], []
        for policies, (_, part_b) in zip(fitted, parts):
            scored = _score(policies[i], part_b, task)
            drops.append(scored["final_metric"] - scored["metric"])
            costs.append(scored["normalised_cost"])
        drop, mean_cost = float(np.mean(drops)), float(np.mean(costs))
        points.append((knob, drop, mean_cost))
        if fallback is None or drop < fallback.cv_drop:
            fallback = KnobChoice(knob, drop, mean_cost, False)
        if _meets(drop, max_drop) and (best is None or mean_cost < best.cv_cost):
            best = KnobChoice(knob, drop, mean_cost, True)
    if fallback is None:
        raise ValueError(f"policy family {family.name!r} has no knobs to choose from")
    return replace(best if best is not None else fallback, points=tuple(points))


def choose_knob(
    family: Tunable, fit: CachedSplit, plan: TierPlan, cost: CostModel, task: str, max_drop: float, seed: int = 0
) -> tuple[float, float]:
    """(knob, cross-fitted drop) of :func:`cross_fit_knob` (kept for callers that need only those two; the
    plan and cost model are the family's own). Whether the knob met the target: :func:`cross_fit_knob`."""
    choice = cross_fit_knob(family, fit, task, max_drop, seed)
    return choice.knob, choice.cv_drop


def _fit_figures(policy: ExitPolicy, fit: CachedSplit, task: str, max_drop: float) -> KnobChoice:
    """Fit-split figures of a knob-free policy (no choice to cross-fit: measured on the whole fit split)."""
    scored = _score(policy, fit, task)
    drop = float(scored["final_metric"] - scored["metric"])
    return KnobChoice(float("nan"), drop, float(scored["normalised_cost"]), _meets(drop, max_drop))


def _row(name: str, knob, choice: KnobChoice | None, scored: dict, task: str) -> dict:
    shares = scored["tier_shares"]
    return {
        "task": getattr(task, "name", task),
        "policy": name,
        "knob": knob,
        "cv_drop": None if choice is None else round(100 * choice.cv_drop, 2),
        "cv_cost": None if choice is None else round(choice.cv_cost, 4),
        "meets_target": None if choice is None else bool(choice.meets_target),
        "metric": round(100 * scored["metric"], 2),
        "drop": round(100 * (scored["final_metric"] - scored["metric"]), 2),
        "normalised_cost": round(scored["normalised_cost"], 4),
        "cost_reduction_%": round(100 * scored["cost_reduction"], 1),
        "mobile": round(shares["mobile"], 3),
        "edge": round(shares["edge"], 3),
        "cloud": round(shares["cloud"], 3),
    }


def _families(
    plan: TierPlan, cost: CostModel, temperatures: np.ndarray | None, families: Sequence[str | Tunable] | None
) -> list[Tunable]:
    known = tunable_policies(plan, cost, temperatures)
    if families is None:
        return known
    by_name = {f.name: f for f in known}
    chosen = []
    for item in families:
        if isinstance(item, Tunable):
            chosen.append(item)
        elif item in by_name:
            chosen.append(by_name[item])
        elif item not in (*FIXED, ORACLE, RANDOM, "random"):
            raise ValueError(f"unknown policy family {item!r}; known: {', '.join(by_name)}")
    return chosen


def report_tables(
    run_dir: str | Path,
    max_drop: float = 0.003,
    fit_split: str = CALIBRATION,
    eval_split: str = VALIDATION,
    cost_model: CostModel | None = None,
    families: Sequence[str | Tunable] | None = None,
    use_temperatures: bool = True,
    curves: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(operating-point table, curves) of a run, both made of :func:`_row` rows from :func:`_score`.

    The curves hold every knob of every family (each fitted on the whole fit split, scored on the eval split)
    plus the knob-free policies: the Pareto plot's points. Each table row is the very curve row of the knob
    chosen on the fit split (with the fit-split columns added), so table and plot show the same numbers.
    With ``curves=False`` only the chosen knobs are scored and the second frame holds just those rows.
    """
    if eval_split == fit_split:
        raise ValueError(
            f"the policies are fitted on {fit_split!r}: score them on another split (a held-out one), not on {eval_split!r}"
        )
    info = read_run_info(run_dir)
    plan, cost, task = info.plan, cost_model or info.cost_model, run_task(info)
    temperatures = run_temperatures(run_dir, plan.num_layers, use_temperatures)
    fit, evaluation = read_cached_split(run_dir, fit_split), read_cached_split(run_dir, eval_split)
    rows, curve_rows = [], []

    def add(name, knob, choice, policy) -> None:
        scored = _score(policy, evaluation, task)
        rows.append(_row(name, knob, choice, scored, task))
        curve_rows.append(_row(name, knob, choice, scored, task))

    for name, cls in zip(FIXED, (AllMobilePolicy, AllEdgePolicy, AllCloudPolicy)):
        policy = cls(plan, cost).fit(fit.logits, fit.labels)
        add(name, None, _fit_figures(policy, fit, task, max_drop), policy)
    dimee_policy = None
    for family in _families(plan, cost, temperatures, families):
        if family.needs_embedding and (fit.embedding is None or evaluation.embedding is None):
            continue
        extra = pool_split(run_dir, family)
        if family.pools is not None and (extra is None or (family.needs_embedding and extra.embedding is None)):
            continue
        choice = cross_fit_knob(family, fit, task, max_drop, extra=extra)
        cv_of = {k: KnobChoice(k, d, c, _meets(d, max_drop)) for k, d, c in choice.points}
        knobs = list(family.knobs) if curves else [choice.knob]
        for knob, policy in zip(knobs, fit_family(family, knobs, _with_pool(fit, extra))):
            scored = _score(policy, evaluation, task)
            curve_rows.append(_row(family.name, knob, cv_of.get(knob), scored, task))
            if knob == choice.knob:  # the table's row: the same scored numbers as this curve point
                rows.append(_row(family.name, knob, choice, scored, task))
                if family.name == "dimee":
                    dimee_policy = policy
    if dimee_policy is not None:
        outcome = dimee_policy.predict_outcome(fit.logits, fit.embedding)  # DIMEE's tier shares on the fit split
        answering = outcome.table.final[outcome.routes]
        random = RandomTierPolicy(plan, cost, seed=0).fit(fit.logits, fit.labels, reference_tiers=answering)
        add(RANDOM, None, _fit_figures(random, fit, task, max_drop), random)
    oracle = OraclePolicy(plan, cost).fit(fit.logits, fit.labels)
    add(ORACLE, None, _fit_figures(oracle, fit, task, max_drop), oracle)
    table = pd.DataFrame(rows)
    return table, pd.DataFrame(curve_rows)


def compare_policies(
    run_dir: str | Path,
    max_drop: float = 0.003,
    fit_split: str = CALIBRATION,
    eval_split: str = VALIDATION,
    cost_model: CostModel | None = None,
    families: Sequence[str | Tunable] | None = None,
    use_temperatures: bool = True,
) -> pd.DataFrame:
    """One row per policy at the operating point (module doc), scored on the eval split.

    Columns: task, policy, knob, cv_drop (fit split, points), cv_cost (fit split, normalised), meets_target
    (on the fit split), metric (x100), drop (points vs the final exit), normalised_cost, cost_reduction_%,
    and the tier shares mobile / edge / cloud (eval split).
    """
    table, _ = report_tables(
        run_dir, max_drop, fit_split, eval_split, cost_model, families, use_temperatures, curves=False
    )
    return table


def check_dimee_variant(variant: str) -> None:
    """A ValueError naming the choices unless `variant` is one of the report's DIMEE variants."""
    if variant not in DIMEE_VARIANTS:
        raise ValueError(f"unknown DIMEE variant {variant!r}; choose one of {', '.join(DIMEE_VARIANTS)}")


def fit_run_policy(
    run_dir: str | Path,
    max_drop: float = 0.003,
    fit_split: str = CALIBRATION,
    variant: str = "dimee-cascade",
    use_temperatures: bool = True,
) -> tuple[DimeePolicy, float]:
    """Fit a DIMEE policy for deployment (mu chosen as in the report, with the same temperatures setting)
    and store it in the run folder's policy.json."""
    check_dimee_variant(variant)
    info = read_run_info(run_dir)
    fit = read_cached_split(run_dir, fit_split)
    temperatures = run_temperatures(run_dir, info.plan.num_layers, use_temperatures)
    family = next(f for f in tunable_policies(info.plan, info.cost_model, temperatures) if f.name == variant)
    if family.needs_embedding and fit.embedding is None:
        raise ValueError(
            f"variant {variant!r} routes on the embedding-layer feature, which {run_dir}'s {fit_split!r} split has "
            f"not cached (an older run): re-cache it with `dimee eval {run_dir}`, or choose 'dimee-cascade'"
        )
    extra = pool_split(run_dir, family)
    if family.pools is not None and extra is None:
        raise ValueError(
            f"variant {variant!r} pools the run's {family.pools!r} split, which {run_dir} has not cached: "
            f"make it with `dimee oof {run_dir}`, or choose {variant.removesuffix(POOL_SUFFIX)!r}"
        )
    choice = cross_fit_knob(family, fit, run_task(info), max_drop, extra=extra)
    policy = fit_family(family, [choice.knob], _with_pool(fit, extra))[0]
    (Path(run_dir) / POLICY_FILE).write_text(json.dumps(policy.to_dict()))
    return policy, choice.knob


def evaluate_policy_on_run(policy: ExitPolicy, run_dir: str | Path, split: str = VALIDATION) -> dict:
    """Score a fitted policy on a cached split of its run (task metric, drop, cost, tier shares)."""
    info = read_run_info(run_dir)
    scored = _score(policy, read_cached_split(run_dir, split), run_task(info))
    return _row(type(policy).__name__, None, None, scored, info.task)


# ---- the GLUE report's curves and summary (the file itself, glue.md: glue_eval.glue_md) -----------------------
def knob_curves(run_dir: str | Path, use_temperatures: bool = True) -> pd.DataFrame:
    """Each policy over its own knob (fit on calibration, scored on validation): the Pareto plot's points,
    as report rows (the table's rows are among them)."""
    return report_tables(run_dir, use_temperatures=use_temperatures)[1]


def pareto_frame(rows: pd.DataFrame, metric_name: str | None = None) -> pd.DataFrame:
    """Report rows -> the table `glue_eval.plots.plot_pareto` draws (metric and final metric as fractions)."""
    frame = rows[["task", "policy", "knob", "normalised_cost"]].copy()
    frame["metric"] = rows["metric"].astype(float) / 100
    frame["final_metric"] = (rows["metric"].astype(float) + rows["drop"].astype(float)).round(2) / 100
    frame["metric_name"] = metric_name or [primary_metric(t) for t in rows["task"]]
    return frame


def _best(group: pd.DataFrame, names: Sequence[str]) -> pd.Series | None:
    """Among `names` rows that met the target on the fit split: the lowest fit-split cost (ties: listed first)."""
    cands = group[group["policy"].isin(names) & (group["meets_target"] == True)]  # noqa: E712
    if not len(cands):
        return None
    return cands.iloc[int(np.argmin(cands["cv_cost"].to_numpy(dtype=float)))]


# issue 11's operating-point target, the paper's claim: a cut of >= 43% at a drop <= the report's target, asked
# of every task whose oracle allows >= 55%
PAPER_CUT_PCT = 43.0
PAPER_ORACLE_FLOOR_PCT = 55.0


def operating_target(combined: pd.DataFrame, max_drop: float) -> pd.DataFrame:
    """Per task: the summary's best DIMEE row (chosen on calibration figures only) against the paper's claim,
    read on the scored split: `met` where its cut is >= PAPER_CUT_PCT at a drop <= `max_drop` (a fraction);
    tasks whose oracle cuts less than PAPER_ORACLE_FLOOR_PCT are not asked (`asked` False)."""
    rows = []
    for task, group in combined.groupby("task", sort=False):
        best, oracle = _best(group, DIMEE_VARIANTS), group[group["policy"] == ORACLE]
        oracle_cut = float(oracle.iloc[0]["cost_reduction_%"]) if len(oracle) else float("nan")
        cut = None if best is None else float(best["cost_reduction_%"])
        drop = None if best is None else float(best["drop"])
        met = best is not None and cut >= PAPER_CUT_PCT and drop <= 100 * max_drop + 1e-9
        rows.append({"task": task, "oracle_%": oracle_cut, "asked": bool(oracle_cut >= PAPER_ORACLE_FLOOR_PCT),
                     "best DIMEE": None if best is None else best["policy"], "cost_reduction_%": cut, "drop": drop,
                     "met": bool(met)})  # fmt: skip
    return pd.DataFrame(rows)


def _summary(combined: pd.DataFrame, max_drop: float | None = None) -> pd.DataFrame:
    """Per task: the best DIMEE variant and the best baseline, chosen on calibration figures only (`_best`),
    with their validation cost reduction and drop, and the oracle. `max_drop` is unused (the target was
    applied on the fit split when the rows were made); kept for callers that pass it."""
    rows = []
    for task, group in combined.groupby("task", sort=False):
        dimee, base = _best(group, DIMEE_VARIANTS), _best(group, BASELINES)
        oracle = group[group["policy"] == ORACLE]

        def cell(row):
            if row is None:
                return "none met the target on calibration"
            return f"{row['policy']}: {row['cost_reduction_%']}% (drop {row['drop']})"

        rows.append({
            "task": task,
            "best DIMEE": cell(dimee),
            "best baseline": cell(base),
            "oracle": f"{oracle.iloc[0]['cost_reduction_%']}%" if len(oracle) else "",
        })
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no extra dependency)."""
    cells = [[("" if _missing(v) else str(v)) for v in row] for row in df.itertuples(index=False)]
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    return "\n".join([header, rule, *("| " + " | ".join(row) + " |" for row in cells)])


def _missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def __getattr__(name: str):
    """``write_glue_report`` and ``BUDGETS`` moved to ``glue_eval.glue_md`` / ``glue_eval.scoreboard``; the old
    import path still works (lazily: glue_md imports this module)."""
    if name == "write_glue_report":
        from .glue_md import write_glue_report

        return write_glue_report
    if name == "BUDGETS":
        from .scoreboard import BUDGETS

        return BUDGETS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
