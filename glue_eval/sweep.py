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
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from clustering import (
    AllCloudPolicy,
    AllEdgePolicy,
    AllMobilePolicy,
    DimeePolicy,
    ExitPolicy,
    OraclePolicy,
    Outcome,
    PatiencePolicy,
    RandomTierPolicy,
    ThresholdPolicy,
    evaluate_exits,
    exit_scores,
    patience_counters,
    path_table,
    per_exit_correct,
    select_setting,
)
from clustering.baselines import cheapest_first
from tiers import (
    CachedSplit,
    CostModel,
    RunInfo,
    TierPlan,
    TierPlanError,
    hop_payload_size,
    normalised_exit_costs_many,
    path_costs_many,
    read_cached_split,
    read_run_info,
)
from tiers.run import LOGITS_DIR, cached_splits, read_temperatures

from .metrics import compute_glue_metrics, predictions_from_logits, primary_metric
from .tasks import run_task

# ---- grid fields ------------------------------------------------------------------------------------------
COST_FIELDS: tuple[str, ...] = tuple(CostModel.field_names())
POLICY_PARAMS: tuple[str, ...] = ("mu", "k", "max_drop", "threshold", "patience")
PLAN_FIELDS: tuple[str, ...] = ("plan", "m", "e")
ORACLE = "oracle"
RANDOM = "random"
_CHUNK = 500  # settings per vectorised batch (and per progress-bar step)
_TIE = 3e-12  # gaps below this may be reordered by float summation order / rounding to 12 decimals
_CV_TIE = 1e-13


def grid_fields() -> list[str]:
    """Every name a grid may use: cost-model fields, policy parameters and the tier plan."""
    return [*COST_FIELDS, *POLICY_PARAMS, *PLAN_FIELDS]


# ---- the policy registry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicySpec:
    """How the sweep builds one policy. `build(plan=, cost_model=, **kwargs)` returns an unfitted policy;
    `params` maps the grid parameters it consumes to its constructor's keyword; `kind` picks the fast path."""

    name: str
    build: Callable[..., ExitPolicy]
    params: Mapping[str, str] = field(default_factory=dict)
    kind: str = "generic"  # fixed, oracle, select, dimee, random, generic
    needs_embedding: bool = False

    @property
    def takes_temperatures(self) -> bool:
        """Whether `build` accepts ``temperatures=`` (the run's ``temperatures.json`` is then passed to it); a
        factory that binds its own temperatures (``partial(..., temperatures=...)``) keeps them."""
        if isinstance(self.build, partial) and "temperatures" in self.build.keywords:
            return False
        try:
            return "temperatures" in inspect.signature(self.build).parameters
        except (TypeError, ValueError):
            return False


def _registry() -> dict[str, PolicySpec]:
    select = {"max_drop": "max_drop"}
    threshold = {**select, "threshold": "threshold"}
    dimee = {"mu": "mu", "k": "k_grid"}
    specs = [
        PolicySpec("dimee", DimeePolicy, dimee, "dimee"),
        PolicySpec("dimee-edge", partial(DimeePolicy, edge_stage=True), dimee, "dimee"),
        PolicySpec("dimee-embedding", partial(DimeePolicy, feature="embedding"), dimee, "dimee", True),
        PolicySpec(
            "dimee-paper", partial(DimeePolicy, feature="embedding", assignment="pools"), {"mu": "mu"}, "dimee", True
        ),
        PolicySpec("dimee-cascade", partial(DimeePolicy, decision_exits="all"), dimee, "dimee"),
        PolicySpec(
            "dimee-entry", partial(DimeePolicy, decision_exits="all", entry="embedding"), dimee, "dimee", True
        ),
        PolicySpec("threshold", partial(ThresholdPolicy, criterion="confidence"), threshold, "select"),
        PolicySpec("entropy", partial(ThresholdPolicy, criterion="entropy"), threshold, "select"),
        PolicySpec("patience", PatiencePolicy, {**select, "patience": "patience"}, "select"),
        PolicySpec("all-mobile", AllMobilePolicy, {}, "fixed"),
        PolicySpec("all-edge", AllEdgePolicy, {}, "fixed"),
        PolicySpec("all-cloud", AllCloudPolicy, {}, "fixed"),
        PolicySpec(RANDOM, RandomTierPolicy, {}, "random"),
        PolicySpec(ORACLE, OraclePolicy, {}, "oracle"),
    ]
    return {spec.name: spec for spec in specs}


POLICIES: Mapping[str, PolicySpec] = _registry()


def _factory_spec(name: str, factory: Callable[..., ExitPolicy]) -> PolicySpec:
    """A user's (name, factory): it gets plan=, cost_model= and the grid parameters its signature accepts."""
    if not callable(factory):
        raise ValueError(f"policy {name!r}: the factory must be callable (e.g. a policy class), got {factory!r}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    accepted: dict[str, str] = {}
    if signature is not None:
        names = signature.parameters
        open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in names.values())
        for param in POLICY_PARAMS:
            if param in names or open_kwargs:
                accepted[param] = param
            elif param == "k" and "k_grid" in names:
                accepted[param] = "k_grid"
    return PolicySpec(name, factory, accepted, "generic")


def _resolve_policies(policies: str | Sequence[str | tuple[str, Callable[..., ExitPolicy]]]) -> list[PolicySpec]:
    items = [p.strip() for p in policies.split(",") if p.strip()] if isinstance(policies, str) else list(policies)
    if not items:
        raise ValueError(f"no policies to sweep; choose from {', '.join(POLICIES)}")
    specs: list[PolicySpec] = []
    for item in items:
        if isinstance(item, str):
            if item not in POLICIES:
                known = ", ".join(POLICIES)
                raise ValueError(f"unknown policy {item!r}; known policies: {known} (or pass (name, factory))")
            specs.append(POLICIES[item])
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            specs.append(_factory_spec(*item))
        else:
            raise ValueError(f"a policy is a registry name or a (name, factory) pair, got {item!r}")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"policy name(s) {duplicates} appear more than once in the sweep")
    return specs


# ---- grid validation --------------------------------------------------------------------------------------
def _check_grid(grid: Mapping[str, Iterable[Any]] | None) -> dict[str, list[Any]]:
    grid = dict(grid or {})
    unknown = [name for name in grid if name not in grid_fields()]
    if unknown:
        raise ValueError(
            f"unknown grid field(s) {unknown}; valid: cost-model fields {', '.join(COST_FIELDS)}; "
            f"policy parameters {', '.join(POLICY_PARAMS)}; tier plan {', '.join(PLAN_FIELDS)}"
        )
    if "plan" in grid and ({"m", "e"} & set(grid)):
        raise ValueError("give the tier plan either as 'plan' (values 'm,e') or as 'm' and/or 'e', not both")
    values: dict[str, list[Any]] = {}
    for name, raw in grid.items():
        single = isinstance(raw, (str, bytes, TierPlan)) or not isinstance(raw, Iterable)
        items = [raw] if single else list(raw)
        if name == "plan" and isinstance(raw, tuple) and len(raw) == 2 and all(isinstance(v, int) for v in raw):
            items = [raw]  # plan=(2, 4) is one plan, not two
        if not items:
            raise ValueError(f"grid field {name!r} has no values")
        values[name] = [_check_value(name, v) for v in items]
    return values


def _number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"grid field {name!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"grid field {name!r}: {value!r} is not a finite number")
    return number


def _integer(name: str, value: Any, minimum: int) -> int:
    number = _number(name, value)
    if number != int(number) or number < minimum:
        raise ValueError(f"grid field {name!r}: {value!r} is not an integer >= {minimum}")
    return int(number)


def _check_value(name: str, value: Any) -> Any:
    """Normalise one grid value; cost-model and plan values are checked per run (CostModelError/TierPlanError)."""
    if name in COST_FIELDS:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"grid field {name!r}: {value!r} is not a number") from None
    if name in ("mu", "max_drop"):
        number = _number(name, value)
        if number < 0:
            raise ValueError(f"grid field {name!r} must be >= 0, got {value!r}")
        return number
    if name == "k":
        return _integer(name, value, 1)
    if name == "threshold":
        return None if value is None else _number(name, value)
    if name == "patience":
        return None if value is None else _integer(name, value, 1)
    if name in ("m", "e"):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            if not (isinstance(value, float) and value.is_integer()):
                raise TierPlanError(f"grid field {name!r}: tier boundaries are integers, got {value!r}")
        return int(value)
    return value  # plan: checked against each run's layer count


def _settings(values: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(values)
    return [dict(zip(names, combo)) for combo in product(*(values[n] for n in names))]


def _plan_of(setting: Mapping[str, Any], base: TierPlan) -> TierPlan:
    """The tier plan of a setting for a run whose default plan is `base`."""
    L = base.num_layers
    if "plan" in setting:
        value = setting["plan"]
        if isinstance(value, TierPlan):
            if value.num_layers != L:
                raise TierPlanError(
                    f"tier plan {value.spec} is for a {value.num_layers}-layer model; the run has {L} layers"
                )
            return value
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return TierPlan(_plan_int(value[0]), _plan_int(value[1]), L)
        return TierPlan.parse(str(value), L)
    return TierPlan(setting.get("m", base.mobile_end), setting.get("e", base.edge_end), L)


def _plan_int(value: Any) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise TierPlanError(f"tier plan boundaries must be integers, got {value!r}")


def _cost_changes(setting: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in setting.items() if k in COST_FIELDS}


def _policy_values(setting: Mapping[str, Any], spec: PolicySpec) -> dict[str, Any]:
    return {k: setting[k] for k in spec.params if k in setting}


def _policy_kwargs(spec: PolicySpec, values: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = {}
    for grid_name, value in values.items():
        keyword = spec.params[grid_name]
        kwargs[keyword] = (value,) if keyword == "k_grid" else value
    return kwargs


# ---- run data ---------------------------------------------------------------------------------------------
def _hidden_size(folder: Path, split: str) -> int | None:
    """Width of the hidden state a hop carries: the encoder config, else the cached embedding's width."""
    config = folder / "encoder" / "config.json"
    if config.exists():
        data = json.loads(config.read_text())
        for key in ("hidden_size", "d_model", "dim"):
            if isinstance(data.get(key), int):
                return int(data[key])
    embedding = folder / LOGITS_DIR / f"{split}.embedding.npy"
    if embedding.exists():
        return int(np.load(embedding, mmap_mode="r").shape[-1])
    return None


@dataclass
class _Run:
    """What a run contributes before any fitting: its info, checked plans and cost models per setting."""

    folder: Path
    info: RunInfo
    plans: list[TierPlan]
    cost_models: list[CostModel]
    hidden_size: int | None


def _prepare_run(
    folder: Path,
    settings: list[dict[str, Any]],
    base_cost: CostModel | None,
    splits: tuple[str, str],
    needs_embedding: bool,
) -> _Run:
    info = read_run_info(folder)
    have = cached_splits(folder)
    for split in splits:
        if split not in have:
            raise ValueError(f"{folder} has no cached logits for split {split!r} (has: {', '.join(have) or 'none'})")
        if needs_embedding and not (folder / LOGITS_DIR / f"{split}.embedding.npy").exists():
            raise ValueError(f"{folder}: the embedding-feature DIMEE variants need {split}.embedding.npy, which the run does not have")
    base = base_cost or info.cost_model
    plan_cache: dict[str, TierPlan] = {}
    cost_cache: dict[tuple, CostModel] = {}
    plans, costs = [], []
    for setting in settings:
        plan_key = repr(sorted((k, setting[k]) for k in PLAN_FIELDS if k in setting))
        if plan_key not in plan_cache:
            plan_cache[plan_key] = _plan_of(setting, info.plan)
        changes = _cost_changes(setting)
        cost_key = tuple(sorted(changes.items()))
        if cost_key not in cost_cache:
            cost_cache[cost_key] = base.with_values(**changes)
        plans.append(plan_cache[plan_key])
        costs.append(cost_cache[cost_key])
    hidden = _hidden_size(folder, splits[1])
    if hidden is None and any(_has_rate(c) for c in cost_cache.values()):
        raise ValueError(
            f"{folder}: a link rate is set but the hidden size (for the payload bytes) is unknown: "
            "the run has neither encoder/config.json nor cached embeddings"
        )
    return _Run(folder, info, plans, costs, hidden)


@dataclass
class _Data:
    """A run's two cached splits, read once, and what every policy's scoring shares."""

    run: _Run
    task: str
    fit: CachedSplit
    eval: CachedSplit
    metric_name: str
    final_metric: float
    unique_counts: np.ndarray  # [U] distinct token counts of the eval split
    count_index: np.ndarray  # [n] index into unique_counts
    correct_fit: np.ndarray  # [n_fit, L] bool
    temperatures: list[float] | None  # the run's temperatures.json, if applied


def _as_float64_embedding(split: CachedSplit) -> CachedSplit:
    """The split with its embedding features in float64 once (each policy's fit would convert them again)."""
    if split.embedding is None:
        return split
    return replace(split, embedding=np.ascontiguousarray(split.embedding, dtype=np.float64))


def _load(run: _Run, fit_split: str, eval_split: str, use_temperatures: bool) -> _Data:
    fit = _as_float64_embedding(read_cached_split(run.folder, fit_split))
    evaluation = _as_float64_embedding(read_cached_split(run.folder, eval_split))
    if fit.logits.shape[1:] != evaluation.logits.shape[1:]:
        raise ValueError(
            f"{run.folder}: the {fit_split} logits {fit.logits.shape} and the {eval_split} logits "
            f"{evaluation.logits.shape} differ in exits or classes"
        )
    if fit.logits.shape[1] != run.info.plan.num_layers:
        layers = run.info.plan.num_layers
        raise ValueError(f"{run.folder}: logits have {fit.logits.shape[1]} exits, run.json says {layers}")
    task, spec = run.info.task, run_task(run.info)  # spec: the run's own task description (any data set)
    metric = primary_metric(spec)
    final = predictions_from_logits(spec, evaluation.logits[:, -1])
    unique, index = np.unique(np.asarray(evaluation.token_counts, dtype=np.int64), return_inverse=True)
    return _Data(
        run=run,
        task=task,
        fit=fit,
        eval=evaluation,
        metric_name=metric,
        final_metric=compute_glue_metrics(spec, final, evaluation.labels)[metric],
        unique_counts=unique,
        count_index=index.reshape(-1),
        correct_fit=per_exit_correct(fit.logits, fit.labels),
        temperatures=_run_temperatures(run, use_temperatures),
    )


def _run_temperatures(run: _Run, use_temperatures: bool) -> list[float] | None:
    """The run's per-exit temperatures when applied (the report and the deployed policy read the same file)."""
    temps = read_temperatures(run.folder, run.info.plan.num_layers) if use_temperatures else None
    return None if temps is None else [float(t) for t in temps]


# ---- outcome statistics (cost-independent) ----------------------------------------------------------------
@dataclass(frozen=True)
class _Stats:
    hist: np.ndarray  # [P * L] samples per (route, depth of the answering stop)
    joint: np.ndarray  # [U, P * L] samples per (token count, route, depth)
    values: dict[str, float]


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for arr in arrays:
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    return h.hexdigest()


def _hop_bytes(data: _Data, plan: TierPlan, routes: np.ndarray) -> dict[str, float]:
    """fp32 bytes sent over each hop by the samples' routes (token ids at boundary 0, hidden states after)."""
    table = path_table(plan)
    counts = np.asarray(data.eval.token_counts, dtype=np.int64)
    sent = {"mobile_edge": 0.0, "mobile_cloud": 0.0, "edge_cloud": 0.0}
    if data.run.hidden_size is None:
        return {hop: float("nan") for hop in sent}
    for r in np.unique(routes):
        rows = counts[routes == r]
        for (a, _), (b, boundary) in zip(table.paths[r][:-1], table.paths[r][1:]):
            sent[f"{a}_{b}"] += float(sum(hop_payload_size([c], boundary, data.run.hidden_size, "fp32") for c in rows))
    return sent


def _exit_stats(data: _Data, plan: TierPlan, solution: "_Solution") -> _Stats:
    ev = data.eval
    table = path_table(plan)
    outcome = Outcome(table, solution.routes, solution.exits, solution.depths)
    scored = evaluate_exits(solution.exits, ev.logits, ev.labels, plan, CostModel(), outcome=outcome)
    exits = solution.exits
    chosen = ev.logits[np.arange(exits.size), exits - 1]
    spec = run_task(data.run.info)
    metric = compute_glue_metrics(spec, predictions_from_logits(spec, chosen), ev.labels)[data.metric_name]
    L = plan.num_layers
    cells = len(table.paths) * L
    flat = solution.routes * L + (solution.depths - 1)
    joint = np.bincount(data.count_index * cells + flat, minlength=data.unique_counts.size * cells)
    sent = _hop_bytes(data, plan, solution.routes)
    values = {
        "metric": float(metric),
        "final_metric": float(data.final_metric),
        "metric_drop": float(data.final_metric - metric),
        "accuracy": scored["accuracy"],
        "final_accuracy": scored["final_accuracy"],
        "accuracy_drop": scored["accuracy_drop"],
        "share_mobile": scored["tier_shares"]["mobile"],
        "share_edge": scored["tier_shares"]["edge"],
        "share_cloud": scored["tier_shares"]["cloud"],
        **{f"offloads_{hop}": scored["offloads"][hop] for hop in ("mobile_edge", "mobile_cloud", "edge_cloud")},
        **{f"bytes_{hop}": sent[hop] for hop in ("mobile_edge", "mobile_cloud", "edge_cloud")},
        "n_samples": scored["n_samples"],
    }
    hist = np.bincount(flat, minlength=cells).astype(np.float64)
    return _Stats(hist, joint.reshape(-1, cells).astype(np.float64), values)


# ---- per-setting context ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Context:
    """One setting as one policy sees it."""

    plan: TierPlan
    cost_model: CostModel
    cost_norm: np.ndarray  # [L] normalised exit costs (what a registry policy's fit reads)
    values: dict[str, Any]  # the grid parameters this policy consumes
    path_costs: np.ndarray  # [P, L] normalised cost per (route, exit) without payload (NaN: cannot answer)


@dataclass(frozen=True)
class _Solution:
    exits: np.ndarray  # [n_eval] 1-based exits on the eval split
    routes: np.ndarray  # [n_eval] route index (the plan's path table)
    depths: np.ndarray  # [n_eval] layer the answering stop ran to
    knob: float  # the fitted knob (threshold, patience, DIMEE's k), NaN if none
    digest: str = ""  # of the outcome, filled in by __post_init__ (solutions are cached and reused)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", _digest(self.exits, self.routes, self.depths))

    @classmethod
    def of(cls, outcome: Outcome, knob: float) -> "_Solution":
        return cls(outcome.exits.astype(np.int64), outcome.routes.astype(np.int64), outcome.depths.astype(np.int64), knob)


def _knob(policy: ExitPolicy) -> float:
    for name in ("threshold_", "patience_", "n_clusters_"):
        if hasattr(policy, name):
            return float(getattr(policy, name))
    return float("nan")


def _cost_key(ctx: _Context) -> tuple:
    return tuple(sorted(ctx.cost_model.to_dict().items()))


def _value_key(values: Mapping[str, Any]) -> tuple:
    return tuple(sorted(values.items()))


# ---- solvers: each setting's eval exits for one policy on one run ---------------------------------------
class _GenericSolver:
    """Fit the policy itself once per distinct fit input (`key`), predict on the eval split."""

    def __init__(self, spec: PolicySpec, data: _Data, key: Callable[[_Context], tuple] | None = None):
        self.spec, self.data = spec, data
        self.key = key or (lambda ctx: (ctx.plan, _cost_key(ctx), _value_key(ctx.values)))
        self.cache: dict[tuple, _Solution] = {}

    def build(self, ctx: _Context, **override: Any) -> ExitPolicy:
        """The unfitted policy of a setting; `override` replaces constructor keywords (e.g. a fixed knob)."""
        kwargs = {**_policy_kwargs(self.spec, ctx.values), **override}
        if self.data.temperatures is not None and self.spec.takes_temperatures:
            kwargs.setdefault("temperatures", self.data.temperatures)
        return self.spec.build(plan=ctx.plan, cost_model=ctx.cost_model, **kwargs)

    def features(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(fit, eval) embedding features, passed to every policy's fit and predict when both splits have them."""
        fit, ev = self.data.fit, self.data.eval
        return (fit.embedding, ev.embedding) if fit.embedding is not None and ev.embedding is not None else (None, None)

    def fitted(self, policy: ExitPolicy, **fit_kwargs: Any) -> _Solution:
        policy.fit(self.data.fit.logits, self.data.fit.labels, features=self.features()[0], **fit_kwargs)
        return self.predicted(policy)

    def predicted(self, policy: ExitPolicy) -> _Solution:
        ev = self.data.eval
        labels = ev.labels if policy.requires_labels else None
        return _Solution.of(policy.predict_outcome(ev.logits, self.features()[1], labels=labels), _knob(policy))

    def solve_one(self, ctx: _Context) -> _Solution:
        key = self.key(ctx)
        if key not in self.cache:
            self.cache[key] = self.fitted(self.build(ctx))
        return self.cache[key]

    def solve(self, contexts: Sequence[_Context], reference: Sequence[np.ndarray] | None = None) -> list[_Solution]:
        return [self.solve_one(ctx) for ctx in contexts]


class _ManySolver(_GenericSolver):
    """A registry policy whose settings differ in the parameters `varying` (and the cost model) only: the
    distinct fit inputs of a chunk are fitted by one ``fit_many`` per plan and remaining parameters (the code
    ``fit`` runs, sharing the work the policy can share)."""

    varying: tuple[str, ...] = ()

    def changes(self, proto: ExitPolicy, ctx: _Context) -> dict[str, Any]:
        return {"cost_model": ctx.cost_model}

    def solve(self, contexts: Sequence[_Context], reference: Sequence[np.ndarray] | None = None) -> list[_Solution]:
        keys = [self.key(ctx) for ctx in contexts]
        groups: dict[tuple, dict[tuple, _Context]] = {}
        for ctx, key in zip(contexts, keys):
            if key not in self.cache:
                rest = {k: v for k, v in ctx.values.items() if k not in self.varying}
                groups.setdefault((ctx.plan, _value_key(rest)), {}).setdefault(key, ctx)
        for members in groups.values():
            first = next(iter(members.values()))
            proto = self.build(first)
            params = [self.changes(proto, ctx) for ctx in members.values()]
            fitted = proto.fit_many(params, self.data.fit.logits, self.data.fit.labels, self.features()[0])
            for key, policy in zip(members, fitted):
                self.cache[key] = self.predicted(policy)
        return [self.cache[key] for key in keys]


def _plan_only(ctx: _Context) -> tuple:
    return (ctx.plan,)  # the plan itself: two plans with one spec may accept other boundaries


class _RandomSolver(_GenericSolver):
    """Random tiers with the reference policy's tier shares (DIMEE's) on the eval split, as in the report."""

    def solve(self, contexts: Sequence[_Context], reference: Sequence["_Solution"] | None = None) -> list[_Solution]:
        out = []
        for index, ctx in enumerate(contexts):
            ref = None if reference is None else reference[index]
            tiers = None if ref is None else path_table(ctx.plan).final[ref.routes]
            shares = None if tiers is None else tuple(np.bincount(tiers, minlength=3).tolist())
            key = (ctx.plan, shares)
            if key not in self.cache:
                policy = self.build(ctx)
                self.cache[key] = self.fitted(policy, **({} if tiers is None else {"reference_tiers": tiers}))
            out.append(self.cache[key])
        return out

    def fitted(self, policy: ExitPolicy, **fit_kwargs: Any) -> _Solution:
        ev = self.data.eval
        ref = fit_kwargs.get("reference_tiers")
        policy.fit(ev.logits if ref is not None else self.data.fit.logits, reference_tiers=ref)
        return _Solution.of(policy.predict_outcome(ev.logits), float("nan"))


class _DimeeSolver(_ManySolver):
    """DIMEE: the settings of a plan and k grid are fitted by one ``DimeePolicy.fit_many`` over (cost model,
    mu), whose per-tier policy makes every setting's choices at once; the eval split is predicted once per
    distinct fitted routing (``routing_digest``)."""

    varying = ("mu",)

    def __init__(self, spec: PolicySpec, data: _Data):
        super().__init__(spec, data, key=_fit_input_key)
        self.by_routing: dict[str, _Solution] = {}

    def changes(self, proto: ExitPolicy, ctx: _Context) -> dict[str, Any]:
        return {"cost_model": ctx.cost_model, "mu": ctx.values.get("mu", proto.mu)}

    def predicted(self, policy: ExitPolicy) -> _Solution:
        digest = policy.routing_digest()
        if digest not in self.by_routing:
            self.by_routing[digest] = super().predicted(policy)
        return self.by_routing[digest]


@dataclass(frozen=True)
class _Selector:
    """`select_setting(exits, correct, c, "max_drop", max_drop)` for many cost vectors c at once.

    Accuracy and feasibility do not depend on costs, so they are computed once; identical candidate exit
    vectors tie exactly (the first listed wins), so only the first of each is kept; the mean cost of every
    remaining candidate under every cost vector is one matrix product. Where the cheapest two are closer
    than float noise, `select_setting` itself decides (the refit's arithmetic)."""

    exits: np.ndarray  # [G, n] fit-split exits per candidate knob
    correct: np.ndarray  # [n, L]
    max_drop: float
    kept: np.ndarray  # indices of the feasible, first-of-their-kind candidates
    hist: np.ndarray  # [len(kept), L] exit histograms of the kept candidates

    @classmethod
    def build(cls, exits: np.ndarray, correct: np.ndarray, max_drop: float) -> "_Selector":
        n, L = correct.shape
        acc = correct[np.arange(n)[None, :], exits - 1].mean(axis=1)  # as select_setting computes it
        feasible = correct[:, -1].mean() - acc <= max_drop + 1e-12
        _, first = np.unique(exits, axis=0, return_index=True)
        keep = np.zeros(exits.shape[0], dtype=bool)
        keep[first] = True
        kept = np.nonzero(keep & feasible)[0]
        hist = np.array([np.bincount(exits[g] - 1, minlength=L) for g in kept], dtype=np.float64).reshape(-1, L)
        return cls(exits, correct, max_drop, kept, hist)

    def choose(self, cost_norm: np.ndarray) -> np.ndarray:
        """Index of the chosen candidate for each row of `cost_norm` [K, L]."""
        if self.kept.size == 0:  # cannot happen ("never exit early" is feasible); select_setting will say why
            return np.array([self._exact(c) for c in cost_norm])
        cost = cost_norm @ self.hist.T / self.correct.shape[0]  # [K, G]
        best = cost.argmin(axis=1)
        low = cost[np.arange(cost.shape[0]), best]
        chosen = self.kept[best]
        for row in np.nonzero((cost <= low[:, None] + _TIE).sum(axis=1) > 1)[0]:
            chosen[row] = self._exact(cost_norm[row])
        return chosen

    def _exact(self, cost_norm: np.ndarray) -> int:
        return select_setting(self.exits, self.correct, cost_norm, "max_drop", self.max_drop)


class _SelectSolver(_GenericSolver):
    """Threshold / entropy / patience. A given knob: one fit per plan and knob. Knob chosen in fit: the
    candidates' exits on the fit split are listed once per plan, as the policy's fit lists them, and the
    choice is made for all settings at once (`_Selector`)."""

    def __init__(self, spec: PolicySpec, data: _Data):
        super().__init__(spec, data)
        self.knob_name = "patience" if "patience" in spec.params else "threshold"
        self.protos: dict[tuple, ExitPolicy] = {}
        self.candidates: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.selectors: dict[tuple[str, float], _Selector] = {}
        self.by_knob: dict[tuple, _Solution] = {}

    def _proto(self, ctx: _Context) -> ExitPolicy:
        """The setting's unfitted policy, shared by settings with the same parameters (for reading them)."""
        key = _value_key(ctx.values)
        if key not in self.protos:
            self.protos[key] = self.build(ctx)
        return self.protos[key]

    def _candidates(self, ctx: _Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Knob values, the fit-split exits [G, n_fit] each gives and per-exit correctness, as in the fit."""
        if ctx.plan not in self.candidates:
            fit = self.data.fit
            probe = self.build(ctx, **{self.knob_name: 1.0 if self.knob_name == "threshold" else 1})
            probe.fit(fit.logits, fit.labels)
            if self.knob_name == "threshold":
                scores = exit_scores(fit.logits, probe.criterion, probe.temperatures_)
                knobs = probe.candidate_thresholds(scores)
                exits = np.stack([probe._exits_from_scores(scores, t) for t in knobs])  # what ThresholdPolicy.fit does
            else:
                counters = patience_counters(fit.logits, probe.tolerance)
                knobs = np.arange(1, max(2, probe.num_layers_))
                exits = np.stack([probe._exits_from_counters(counters, int(p)) for p in knobs])  # as PatiencePolicy.fit
            correct = per_exit_correct(fit.logits, fit.labels, probe.regression_tolerance)
            self.candidates[ctx.plan] = (knobs, exits.astype(np.int64), correct)
        return self.candidates[ctx.plan]

    def _selector(self, ctx: _Context, max_drop: float) -> _Selector:
        key = (ctx.plan, max_drop)
        if key not in self.selectors:
            _, exits, correct = self._candidates(ctx)
            self.selectors[key] = _Selector.build(exits, correct, max_drop)
        return self.selectors[key]

    def _supported(self, ctx: _Context) -> bool:
        proto = self._proto(ctx)
        return proto.selection == "max_drop"  # the candidates above are scored with the policy's temperatures

    def _with_knob(self, ctx: _Context, knob: float | int) -> _Solution:
        key = (ctx.plan, knob)
        if key not in self.by_knob:
            self.by_knob[key] = self.fitted(self.build(ctx, **{self.knob_name: knob}))
        return self.by_knob[key]

    def solve(self, contexts: Sequence[_Context], reference: Sequence[np.ndarray] | None = None) -> list[_Solution]:
        out: list[_Solution | None] = [None] * len(contexts)
        groups: dict[tuple, list[int]] = {}
        for index, ctx in enumerate(contexts):
            knob = ctx.values.get(self.knob_name)
            if knob is not None:
                out[index] = self._with_knob(ctx, knob)
            elif not self._supported(ctx):
                out[index] = self.solve_one(ctx)
            else:
                groups.setdefault((ctx.plan, float(self._proto(ctx).max_drop)), []).append(index)
        for (_, max_drop), members in groups.items():
            first = contexts[members[0]]
            knobs = self._candidates(first)[0]
            chosen = self._selector(first, max_drop).choose(np.stack([contexts[i].cost_norm for i in members]))
            for i, g in zip(members, chosen):
                knob = float(knobs[g]) if self.knob_name == "threshold" else int(knobs[g])
                out[i] = self._with_knob(contexts[i], knob)
        return out  # type: ignore[return-value]


def _solver(spec: PolicySpec, data: _Data, exact: bool) -> _GenericSolver:
    if spec.kind == "fixed":
        return _GenericSolver(spec, data, key=_plan_only)
    if spec.kind == "oracle":  # the cheapest right (route, exit) depends on the order of every route's cost
        return (_GenericSolver if exact else _ManySolver)(spec, data, key=_oracle_key)
    if spec.kind == "random":
        return _RandomSolver(spec, data)
    if spec.kind == "dimee" and not exact:
        return _DimeeSolver(spec, data)
    if spec.kind == "dimee" or (exact and spec.kind == "select"):
        return _GenericSolver(spec, data, key=_fit_input_key)
    if spec.kind == "select":
        return _SelectSolver(spec, data)
    return _GenericSolver(spec, data)


def _fit_input_key(ctx: _Context) -> tuple:
    """What a registry policy's fit reads: the plan, the normalised costs of every (route, exit) without
    payload sizes (the linear route's are among them) and its own parameters."""
    return (ctx.plan, ctx.path_costs.tobytes(), _value_key(ctx.values))  # NaN bytes are deterministic here


@lru_cache(maxsize=64)
def _all_candidates(plan: TierPlan) -> tuple[np.ndarray, np.ndarray]:
    return path_table(plan).candidates(0)


def _oracle_key(ctx: _Context) -> tuple:
    """The oracle's answers depend on the costs only through the order it tries its candidates in."""
    routes, exits = _all_candidates(ctx.plan)
    order = cheapest_first(exits, ctx.path_costs[routes, exits - 1])
    return (ctx.plan, order.tobytes(), _value_key(ctx.values))


# ---- scoring ----------------------------------------------------------------------------------------------
@dataclass
class _CostTable:
    """Normalised route costs of one chunk of settings on one run: per setting [P * L] (no payload), and
    [U, P * L] per token count for the settings with a link rate (NaN cells, routes that cannot answer at a
    depth, hold no samples and count as 0)."""

    flat: list[np.ndarray]
    per_payload: dict[int, np.ndarray]


def _has_rate(cost: CostModel) -> bool:
    return cost.mobile_edge_rate_bps > 0 or cost.edge_cloud_rate_bps > 0 or cost.mobile_cloud_rate_bps > 0


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
    bytes_edge_cloud (fp32 handoff bytes), knob (fitted threshold, patience or DIMEE's k), oracle_cost_gap
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
