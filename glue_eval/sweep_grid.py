"""The cost sweep's grid and policy registry: which fields a grid may sweep, how each registry policy is built
and which grid parameters it consumes (`PolicySpec`, `POLICIES`), and the checks that turn a user's grid into
settings (one dict per point of the cartesian product) before any run is read.

Separate from `glue_eval.sweep` because none of it reads a run or fits a policy: it is the sweep's input
language, imported by the run data, the solvers and the sweep itself.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import product
from typing import Any

import numpy as np

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
)
from tiers import CostModel, TierPlan, TierPlanError


# ---- grid fields ------------------------------------------------------------------------------------------
COST_FIELDS: tuple[str, ...] = tuple(CostModel.field_names())
POLICY_PARAMS: tuple[str, ...] = ("mu", "k", "max_drop", "threshold", "patience")
PLAN_FIELDS: tuple[str, ...] = ("plan", "m", "e")
ORACLE = "oracle"
RANDOM = "random"
ENTRY_THRESHOLD_DEFAULT = 0.9  # dimee-entry-threshold's confidence threshold where a grid sweeps no `threshold`


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
        PolicySpec(  # the grid's `threshold` is its confidence threshold (ENTRY_THRESHOLD_DEFAULT without one)
            "dimee-entry-threshold",
            partial(
                DimeePolicy,
                mu=ENTRY_THRESHOLD_MU,
                decision_exits="all",
                entry="embedding",
                exit_threshold=ENTRY_THRESHOLD_DEFAULT,
            ),
            {"threshold": "exit_threshold", "k": "k_grid"},
            "dimee",
            True,
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


POOLED_SUFFIX = "+oof"  # the report's variants pooled with the out-of-fold split (glue_eval.report.POOL_SUFFIX)


def _resolve_policies(policies: str | Sequence[str | tuple[str, Callable[..., ExitPolicy]]]) -> list[PolicySpec]:
    items = [p.strip() for p in policies.split(",") if p.strip()] if isinstance(policies, str) else list(policies)
    if not items:
        raise ValueError(f"no policies to sweep; choose from {', '.join(POLICIES)}")
    specs: list[PolicySpec] = []
    for item in items:
        if isinstance(item, str):
            if item not in POLICIES and item.endswith(POOLED_SUFFIX):
                raise ValueError(
                    f"policy {item!r} is fitted on calibration pooled with the run's out-of-fold split; the sweep fits "
                    f"every policy on one fit split: sweep {item.removesuffix(POOLED_SUFFIX)!r}, or compare the pooled "
                    "variant with `dimee report`"
                )
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
