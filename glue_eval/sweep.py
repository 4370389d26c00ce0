"""The cost sweep: every policy over a grid of cost-model fields, policy knobs and tier plans, from cached logits.

``sweep(runs, policies, grid)`` returns one tidy row per (run, setting, policy), where a setting is one point
of the cartesian product of ``grid``. Nothing here runs a model: each run's cached logits are read once, a
policy is refitted on the fit split only where its fit can change, and the scoring of exit decisions is
vectorised.

What is recomputed per setting, and why (this is what makes 10,000 settings cheap):

* A registry policy's fit reads the cost model only through normalised costs without payload sizes (the
  linear route's per-exit vector, or every route's for DIMEE and the oracle); so link rates never cause a
  refit, and fixed-route policies (all-*) are fitted once per tier plan.
* Threshold / entropy / patience with the knob chosen in fit: their candidate exits on the fit split do not
  depend on costs; only the choice among them does. That choice (``select_setting``'s rule) is made for many
  cost vectors at once with one matrix product; a setting whose cheapest candidates tie to within rounding
  is settled by ``select_setting`` itself, so the result is the refit's, not an approximation of it.
* DIMEE: refitted through its own ``fit`` once per distinct fit input (plan, the normalised cost of every
  (route, exit) and its parameters); there is no second copy of its fitting here. Its k-means clusterings do
  not depend on costs or mu and are cached by the fit itself (``clustering.stages``), so a refit only redoes
  the per-cluster choice.
* Scoring: the task metric, accuracy, tier shares, offloads and bytes depend on the routed answers only
  (route, exit, depth per sample), so they are computed once per distinct outcome; a setting's cost is a dot
  product of the (route, depth) histogram (or, with a link rate, its joint histogram with the token count)
  with that setting's normalised route costs (`CostModel.path_costs`, the services' accounting).

``exact=True`` switches the fast paths off (every policy is refitted through its own ``fit`` once per distinct
fit input); the tests check that both give the same table.

Where the parts live: ``glue_eval.sweep_grid`` (grid fields, the policy registry, grid checks and settings),
``glue_eval.sweep_data`` (a run's checked settings and cached splits), ``glue_eval.sweep_solvers`` (each
policy's exit decisions per setting and their cost-independent statistics); this module scores them per
setting and assembles the table. Its public names (``sweep``, ``POLICIES``, ``grid_fields``, ...) are
imported from here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from clustering import ExitPolicy
from tiers import CostModel, TierPlan, normalised_exit_costs_many, path_costs_many

from .sweep_data import _Data, _has_rate, _load, _prepare_run, _Run
from .sweep_grid import (  # the grid fields and the registry are re-exported: `from glue_eval.sweep import ...`
    COST_FIELDS,  # noqa: F401
    ORACLE,
    PLAN_FIELDS,  # noqa: F401
    POLICIES,
    POLICY_PARAMS,
    RANDOM,  # noqa: F401
    PolicySpec,
    _check_grid,
    _policy_values,
    _resolve_policies,
    _settings,
    grid_fields,  # noqa: F401
)
from .sweep_solvers import _Context, _exit_stats, _Solution, _solver, _Stats

_CHUNK = 500  # settings per vectorised batch (and per progress-bar step)
_CV_TIE = 1e-13


# ---- scoring ----------------------------------------------------------------------------------------------
@dataclass
class _CostTable:
    """Normalised route costs of one chunk of settings on one run: per setting [P * L] (no payload), and
    [U, P * L] per token count for the settings with a link rate (NaN cells, routes that cannot answer at a
    depth, hold no samples and count as 0)."""

    flat: list[np.ndarray]
    per_payload: dict[int, np.ndarray]


def _by_plan(plans: list[TierPlan]) -> dict[TierPlan, list[int]]:
    groups: dict[TierPlan, list[int]] = {}
    for i, plan in enumerate(plans):
        groups.setdefault(plan, []).append(i)
    return groups


def _route_costs(plans: list[TierPlan], costs: list[CostModel]) -> list[np.ndarray]:
    """Each setting's [P, L] route costs without payload; one product per plan (costs are linear in the fields)."""
    out: list[np.ndarray] = [np.empty(0)] * len(plans)
    for plan, members in _by_plan(plans).items():
        for i, table in zip(members, path_costs_many([costs[i] for i in members], plan)):
            out[i] = table
    return out


def _exit_costs(plans: list[TierPlan], costs: list[CostModel]) -> np.ndarray:
    """Each setting's [L] normalised exit costs on the linear route, one product per plan."""
    out = np.empty((len(plans), plans[0].num_layers))
    for plan, members in _by_plan(plans).items():
        out[members] = normalised_exit_costs_many([costs[i] for i in members], plan)
    return out


def _cost_table(data: _Data, plans: list[TierPlan], costs: list[CostModel], route_costs: list[np.ndarray]) -> _CostTable:
    flat: list[np.ndarray] = [np.empty(0)] * len(plans)
    by_shape: dict[tuple, list[int]] = {}
    for i, table in enumerate(route_costs):
        by_shape.setdefault(table.shape, []).append(i)
    for members in by_shape.values():  # NaN (a route that cannot answer at a depth) holds no samples: cost 0
        stacked = np.nan_to_num(np.stack([route_costs[i].reshape(-1) for i in members]), nan=0.0)
        for i, row in zip(members, stacked):
            flat[i] = row
    per_payload = {}
    for i, (plan, cost) in enumerate(zip(plans, costs)):
        if _has_rate(cost):
            table = cost.path_costs(plan, token_counts=data.unique_counts, hidden_size=data.run.hidden_size)
            per_payload[i] = np.nan_to_num(table.reshape(table.shape[0], -1), nan=0.0)
    return _CostTable(flat, per_payload)


def _normalised_costs(stats: list[_Stats], table: _CostTable) -> np.ndarray:
    out = np.empty(len(stats))
    for i, s in enumerate(stats):
        if i in table.per_payload:
            out[i] = (s.joint * table.per_payload[i]).sum() / s.hist.sum()
        else:
            out[i] = s.hist @ table.flat[i] / s.hist.sum()
    return out


# ---- the sweep --------------------------------------------------------------------------------------------
def _as_runs(runs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    items = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    if not items:
        raise ValueError("no run folders to sweep")
    return [Path(r) for r in items]


def _check_params_used(values: Mapping[str, list[Any]], specs: list[PolicySpec]) -> None:
    fixed = [s.name for s in specs if s.params.get("threshold") == "exit_threshold"]
    if fixed and None in values.get("threshold", ()):  # None: "choose it in fit", which these do not
        raise ValueError(
            f"grid field 'threshold': none (the threshold chosen in fit) is not a threshold {', '.join(fixed)} can "
            "use; give numbers"
        )
    for name in values:
        if name in POLICY_PARAMS and not any(name in s.params for s in specs):
            users = sorted(s.name for s in POLICIES.values() if name in s.params)
            raise ValueError(
                f"grid field {name!r} is a parameter of {', '.join(users)}, none of which is in this sweep "
                f"({', '.join(s.name for s in specs)})"
            )


def _reference_name(specs: list[PolicySpec]) -> str | None:
    """The policy whose tier shares the random baseline copies: 'dimee', else the first 'dimee*'."""
    names = [s.name for s in specs]
    if "dimee" in names:
        return "dimee"
    return next((n for n in names if n.startswith("dimee")), None)


def sweep(
    runs: str | os.PathLike | Sequence[str | os.PathLike],
    policies: str | Sequence[str | tuple[str, Callable[..., ExitPolicy]]],
    grid: Mapping[str, Iterable[Any]] | None = None,
    fit_split: str = "calibration",
    eval_split: str = "validation",
    csv_path: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    cost_model: CostModel | None = None,
    exact: bool = False,
    threads: int | None = 1,
    use_temperatures: bool = True,
) -> pd.DataFrame:
    """Evaluate `policies` on every run over the cartesian product of `grid`; one row per (run, setting, policy).

    runs: a run folder or several. policies: registry names (``POLICIES``: dimee, dimee-edge, dimee-embedding,
    threshold, entropy, patience, all-mobile, all-edge, all-cloud, random, oracle), a comma-separated string of
    them, or (name, factory) pairs where ``factory(plan=, cost_model=, **params)`` returns an unfitted
    ``ExitPolicy`` and receives the grid's policy parameters its signature names. grid: field -> values, over
    cost-model fields (``COST_FIELDS``), policy parameters (mu, k -> DIMEE's ``k_grid=(k,)``, max_drop,
    threshold, patience; None for threshold/patience means "chosen in fit") and the tier plan ('plan': 'm,e'
    or (m, e); or 'm' and/or 'e'). Fields not in the grid keep the run's values (its cost model, or
    `cost_model` if given, and its plan).

    Policies are fitted on `fit_split` and scored on `eval_split`. Random takes DIMEE's tier shares on the eval
    split in the same setting when a DIMEE policy is in the sweep (as the report does), else equal shares.
    Costs are per sample (payload bytes over the link) where the setting has a link rate. Columns: run, task,
    policy, the grid fields, plan, metric_name, metric (the task's primary GLUE metric), final_metric,
    metric_drop, accuracy, final_accuracy, accuracy_drop, normalised_cost, cost_reduction, share_mobile /
    share_edge / share_cloud, offloads_mobile_edge / offloads_edge_cloud (samples), bytes_mobile_edge /
    bytes_edge_cloud (fp32 handoff bytes), knob (fitted threshold, patience, DIMEE's k, or dimee-entry-threshold's threshold), oracle_cost_gap
    (normalised cost - the oracle's; negative only for a policy that buys cost with accuracy),
    oracle_accuracy_gap (oracle accuracy - accuracy, never negative), n_samples, calibrated (whether the run's
    ``temperatures.json`` scaled this policy's confidences).

    `use_temperatures` (default True): every policy whose constructor takes ``temperatures`` gets the run's
    ``temperatures.json`` (written by ``dimee calibrate``), as the report and the deployed policy do; a run
    without the file is swept uncalibrated. False sweeps every run uncalibrated.

    Everything is checked before any fitting (unknown fields, policies or splits: ValueError; negative costs:
    CostModelError; a plan that does not fit a run: TierPlanError); `csv_path` is written only when the whole
    sweep is done, atomically. `threads` caps BLAS/OpenMP threads during the sweep (None: library defaults):
    k-means on a few thousand small profiles is far slower with OpenMP threads on a small, busy machine.
    """
    specs = _resolve_policies(policies)
    values = _check_grid(grid)
    _check_params_used(values, specs)
    settings = _settings(values)
    needs_embedding = any(s.needs_embedding for s in specs)
    splits = (fit_split, eval_split)
    prepared = [_prepare_run(folder, settings, cost_model, splits, needs_embedding) for folder in _as_runs(runs)]
    limits = threadpool_limits(limits=threads) if threads else None
    try:
        frames = []
        with tqdm(total=len(prepared) * len(settings), unit="setting", desc="sweep", disable=not progress) as bar:
            for run in prepared:
                frames.append(
                    _sweep_run(run, specs, settings, list(values), (fit_split, eval_split), exact, use_temperatures, bar)
                )
    finally:
        if limits is not None:
            limits.restore_original_limits()
    table = pd.concat(frames, ignore_index=True)
    if csv_path is not None:
        write_csv_atomic(table, csv_path)
    return table


def _sweep_run(
    run: _Run,
    specs: list[PolicySpec],
    settings: list[dict[str, Any]],
    fields: list[str],
    splits: tuple[str, str],
    exact: bool,
    use_temperatures: bool,
    bar: tqdm,
) -> pd.DataFrame:
    data = _load(run, *splits, use_temperatures)
    solvers = {s.name: _solver(s, data, exact) for s in specs}
    order = sorted(specs, key=lambda s: s.kind == "random")  # random needs its reference's exits first
    reference = _reference_name(specs)
    stats_cache: dict[tuple[str, str], _Stats] = {}
    blocks = []
    for start in range(0, len(settings), _CHUNK):
        rows = range(start, min(start + _CHUNK, len(settings)))
        plans = [run.plans[i] for i in rows]
        costs = [run.cost_models[i] for i in rows]
        route_costs = _route_costs(plans, costs)
        table = _cost_table(data, plans, costs, route_costs)
        norm = _exit_costs(plans, costs)
        results: dict[str, tuple[list[_Solution], list[_Stats], np.ndarray]] = {}
        for spec in order:
            contexts = [
                _Context(plans[j], costs[j], norm[j], _policy_values(settings[i], spec), route_costs[j])
                for j, i in enumerate(rows)
            ]
            ref = None
            if spec.kind == "random" and reference is not None:
                ref = results[reference][0]
            solutions = solvers[spec.name].solve(contexts, ref)
            stats = []
            for plan, solution in zip(plans, solutions):
                key = (plan, solution.digest)
                if key not in stats_cache:
                    stats_cache[key] = _exit_stats(data, plan, solution)
                stats.append(stats_cache[key])
            results[spec.name] = (solutions, stats, _normalised_costs(stats, table))
        blocks.append(_block(data, specs, results, settings, rows, plans, fields))
        bar.update(len(rows))
    return pd.concat(blocks, ignore_index=True)


def _block(
    data: _Data,
    specs: list[PolicySpec],
    results: Mapping[str, tuple[list[_Solution], list[_Stats], np.ndarray]],
    settings: list[dict[str, Any]],
    rows: range,
    plans: list[TierPlan],
    fields: list[str],
) -> pd.DataFrame:
    """Rows of one chunk, setting-major then in the sweep's policy order."""
    n_rows, n_pol = len(rows), len(specs)
    columns: dict[str, Any] = {
        "run": np.full(n_rows * n_pol, str(data.run.folder), dtype=object),
        "task": np.full(n_rows * n_pol, data.task, dtype=object),
        "policy": np.tile(np.array([s.name for s in specs], dtype=object), n_rows),
    }
    for name in fields:
        raw = [plans[j].spec if name == "plan" else settings[i][name] for j, i in enumerate(rows)]
        columns[name] = np.repeat(np.array(raw, dtype=object), n_pol).tolist()  # let pandas infer the dtype
    if "plan" not in fields:
        columns["plan"] = np.repeat(np.array([p.spec for p in plans], dtype=object), n_pol).tolist()
    columns["metric_name"] = np.full(n_rows * n_pol, data.metric_name, dtype=object)
    per_policy = {}
    for spec in specs:
        solutions, stats, cost = results[spec.name]
        frame = {k: np.array([s.values[k] for s in stats]) for k in stats[0].values}
        frame["normalised_cost"] = cost
        frame["cost_reduction"] = 1.0 - cost
        frame["knob"] = np.array([s.knob for s in solutions])
        per_policy[spec.name] = frame
    if ORACLE in per_policy:
        oracle = per_policy[ORACLE]
        for frame in per_policy.values():
            frame["oracle_cost_gap"] = frame["normalised_cost"] - oracle["normalised_cost"]
            frame["oracle_accuracy_gap"] = oracle["accuracy"] - frame["accuracy"]
    else:
        for frame in per_policy.values():
            frame["oracle_cost_gap"] = np.full(n_rows, np.nan)
            frame["oracle_accuracy_gap"] = np.full(n_rows, np.nan)
    ordered = [
        "metric", "final_metric", "metric_drop", "accuracy", "final_accuracy", "accuracy_drop", "normalised_cost",
        "cost_reduction", "share_mobile", "share_edge", "share_cloud", "offloads_mobile_edge", "offloads_mobile_cloud",
        "offloads_edge_cloud", "bytes_mobile_edge", "bytes_mobile_cloud", "bytes_edge_cloud", "knob", "oracle_cost_gap", "oracle_accuracy_gap", "n_samples",
    ]  # fmt: skip
    for name in ordered:
        columns[name] = np.stack([per_policy[s.name][name] for s in specs], axis=1).reshape(-1)
    calibrated = [data.temperatures is not None and s.takes_temperatures for s in specs]
    columns["calibrated"] = np.tile(np.array(calibrated, dtype=bool), n_rows)
    return pd.DataFrame(columns)


def write_csv_atomic(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write `table` to `path` through a temporary file in the same folder and a rename: a reader never sees a
    half-written file, and an interrupted write leaves any earlier file as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            table.to_csv(handle, index=False)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the permissions of a plain open()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
