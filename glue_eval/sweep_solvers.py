"""The cost sweep's solvers: each setting's exit decisions on the eval split for one policy on one run, and
the cost-independent statistics of those decisions.

A solver (`_solver` picks one per policy kind) fits a policy only where its fit can change (see
`glue_eval.sweep`'s module doc): `_GenericSolver` once per distinct fit input, `_ManySolver` / `_DimeeSolver`
through one ``fit_many`` per plan, `_SelectSolver` by choosing threshold / patience knobs for many cost
vectors at once (`_Selector`), `_RandomSolver` with the reference policy's tier shares. `_exit_stats` scores a
`_Solution` once per distinct outcome. Separate from `glue_eval.sweep`, which only walks the settings and
assembles the table, so that each file stays readable in one sitting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from clustering import (
    ExitPolicy,
    Outcome,
    evaluate_exits,
    exit_scores,
    patience_counters,
    path_table,
    per_exit_correct,
    select_setting,
)
from clustering.baselines import cheapest_first
from tiers import CostModel, TierPlan, hop_payload_size

from .metrics import compute_glue_metrics, predictions_from_logits
from .sweep_data import _Data
from .sweep_grid import PolicySpec, _policy_kwargs
from .tasks import run_task

_TIE = 3e-12  # gaps below this may be reordered by float summation order / rounding to 12 decimals


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
    if getattr(policy, "exit_threshold", None) is not None:  # DIMEE over threshold stages: its threshold
        return float(policy.exit_threshold)
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
