"""The cost sweep: every policy over a grid of cost-model fields, policy knobs and tier plans, from cached logits.

``sweep(runs, policies, grid)`` returns one tidy row per (run, setting, policy), where a setting is one point
of the cartesian product of ``grid``. Nothing here runs a model: each run's cached logits are read once, a
policy is refitted on the fit split only where its fit can change, and the scoring of exit decisions is
vectorised.

What is recomputed per setting, and why (this is what makes 10,000 settings cheap):

* A registry policy's fit reads the cost model only through the normalised per-exit cost vector
  (``CostModel.normalised_exit_costs(plan)``, no payload sizes); so link rates never cause a refit, and
  fixed-exit policies (all-*) and the oracle are fitted once per tier plan.
* Threshold / entropy / patience with the knob chosen in fit: their candidate exits on the fit split do not
  depend on costs; only the choice among them does. That choice (``select_setting``'s rule) is made for many
  cost vectors at once with one matrix product; a setting whose cheapest candidates tie to within rounding
  is settled by ``select_setting`` itself, so the result is the refit's, not an approximation of it.
* DIMEE (k-means clusters): the clustering depends on the features, k and the folds only, never on costs or
  mu; costs and mu change only which exit each cluster answers at and which k wins the cross-validation. So
  k-means runs once per (features, fold, k) and is cached; per setting only small [clusters x candidates]
  tables are compared, for all settings of a batch at once. Near-ties (where floating-point summation order
  could flip a choice) are recomputed with the policy's own fitting helpers on the cached clusters. The edge
  stage is fitted on the samples stage 1 sends onward, so its clustering is cached per such sample set.
* Scoring: the task metric, accuracy, tier shares, offloads and bytes depend on the exits only, so they are
  computed once per distinct exit vector; a setting's cost is a dot product of the exit histogram (or, with a
  link rate, the joint histogram of exit and payload size) with that setting's exit costs.

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
from dataclasses import dataclass, field
from functools import partial
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

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
    exit_profile,
    exit_scores,
    patience_counters,
    per_exit_correct,
    select_setting,
)
from clustering.dimee import RoutingStage, _best_candidate_per_group, _kmeans, _standardise
from tiers import (
    CachedSplit,
    CostModel,
    RunInfo,
    TierPlan,
    TierPlanError,
    payload_size,
    read_cached_split,
    read_run_info,
)
from tiers.run import LOGITS_DIR, cached_splits

from .metrics import compute_glue_metrics, predictions_from_logits, primary_metric

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


def _registry() -> dict[str, PolicySpec]:
    select = {"max_drop": "max_drop"}
    threshold = {**select, "threshold": "threshold"}
    dimee = {"mu": "mu", "k": "k_grid"}
    specs = [
        PolicySpec("dimee", DimeePolicy, dimee, "dimee"),
        PolicySpec("dimee-edge", partial(DimeePolicy, edge_stage=True), dimee, "dimee"),
        PolicySpec("dimee-embedding", partial(DimeePolicy, feature="embedding"), dimee, "dimee", True),
        PolicySpec("threshold", partial(ThresholdPolicy, score="confidence"), threshold, "select"),
        PolicySpec("entropy", partial(ThresholdPolicy, score="entropy"), threshold, "select"),
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
            raise ValueError(f"{folder}: dimee-embedding needs {split}.embedding.npy, which the run does not have")
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
    if hidden is None and any(c.mobile_edge_rate_bps > 0 or c.edge_cloud_rate_bps > 0 for c in cost_cache.values()):
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
    payload: np.ndarray | None  # [n] fp32 handoff bytes per eval sample (None: hidden size unknown)
    correct_fit: np.ndarray  # [n_fit, L] bool


def _load(run: _Run, fit_split: str, eval_split: str) -> _Data:
    fit = read_cached_split(run.folder, fit_split)
    evaluation = read_cached_split(run.folder, eval_split)
    if fit.logits.shape[1:] != evaluation.logits.shape[1:]:
        raise ValueError(
            f"{run.folder}: the {fit_split} logits {fit.logits.shape} and the {eval_split} logits "
            f"{evaluation.logits.shape} differ in exits or classes"
        )
    if fit.logits.shape[1] != run.info.plan.num_layers:
        layers = run.info.plan.num_layers
        raise ValueError(f"{run.folder}: logits have {fit.logits.shape[1]} exits, run.json says {layers}")
    task = run.info.task
    metric = primary_metric(task)
    final = predictions_from_logits(task, evaluation.logits[:, -1])
    unique, index = np.unique(np.asarray(evaluation.token_counts, dtype=np.int64), return_inverse=True)
    payload = None
    if run.hidden_size is not None:
        sizes = np.array([payload_size([c], run.hidden_size, "fp32") for c in unique], dtype=np.float64)
        payload = sizes[index]
    return _Data(
        run=run,
        task=task,
        fit=fit,
        eval=evaluation,
        metric_name=metric,
        final_metric=compute_glue_metrics(task, final, evaluation.labels)[metric],
        unique_counts=unique,
        count_index=index.reshape(-1),
        payload=payload,
        correct_fit=per_exit_correct(fit.logits, fit.labels),
    )


# ---- exit statistics (cost-independent) -------------------------------------------------------------------
@dataclass(frozen=True)
class _Stats:
    hist: np.ndarray  # [L] samples per exit
    joint: np.ndarray  # [U, L] samples per (token count, exit)
    values: dict[str, float]


def _digest(exits: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(exits, dtype=np.int64).tobytes(), digest_size=16).hexdigest()


def _exit_stats(data: _Data, plan: TierPlan, exits: np.ndarray) -> _Stats:
    ev = data.eval
    scored = evaluate_exits(exits, ev.logits, ev.labels, plan, CostModel())
    chosen = ev.logits[np.arange(exits.size), exits - 1]
    metric = compute_glue_metrics(data.task, predictions_from_logits(data.task, chosen), ev.labels)[data.metric_name]
    L = plan.num_layers
    joint = np.bincount(data.count_index * L + (exits - 1), minlength=data.unique_counts.size * L)
    crossed_me, crossed_ec = exits > plan.mobile_end, exits > plan.edge_end
    nan = float("nan")
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
        "offloads_mobile_edge": scored["offloads"]["mobile_edge"],
        "offloads_edge_cloud": scored["offloads"]["edge_cloud"],
        "bytes_mobile_edge": nan if data.payload is None else float(data.payload[crossed_me].sum()),
        "bytes_edge_cloud": nan if data.payload is None else float(data.payload[crossed_ec].sum()),
        "n_samples": scored["n_samples"],
    }
    hist = np.bincount(exits - 1, minlength=L).astype(np.float64)
    return _Stats(hist, joint.reshape(-1, L).astype(np.float64), values)


# ---- per-setting context ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Context:
    """One setting as one policy sees it."""

    plan: TierPlan
    cost_model: CostModel
    cost_norm: np.ndarray  # [L] normalised exit costs (what a registry policy's fit reads)
    values: dict[str, Any]  # the grid parameters this policy consumes


@dataclass(frozen=True)
class _Solution:
    exits: np.ndarray  # [n_eval] 1-based exits on the eval split
    knob: float  # the fitted knob (threshold, patience, DIMEE's k), NaN if none
    digest: str = ""  # of `exits`, filled in by __post_init__ (solutions are cached and reused)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", _digest(self.exits))


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
        self.key = key or (lambda ctx: (ctx.plan.spec, _cost_key(ctx), _value_key(ctx.values)))
        self.cache: dict[tuple, _Solution] = {}

    def build(self, ctx: _Context, **override: Any) -> ExitPolicy:
        """The unfitted policy of a setting; `override` replaces constructor keywords (e.g. a fixed knob)."""
        kwargs = {**_policy_kwargs(self.spec, ctx.values), **override}
        return self.spec.build(plan=ctx.plan, cost_model=ctx.cost_model, **kwargs)

    def fitted(self, policy: ExitPolicy, **fit_kwargs: Any) -> _Solution:
        fit, ev = self.data.fit, self.data.eval
        both = fit.embedding is not None and ev.embedding is not None
        features = (fit.embedding, ev.embedding) if both else (None, None)
        policy.fit(fit.logits, fit.labels, features=features[0], **fit_kwargs)
        labels = ev.labels if policy.requires_labels else None
        exits = policy.predict(ev.logits, features[1], labels=labels)
        return _Solution(np.asarray(exits, dtype=np.int64), _knob(policy))

    def solve_one(self, ctx: _Context) -> _Solution:
        key = self.key(ctx)
        if key not in self.cache:
            self.cache[key] = self.fitted(self.build(ctx))
        return self.cache[key]

    def solve(self, contexts: Sequence[_Context], reference: Sequence[np.ndarray] | None = None) -> list[_Solution]:
        return [self.solve_one(ctx) for ctx in contexts]


def _plan_only(ctx: _Context) -> tuple:
    return (ctx.plan.spec,)


class _RandomSolver(_GenericSolver):
    """Random tiers with the reference policy's tier shares (DIMEE's) on the eval split, as in the report."""

    def solve(self, contexts: Sequence[_Context], reference: Sequence[np.ndarray] | None = None) -> list[_Solution]:
        out = []
        for index, ctx in enumerate(contexts):
            ref = None if reference is None else reference[index]
            shares = None
            if ref is not None:
                tiers = ctx.plan.exit_tiers()[ref - 1]
                shares = tuple(np.bincount(tiers, minlength=3).tolist())
            key = (ctx.plan.spec, shares)
            if key not in self.cache:
                policy = self.build(ctx)
                self.cache[key] = self.fitted(policy, **({} if ref is None else {"reference_exits": ref}))
            out.append(self.cache[key])
        return out

    def fitted(self, policy: ExitPolicy, **fit_kwargs: Any) -> _Solution:
        ev = self.data.eval
        ref = fit_kwargs.get("reference_exits")
        policy.fit(ev.logits if ref is not None else self.data.fit.logits, reference_exits=ref)
        return _Solution(np.asarray(policy.predict(ev.logits), dtype=np.int64), float("nan"))


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
        if ctx.plan.spec not in self.candidates:
            fit = self.data.fit
            probe = self.build(ctx, **{self.knob_name: 1.0 if self.knob_name == "threshold" else 1})
            probe.fit(fit.logits, fit.labels)
            if self.knob_name == "threshold":
                scores = exit_scores(fit.logits, probe.score, probe.temperatures_)
                knobs = probe.candidate_thresholds(scores)
                exits = np.stack([probe._exits_from_scores(scores, t) for t in knobs])  # what ThresholdPolicy.fit does
            else:
                counters = patience_counters(fit.logits, probe.tolerance)
                knobs = np.arange(1, max(2, probe.num_layers_))
                exits = np.stack([probe._exits_from_counters(counters, int(p)) for p in knobs])  # as PatiencePolicy.fit
            correct = per_exit_correct(fit.logits, fit.labels, probe.regression_tolerance)
            self.candidates[ctx.plan.spec] = (knobs, exits.astype(np.int64), correct)
        return self.candidates[ctx.plan.spec]

    def _selector(self, ctx: _Context, max_drop: float) -> _Selector:
        key = (ctx.plan.spec, max_drop)
        if key not in self.selectors:
            _, exits, correct = self._candidates(ctx)
            self.selectors[key] = _Selector.build(exits, correct, max_drop)
        return self.selectors[key]

    def _supported(self, ctx: _Context) -> bool:
        proto = self._proto(ctx)
        return proto.selection == "max_drop" and getattr(proto, "temperatures", None) is None

    def _with_knob(self, ctx: _Context, knob: float | int) -> _Solution:
        key = (ctx.plan.spec, knob)
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
                groups.setdefault((ctx.plan.spec, float(self._proto(ctx).max_drop)), []).append(index)
        for (_, max_drop), members in groups.items():
            first = contexts[members[0]]
            knobs = self._candidates(first)[0]
            chosen = self._selector(first, max_drop).choose(np.stack([contexts[i].cost_norm for i in members]))
            for i, g in zip(members, chosen):
                knob = float(knobs[g]) if self.knob_name == "threshold" else int(knobs[g])
                out[i] = self._with_knob(contexts[i], knob)
        return out  # type: ignore[return-value]


# ---- DIMEE: clustering cached, per-setting choices vectorised ---------------------------------------------
@dataclass(frozen=True)
class _Table:
    """One clustering's sufficient statistics for choosing exits: per cluster, the mean correctness at each
    candidate exit on the samples it was fitted on (empty clusters: the overall mean), and on held-out
    samples the per-cluster count and correctness sums."""

    mean_correct: np.ndarray  # [G, J]
    test_sums: np.ndarray  # [G, J]
    test_counts: np.ndarray  # [G]
    n_test: int


def _group_sums(groups: np.ndarray, n_groups: int, values: np.ndarray) -> np.ndarray:
    columns = [np.bincount(groups, weights=values[:, j], minlength=n_groups) for j in range(values.shape[1])]
    return np.stack(columns, axis=1)


def _choose(mean_correct: np.ndarray, penalty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best candidate per (setting, cluster) from mean reward = mean correctness - mu * cost, and whether the
    best two are too close for the choice to be certain. mean_correct [G, J], penalty [K, J]."""
    means = mean_correct[None, :, :] - penalty[:, None, :]  # [K, G, J]
    choice = means.argmax(axis=2)
    if means.shape[2] > 1:
        top2 = np.sort(means, axis=2)[:, :, -2:]
        unclear = (top2[:, :, 1] - top2[:, :, 0] < _TIE).any(axis=1)
    else:
        unclear = np.zeros(means.shape[0], dtype=bool)
    return choice, unclear


class _Stage:
    """One routing stage's fit data (features, correctness at the candidate exits) and its cached k-means.

    Mirrors `clustering.dimee.fit_cluster_stage` step by step (same folds, same standardisation, same
    k-means calls), keeping each clustering so that only the cost-dependent choices are redone."""

    def __init__(self, x: np.ndarray, correct: np.ndarray, candidates: np.ndarray, params: Mapping[str, Any]):
        self.x = x
        self.correct = correct[:, candidates - 1]  # bool [n, J]
        self.correct_f = self.correct.astype(np.float64)
        self.candidates = candidates
        self.n_folds, self.n_init = int(params["n_folds"]), int(params["n_init"])
        self.seed = int(params["random_state"])
        n = x.shape[0]
        self.largest_train = n - math.ceil(n / self.n_folds)
        folds = KFold(n_splits=self.n_folds, shuffle=True, random_state=self.seed)
        self.splits = list(folds.split(x)) if n >= 2 * self.n_folds else []
        self.folds: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, int]] = {}
        self.fulls: dict[int, tuple[RoutingStage, np.ndarray, np.ndarray]] = {}
        self.tables: dict[tuple[int, int], _Table] = {}

    def feasible(self, k_grid: Sequence[int]) -> list[int]:
        return sorted({int(k) for k in k_grid if 1 <= int(k) <= self.largest_train})

    def fold(self, f: int, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Train-cluster labels, held-out assignment and cluster count of fold f with k clusters."""
        if (f, k) not in self.folds:
            train, test = self.splits[f]
            mean, scale = _standardise(self.x[train])
            centers, labels = _kmeans((self.x[train] - mean) / scale, k, self.n_init, self.seed)
            probe = RoutingStage(mean, scale, centers, np.zeros(centers.shape[0], dtype=np.int64), np.zeros(0))
            self.folds[(f, k)] = (labels, probe.assign(self.x[test]), centers.shape[0])
        return self.folds[(f, k)]

    def full(self, k: int) -> tuple[RoutingStage, np.ndarray, np.ndarray]:
        """k-means on all fit samples: the stage (exits to fill in), its k-means labels and its assignment."""
        if k not in self.fulls:
            mean, scale = _standardise(self.x)
            centers, labels = _kmeans((self.x - mean) / scale, k, self.n_init, self.seed)
            sizes = np.bincount(labels, minlength=centers.shape[0])
            stage = RoutingStage(mean, scale, centers, np.zeros(centers.shape[0], dtype=np.int64), sizes)
            self.fulls[k] = (stage, labels, stage.assign(self.x))
        return self.fulls[k]

    def table(self, f: int, k: int) -> _Table:
        """f = -1: the full-data clustering (no held-out part)."""
        if (f, k) not in self.tables:
            if f < 0:
                stage, labels, _ = self.full(k)
                g = stage.centers.shape[0]
                train, test = np.arange(self.x.shape[0]), np.zeros(0, dtype=np.int64)
                assign = test
            else:
                labels, assign, g = self.fold(f, k)
                train, test = self.splits[f]
            counts = np.bincount(labels, minlength=g)
            sums = _group_sums(labels, g, self.correct_f[train])
            overall = self.correct_f[train].mean(axis=0)
            mean_correct = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], overall[None, :])
            test_sums = _group_sums(assign, g, self.correct_f[test])
            self.tables[(f, k)] = _Table(mean_correct, test_sums, np.bincount(assign, minlength=g), int(test.size))
        return self.tables[(f, k)]

    # ---- many settings at once ------------------------------------------------------------------------
    def fast(
        self, penalty: np.ndarray, k_grid: Sequence[int], k_tolerance: float
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """For penalties [K, J] (mu * normalised cost at each candidate): chosen k [K], exits per cluster
        (one array per setting) and which settings are too close to call (to be redone exactly)."""
        K = penalty.shape[0]
        unclear = np.zeros(K, dtype=bool)
        feasible = self.feasible(k_grid)
        if self.splits and feasible:
            cv = np.zeros((K, len(feasible)))
            for col, k in enumerate(feasible):
                for f in range(len(self.splits)):
                    tab = self.table(f, k)
                    choice, close = _choose(tab.mean_correct, penalty)
                    unclear |= close
                    gain = tab.test_sums[np.arange(choice.shape[1])[None, :], choice]  # [K, G]
                    cost = np.take_along_axis(penalty, choice, axis=1) * tab.test_counts[None, :]
                    cv[:, col] += (gain - cost).sum(axis=1) / tab.n_test
                cv[:, col] /= len(self.splits)
            top = cv.max(axis=1)
            bar = top - k_tolerance - 1e-12
            winner = cv.argmax(axis=1)
            near = np.abs(cv - bar[:, None]) < _CV_TIE
            near[np.arange(K), winner] = False
            unclear |= near.any(axis=1)
            best_k = np.array(feasible)[(cv >= bar[:, None]).argmax(axis=1)]
        else:
            best_k = np.ones(K, dtype=np.int64)
        exits: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * K
        for k in np.unique(best_k):
            rows = np.nonzero(best_k == k)[0]
            choice, close = _choose(self.table(-1, int(k)).mean_correct, penalty[rows])
            unclear[rows] |= close
            for row, c in zip(rows, choice):
                exits[row] = self.candidates[c]
        return best_k, exits, unclear

    # ---- one setting, with the policy's own arithmetic --------------------------------------------------
    def exact(self, rewards: np.ndarray, k_grid: Sequence[int], k_tolerance: float) -> tuple[int, np.ndarray]:
        """`fit_cluster_stage` on the cached clusterings: chosen k and exits per cluster."""
        feasible = self.feasible(k_grid)
        if self.splits and feasible:
            cv: dict[int, float] = {}
            for k in feasible:
                held_out = []
                for f, (train, test) in enumerate(self.splits):
                    labels, assign, g = self.fold(f, k)
                    choice = _best_candidate_per_group(labels, g, rewards[train])
                    held_out.append(rewards[test, choice[assign]].mean())
                cv[k] = float(np.mean(held_out))
            best = max(cv.values())
            best_k = min(k for k in cv if cv[k] >= best - k_tolerance - 1e-12)
        else:
            best_k = 1
        stage, labels, _ = self.full(best_k)
        choice = _best_candidate_per_group(labels, stage.centers.shape[0], rewards)
        return best_k, self.candidates[choice]


class _DimeeSolver(_GenericSolver):
    """DIMEE with k-means clusters: see the module doc. Other configurations fall back to refitting."""

    def __init__(self, spec: PolicySpec, data: _Data):
        super().__init__(spec, data)
        self.stages: dict[tuple, _Stage] = {}
        self.predicted: dict[tuple, _Solution] = {}
        self.params: dict[tuple, dict[str, Any]] = {}

    def _params(self, ctx: _Context) -> dict[str, Any]:
        """The policy's parameters for a setting (they depend on the grid values only, not plan or costs)."""
        key = _value_key(ctx.values)
        if key not in self.params:
            self.params[key] = self.build(ctx).get_params(deep=False)
        return self.params[key]

    @staticmethod
    def _supported(params: Mapping[str, Any]) -> bool:
        """The fast path mirrors the per-tier k-means fit; pools, temperatures and the cascade mode
        (`decision_exits`) are refitted through `fit` instead."""
        return (
            params["assignment"] == "clusters"
            and params["temperatures"] is None
            and params.get("decision_exits") is None
        )

    @staticmethod
    def candidates(params: Mapping[str, Any], plan: TierPlan, stage: int) -> np.ndarray:
        """As `DimeePolicy._candidates` (see the policy's module doc: which exits a decision may honestly pick)."""
        m, e, L = plan.mobile_end, plan.edge_end, plan.num_layers
        depth = e if stage == 2 else (m if params["feature"] == "profile" else 1)
        if params["candidate_exits"] == "all":
            cands = set(range(depth, L + 1))
        else:
            cands = {j for j in (m, e, L) if j >= depth}
        if stage == 1 and params["edge_stage"]:
            cands = {j for j in cands if j <= m or j >= e}
        return np.array(sorted(cands), dtype=np.int64)

    def _x(self, params: Mapping[str, Any], split: CachedSplit, depth: int | None) -> np.ndarray:
        if depth is None:
            return np.asarray(split.embedding).astype(np.float64)
        return exit_profile(split.logits[:, :depth], None, tuple(params["profile_features"]), None)

    def _stage1(self, params: Mapping[str, Any], plan: TierPlan) -> _Stage:
        cands = self.candidates(params, plan, 1)
        depth = plan.mobile_end if params["feature"] == "profile" else None
        key = (1, depth, tuple(params["profile_features"]), tuple(cands), params["n_folds"], params["n_init"],
               params["random_state"])  # fmt: skip
        if key not in self.stages:
            correct = per_exit_correct(self.data.fit.logits, self.data.fit.labels, params["regression_tolerance"])
            self.stages[key] = _Stage(self._x(params, self.data.fit, depth), correct, cands, params)
        return self.stages[key]

    def _stage2(self, params: Mapping[str, Any], plan: TierPlan, onward: np.ndarray) -> _Stage:
        cands = self.candidates(params, plan, 2)
        key = (2, plan.edge_end, tuple(params["profile_features"]), tuple(cands), _digest(onward), params["n_folds"],
               params["n_init"], params["random_state"])  # fmt: skip
        if key not in self.stages:
            correct = per_exit_correct(self.data.fit.logits, self.data.fit.labels, params["regression_tolerance"])
            x = self._x(params, self.data.fit, plan.edge_end)[onward]
            self.stages[key] = _Stage(x, correct[onward], cands, params)
        return self.stages[key]

    @staticmethod
    def _onward(stage: _Stage, k: int, exits: np.ndarray, plan: TierPlan) -> np.ndarray:
        onward = exits[stage.full(k)[2]] > plan.mobile_end
        return onward if onward.any() else np.ones_like(onward)

    def solve(self, contexts: Sequence[_Context], reference: Sequence[np.ndarray] | None = None) -> list[_Solution]:
        out: list[_Solution | None] = [None] * len(contexts)
        groups: dict[tuple, list[int]] = {}
        for index, ctx in enumerate(contexts):
            params = self._params(ctx)
            if not self._supported(params):
                out[index] = self.solve_one(ctx)
                continue
            groups.setdefault((ctx.plan.spec, tuple(params["k_grid"])), []).append(index)
        for members in groups.values():
            for index, solution in zip(members, self._solve_group([contexts[i] for i in members])):
                out[index] = solution
        return out  # type: ignore[return-value]

    def _solve_group(self, contexts: list[_Context]) -> list[_Solution]:
        """Settings sharing plan and k grid (so the same clusterings), differing in mu and costs."""
        params = self._params(contexts[0])
        plan, k_grid, tol = contexts[0].plan, tuple(params["k_grid"]), float(params["k_tolerance"])
        mus = np.array([float(self._params(c)["mu"]) for c in contexts])
        cost_norm = np.stack([c.cost_norm for c in contexts])
        stage1 = self._stage1(params, plan)
        pen1 = mus[:, None] * cost_norm[:, stage1.candidates - 1]
        k1, exits1, unclear = stage1.fast(pen1, k_grid, tol)
        second: list[tuple | None] = [None] * len(contexts)
        if params["edge_stage"]:
            by_onward: dict[str, tuple[np.ndarray, list[int]]] = {}
            for i in range(len(contexts)):
                onward = self._onward(stage1, int(k1[i]), exits1[i], plan)
                by_onward.setdefault(_digest(onward), (onward, []))[1].append(i)
            for onward, rows in by_onward.values():
                stage2 = self._stage2(params, plan, onward)
                pen2 = mus[rows, None] * cost_norm[rows][:, stage2.candidates - 1]
                k2, exits2, unclear2 = stage2.fast(pen2, k_grid, tol)
                unclear[rows] |= unclear2
                for j, row in enumerate(rows):
                    second[row] = (stage2, int(k2[j]), exits2[j])
        solutions = []
        for i, ctx in enumerate(contexts):
            if unclear[i]:
                solutions.append(self._exact(ctx, self._params(ctx)))
            else:
                solutions.append(self._predict(ctx, params, (int(k1[i]), exits1[i]), second[i]))
        return solutions

    def _exact(self, ctx: _Context, params: Mapping[str, Any]) -> _Solution:
        """One setting with the policy's own choice arithmetic (`DimeePolicy._rewards` and
        `fit_cluster_stage`), on the cached clusterings."""
        mu, k_grid, tol = params["mu"], tuple(params["k_grid"]), float(params["k_tolerance"])
        stage1 = self._stage1(params, ctx.plan)
        rewards = stage1.correct - mu * ctx.cost_norm[stage1.candidates - 1][None, :]
        k1, exits1 = stage1.exact(rewards, k_grid, tol)
        second = None
        if params["edge_stage"]:
            onward = self._onward(stage1, k1, exits1, ctx.plan)
            stage2 = self._stage2(params, ctx.plan, onward)
            rewards2 = stage2.correct - mu * ctx.cost_norm[stage2.candidates - 1][None, :]
            k2, exits2 = stage2.exact(rewards2, k_grid, tol)
            second = (stage2, k2, exits2)
        return self._predict(ctx, params, (k1, exits1), second)

    def _predict(self, ctx: _Context, params: Mapping[str, Any], first: tuple, second: tuple | None) -> _Solution:
        """Eval exits of the fitted policy, rebuilt through the policy's own (de)serialisation and predict.
        `first`: (k, exits per cluster) of stage 1; `second`: (stage, k, exits per cluster) of the edge stage."""
        stage1 = self._stage1(params, ctx.plan)
        key = (id(stage1), first[0], tuple(first[1].tolist()))
        if second is not None:
            key += (id(second[0]), second[1], tuple(second[2].tolist()))
        if key not in self.predicted:
            routing1 = _with_exits(stage1.full(first[0])[0], first[1])
            routing2 = None if second is None else _with_exits(second[0].full(second[1])[0], second[2])
            policy = self._rebuild(ctx, params, routing1, routing2)
            features = self.data.eval.embedding if params["feature"] == "embedding" else None
            exits = policy.predict(self.data.eval.logits, features)
            self.predicted[key] = _Solution(np.asarray(exits, dtype=np.int64), float(first[0]))
        return self.predicted[key]

    def _rebuild(
        self, ctx: _Context, params: Mapping[str, Any], stage1: RoutingStage, stage2: RoutingStage | None
    ) -> DimeePolicy:
        data = self.build(ctx).to_dict()
        logits = self.data.fit.logits
        data["state"] = {
            "plan": ctx.plan.to_dict(),
            "cost_model": ctx.cost_model.to_dict(),
            "num_layers": int(logits.shape[1]),
            "n_classes": int(logits.shape[2]),
            "n_features": int(self.data.fit.embedding.shape[1]) if params["feature"] == "embedding" else None,
            "temperatures": None,
            "policy": {
                "stage1": stage1.to_dict(),
                "stage2": None if stage2 is None else stage2.to_dict(),
                "n_clusters": int(stage1.centers.shape[0]),
                "edge_n_clusters": 0 if stage2 is None else int(stage2.centers.shape[0]),
                "cv_rewards": {},
                "edge_cv_rewards": {},
                "tier_shares": {"mobile": float("nan"), "edge": float("nan"), "cloud": float("nan")},
                "fit_reward": float("nan"),
                "pool_threshold": None,
            },
        }
        return DimeePolicy.from_dict(data)


def _with_exits(stage: RoutingStage, exits: np.ndarray) -> RoutingStage:
    return RoutingStage(stage.mean, stage.scale, stage.centers, np.asarray(exits, dtype=np.int64), stage.sizes)


def _solver(spec: PolicySpec, data: _Data, exact: bool) -> _GenericSolver:
    if spec.kind in ("fixed", "oracle"):
        return _GenericSolver(spec, data, key=_plan_only)
    if spec.kind == "random":
        return _RandomSolver(spec, data)
    if exact and spec.kind in ("select", "dimee"):
        return _GenericSolver(spec, data, key=_fit_input_key)
    if spec.kind == "select":
        return _SelectSolver(spec, data)
    if spec.kind == "dimee":
        return _DimeeSolver(spec, data)
    return _GenericSolver(spec, data)


def _fit_input_key(ctx: _Context) -> tuple:
    """What a registry policy's fit reads: the plan, the normalised exit costs and its own parameters."""
    return (ctx.plan.spec, ctx.cost_norm.tobytes(), _value_key(ctx.values))


# ---- scoring ----------------------------------------------------------------------------------------------
@dataclass
class _CostTable:
    """Exit costs of one chunk of settings on one run: absolute [K, L], reference [K], and the per-payload
    table [U, L] of the settings with a link rate."""

    absolute: np.ndarray
    reference: np.ndarray
    per_payload: dict[int, np.ndarray]


def _cost_table(data: _Data, plans: list[TierPlan], costs: list[CostModel]) -> _CostTable:
    absolute, reference, per_payload = [], [], {}
    for i, (plan, cost) in enumerate(zip(plans, costs)):
        absolute.append(cost.exit_costs(plan))
        reference.append(cost.reference_cost(plan))
        if cost.mobile_edge_rate_bps > 0 or cost.edge_cloud_rate_bps > 0:
            per_payload[i] = cost.exit_costs(plan, token_counts=data.unique_counts, hidden_size=data.run.hidden_size)
    return _CostTable(np.stack(absolute), np.array(reference), per_payload)


def _normalised_costs(stats: list[_Stats], table: _CostTable) -> np.ndarray:
    hist = np.stack([s.hist for s in stats])
    n = hist.sum(axis=1)
    total = (hist * table.absolute).sum(axis=1)
    for i, per_payload in table.per_payload.items():
        total[i] = (stats[i].joint * per_payload).sum()
    return total / n / table.reference


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
    oracle_accuracy_gap (oracle accuracy - accuracy, never negative), n_samples.

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
                frames.append(_sweep_run(run, specs, settings, list(values), fit_split, eval_split, exact, bar))
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
    fit_split: str,
    eval_split: str,
    exact: bool,
    bar: tqdm,
) -> pd.DataFrame:
    data = _load(run, fit_split, eval_split)
    solvers = {s.name: _solver(s, data, exact) for s in specs}
    order = sorted(specs, key=lambda s: s.kind == "random")  # random needs its reference's exits first
    reference = _reference_name(specs)
    stats_cache: dict[tuple[str, str], _Stats] = {}
    blocks = []
    for start in range(0, len(settings), _CHUNK):
        rows = range(start, min(start + _CHUNK, len(settings)))
        plans = [run.plans[i] for i in rows]
        costs = [run.cost_models[i] for i in rows]
        table = _cost_table(data, plans, costs)
        norm = table.absolute / table.reference[:, None]
        results: dict[str, tuple[list[_Solution], list[_Stats], np.ndarray]] = {}
        for spec in order:
            contexts = [
                _Context(plans[j], costs[j], norm[j], _policy_values(settings[i], spec)) for j, i in enumerate(rows)
            ]
            ref_exits = None
            if spec.kind == "random" and reference is not None:
                ref_exits = [s.exits for s in results[reference][0]]
            solutions = solvers[spec.name].solve(contexts, ref_exits)
            stats = []
            for plan, solution in zip(plans, solutions):
                key = (plan.spec, solution.digest)
                if key not in stats_cache:
                    stats_cache[key] = _exit_stats(data, plan, solution.exits)
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
        "cost_reduction", "share_mobile", "share_edge", "share_cloud", "offloads_mobile_edge", "offloads_edge_cloud",
        "bytes_mobile_edge", "bytes_edge_cloud", "knob", "oracle_cost_gap", "oracle_accuracy_gap", "n_samples",
    ]  # fmt: skip
    for name in ordered:
        columns[name] = np.stack([per_policy[s.name][name] for s in specs], axis=1).reshape(-1)
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
