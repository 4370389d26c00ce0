"""Policies speak routes: step actions from targets or per-exit rules, and the offline simulation.

A policy answers :meth:`ExitPolicy.step` at each (tier, depth) a sample is held at (the protocol is in
`tiers.routes`). Offline, :func:`simulate` drives the same protocol over cached logits with the same
segment driver the in-process runner and the services use (`tiers.run_segment`), so a policy's offline
outcome (route, exit, depth per sample) is what the served system does with the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from tiers import (
    CONTINUE,
    TIERS,
    Path,
    TierPlan,
    chain_path,
    enumerate_paths,
    exit_span,
    final_tier_index,
    handoff_action,
    path_label,
    run_segment,
)

from .errors import PolicyError


@dataclass(frozen=True)
class PathTable:
    """The deployment's routes, indexed; for each route and tier, where the route leaves that tier."""

    plan: TierPlan
    paths: tuple[Path, ...]
    leave_at: np.ndarray  # [P, 3]: boundary at which the route hands on from tier t; -1 if it answers there
    #                     or never visits t
    next_tier: np.ndarray  # [P, 3]: tier index it hands on to from t, -1 if none
    final: np.ndarray  # [P]: tier index of the stop that answers
    entry: np.ndarray  # [P]: entry boundary of that stop

    @classmethod
    def of(cls, plan: TierPlan) -> "PathTable":
        paths = tuple(enumerate_paths(plan))
        leave = np.full((len(paths), 3), -1, dtype=np.int64)
        nxt = np.full((len(paths), 3), -1, dtype=np.int64)
        final = np.zeros(len(paths), dtype=np.int64)
        entry = np.zeros(len(paths), dtype=np.int64)
        for p, path in enumerate(paths):
            for (tier, _), (following, boundary) in zip(path[:-1], path[1:]):
                leave[p, TIERS.index(tier)] = boundary
                nxt[p, TIERS.index(tier)] = TIERS.index(following)
            final[p] = TIERS.index(path[-1][0])
            entry[p] = path[-1][1]
        return cls(plan, paths, leave, nxt, final, entry)

    def index(self, path: Path) -> int:
        try:
            return self.paths.index(tuple(path))
        except ValueError:
            raise PolicyError(f"route {path_label(path)} is not one this deployment allows") from None

    def chain_indices(self, exits: np.ndarray) -> np.ndarray:
        """Route index of the linear route to each exit."""
        lookup = np.array([self.index(chain_path(self.plan, j)) for j in range(1, self.plan.num_layers + 1)])
        return lookup[np.asarray(exits, dtype=np.int64) - 1]

    def labels(self) -> list[str]:
        return [path_label(path) for path in self.paths]

    def candidates(self, from_depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Every (route, exit) a decision taken on mobile at `from_depth` can still reach: answer on mobile
        at an exit >= that depth, or hand on at a boundary >= it. Returns (route indices, exits)."""
        routes, exits = [], []
        for p, path in enumerate(self.paths):
            first, last = exit_span(self.plan, path)
            if len(path) == 1:
                first = max(first, from_depth)
            elif path[1][1] < from_depth:
                continue
            for j in range(first, last + 1):
                routes.append(p)
                exits.append(j)
        return np.array(routes, dtype=np.int64), np.array(exits, dtype=np.int64)


_TABLES: dict[TierPlan, PathTable] = {}


def path_table(plan: TierPlan) -> PathTable:
    if plan not in _TABLES:
        _TABLES[plan] = PathTable.of(plan)
    return _TABLES[plan]


# ---- actions from targets and from per-exit rules ---------------------------------------------------------
def follow_targets(table: PathTable, routes: np.ndarray, exits: np.ndarray, tier: int, depth: int) -> np.ndarray:
    """Actions at (tier, depth) for samples whose target is (route, exit): answer once the exit is reached on
    the answering tier, hand on where the route leaves this tier, continue otherwise."""
    routes = np.asarray(routes, dtype=np.int64)
    exits = np.asarray(exits, dtype=np.int64)
    answers_here = table.final[routes] == tier
    leave = table.leave_at[routes, tier]
    actions = np.full(routes.shape[0], CONTINUE, dtype=np.int64)
    actions = np.where(answers_here & (depth >= exits), exits, actions)
    hand = ~answers_here & (leave == depth)
    actions = np.where(hand, -table.next_tier[routes, tier], actions)
    return actions


def chain_actions(passes_now: np.ndarray, plan: TierPlan, tier: int, depth: int) -> np.ndarray:
    """Actions of a rule on the linear route: answer at this exit where it passes; at the tier's last layer
    hand on to the next tier of the chain (the final tier answers)."""
    n = passes_now.shape[0]
    last = plan.held_range(TIERS[tier])[1]
    if depth == 0:
        return np.full(n, CONTINUE, dtype=np.int64)
    passes = np.asarray(passes_now, dtype=bool)
    if depth < last:
        return np.where(passes, depth, CONTINUE).astype(np.int64)
    if tier == final_tier_index(plan):
        return np.full(n, depth, dtype=np.int64)
    return np.where(passes, depth, handoff_action(tier + 1)).astype(np.int64)


# ---- the offline simulation ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    """Where each sample was answered: route index (into `table.paths`), exit, and the depth its answering
    stop ran to (>= exit; equal unless a policy answers with an earlier exit than the last it computed)."""

    table: PathTable
    routes: np.ndarray
    exits: np.ndarray
    depths: np.ndarray

    def route_labels(self) -> list[str]:
        labels = self.table.labels()
        return [labels[r] for r in self.routes]


StepFn = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]  # (rows, logits_seen, tier, depth) -> actions


def simulate(plan: TierPlan, n: int, logits: np.ndarray, step: StepFn) -> Outcome:
    """Drive every tier through `tiers.run_segment` on cached logits [n, L, C]; `step(rows, seen, tier, k)`
    gives the actions of samples `rows` at depth k with `seen` = their logits of exits 1..k."""
    table = path_table(plan)
    entered = np.full((n, 3), -1, dtype=np.int64)  # boundary at which each sample entered mobile, edge, cloud
    entered[:, 0] = 0
    exits = np.zeros(n, dtype=np.int64)
    depths = np.zeros(n, dtype=np.int64)
    members = {0: np.arange(n)}
    entries = {0: np.zeros(n, dtype=np.int64)}
    for tier in range(final_tier_index(plan) + 1):
        rows = members.get(tier)
        if rows is None or rows.size == 0:
            continue
        name = TIERS[tier]

        def decide(local: np.ndarray, k: int, rows: np.ndarray = rows, tier: int = tier) -> np.ndarray:
            return step(rows[local], logits[rows[local], :k], tier, k)

        actions, at = run_segment(plan, name, entries[tier], decide, lambda local, k: None)
        answered = actions > 0
        exits[rows[answered]] = actions[answered]
        depths[rows[answered]] = at[answered]
        for target in (1, 2):
            going = np.flatnonzero(actions == -target)
            if going.size == 0:
                continue
            entered[rows[going], target] = at[going]
            members[target] = np.concatenate([members.get(target, np.zeros(0, dtype=np.int64)), rows[going]])
            entries[target] = np.concatenate([entries.get(target, np.zeros(0, dtype=np.int64)), at[going]])
    if (exits == 0).any():
        raise PolicyError("the simulation left samples unanswered (a bug in the segment driver)")
    return Outcome(table, _route_indices(table, entered), exits, depths)


def _route_indices(table: PathTable, entered: np.ndarray) -> np.ndarray:
    """Route index per sample from the boundary at which it entered each tier (-1: never there); a route
    visits the tiers in order, each at most once, so these boundaries are the route."""
    lookup = {path: p for p, path in enumerate(table.paths)}
    combos, inverse = np.unique(entered, axis=0, return_inverse=True)
    indices = []
    for combo in combos:
        path = tuple((TIERS[t], int(b)) for t, b in enumerate(combo) if b >= 0)
        indices.append(lookup[path])
    return np.asarray(indices, dtype=np.int64)[inverse.reshape(-1)]


def outcome_of_chain_exits(plan: TierPlan, exits: np.ndarray) -> Outcome:
    """The outcome of answering at `exits` on the linear route, stopping at each exit."""
    table = path_table(plan)
    arr = np.asarray(exits, dtype=np.int64)
    return Outcome(table, table.chain_indices(arr), arr, arr.copy())
