"""Routes through the three tiers, the step protocol every tier follows, and the segment driver.

A sample starts on mobile. A tier that holds it runs its layers one at a time; before the first layer (mobile
only: depth 0) and after each layer k it asks the policy for an *action* per sample:

* ``j >= 1``: answer at exit j (j <= k, an exit already computed on the way);
* ``CONTINUE`` (0): run layer k + 1 here (not allowed at the tier's last layer);
* ``HANDOFF_EDGE`` (-1) / ``HANDOFF_CLOUD`` (-2): send the sample to that tier at boundary k: token ids when
  k = 0, the hidden states after layer k otherwise. The receiving tier must accept boundary k (see
  :meth:`tiers.TierPlan.accepts`) and runs k + 1 .. onwards; it decides from depth k + 1 on.

A route is the list of stops ``(tier, entry)``; each stop runs layers entry+1 .. where it left. The offline
evaluation (`clustering`), the in-process runner (:func:`tiers.slicing.run_routed`) and the services all drive
a tier through :func:`run_segment`, so they make the same decisions at the same depths, and they all cost an
answer with :meth:`tiers.CostModel.route_breakdown` / :meth:`tiers.CostModel.path_costs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .plan import TIERS, TierPlan, TierPlanError

CONTINUE = 0
HANDOFF_EDGE = -1
HANDOFF_CLOUD = -2


class RouteError(ValueError):
    """An action or route the deployment cannot carry out (a boundary a tier does not accept, ...)."""


def handoff_action(tier: str | int) -> int:
    """The action that hands a sample to `tier` (edge or cloud)."""
    index = TIERS.index(tier) if isinstance(tier, str) else int(tier)
    if index not in (1, 2):
        raise RouteError(f"a sample can be handed off to edge or cloud only, not {tier!r}")
    return -index


def handoff_target(action: int) -> int:
    """Tier index (1 edge, 2 cloud) an action < 0 hands off to."""
    return -int(action)


def hop_name(source: str, target: str) -> str:
    return f"{source}_{target}"


@dataclass(frozen=True)
class Stop:
    """One tier on a sample's route: it entered at boundary `entry` and ran layers entry+1..`left`."""

    tier: str
    entry: int
    left: int

    @property
    def layers(self) -> int:
        return self.left - self.entry

    def label(self) -> str:
        return f"{self.tier}@{self.entry}"


Path = tuple[tuple[str, int], ...]  # the (tier, entry) of each stop, starting with ("mobile", 0)


def path_label(path: Path) -> str:
    return ">".join(f"{tier}@{entry}" for tier, entry in path)


def final_tier_index(plan: TierPlan) -> int:
    """The deepest tier that holds exit L: cloud, or edge when e = L (cloud then holds nothing)."""
    return 2 if plan.edge_end < plan.num_layers else 1


def tier_last_layer(plan: TierPlan, tier: str) -> int:
    return plan.held_range(tier)[1]


def exit_span(plan: TierPlan, path: Path) -> tuple[int, int]:
    """Exits (first, last) the final stop of `path` may answer with, having run at least one layer itself
    (mobile: 1..m; a stop entered at j: j+1..its last layer)."""
    tier, entry = path[-1]
    return entry + 1, tier_last_layer(plan, tier)


def enumerate_paths(plan: TierPlan) -> list[Path]:
    """Every route the deployment allows, mobile-only first. Mobile hands on at any boundary 0..m the
    receiver accepts; edge hands on after its last layer (e), when cloud accepts e. Tiers are visited in
    order mobile, edge, cloud."""
    final = final_tier_index(plan)
    paths: list[Path] = []

    def extend(path: Path) -> None:
        paths.append(path)
        tier, entry = path[-1]
        index = TIERS.index(tier)
        last = tier_last_layer(plan, tier)
        lowest = 0 if tier == "mobile" else last
        for target in range(index + 1, final + 1):
            for boundary in plan.accepts(TIERS[target]):
                if lowest <= boundary <= last and boundary < tier_last_layer(plan, TIERS[target]):
                    extend(path + ((TIERS[target], boundary),))

    extend((("mobile", 0),))
    return paths


def path_stops(plan: TierPlan, path: Path, exit_index: int, depth: int | None = None) -> list[Stop]:
    """The stops of `path` for an answer at `exit_index` given after the final stop ran to `depth`
    (default: the exit itself, as a tier stops as soon as an exit answers)."""
    depth = exit_index if depth is None else depth
    stops = []
    for position, (tier, entry) in enumerate(path):
        left = path[position + 1][1] if position + 1 < len(path) else depth
        stops.append(Stop(tier, entry, left))
    return stops


def reference_path(plan: TierPlan) -> Path:
    """The all-cloud reference route: token ids straight to the final tier, every layer run there."""
    final = TIERS[final_tier_index(plan)]
    if 0 not in plan.accepts(final):
        raise TierPlanError(
            f"{final} does not accept token ids (boundary 0) in this deployment, so the all-cloud reference route "
            "(tokens straight to the cloud) does not exist; add 0 to its accepted boundaries"
        )
    return (("mobile", 0), (final, 0))


def chain_path(plan: TierPlan, exit_index: int) -> Path:
    """The linear route mobile -> edge@m -> cloud@e to an answer at `exit_index`."""
    m, e = plan.mobile_end, plan.edge_end
    path: Path = (("mobile", 0),)
    if exit_index > m:
        if m not in plan.accepts("edge"):
            raise TierPlanError(f"edge does not accept boundary {m} in this deployment: no linear route past mobile")
        path += (("edge", m),)
    if exit_index > e:
        if e not in plan.accepts("cloud"):
            raise TierPlanError(f"cloud does not accept boundary {e} in this deployment: no linear route past edge")
        path += (("cloud", e),)
    return path


# ---- checking actions ---------------------------------------------------------------------------------------
def check_actions(actions: np.ndarray, plan: TierPlan, tier: str, depth: int) -> np.ndarray:
    """Validate the actions returned at (tier, depth); returns them as int64. Raises RouteError naming the
    first kind of invalid action."""
    arr = np.asarray(actions)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise RouteError(f"actions must be a 1-d integer array, got {arr.dtype} of shape {arr.shape}")
    arr = arr.astype(np.int64)
    index = TIERS.index(tier)
    last = tier_last_layer(plan, tier)
    answer = arr > 0
    if (arr[answer] > depth).any():
        raise RouteError(f"at {tier} after layer {depth} an answer can use exits 1..{depth}, got {arr[answer].max()}")
    if depth >= last and (arr == CONTINUE).any():
        raise RouteError(f"{tier} holds no layer after {depth}: a sample there must be answered or handed off")
    for action in np.unique(arr[arr < 0]):
        target = handoff_target(int(action))
        if target <= index or target > final_tier_index(plan):
            raise RouteError(f"{tier} cannot hand a sample to tier index {target}")
        name = TIERS[target]
        if tier != "mobile" and depth != last:
            raise RouteError(f"{tier} hands a sample on only after its last layer ({last}), not after layer {depth}")
        if depth not in plan.accepts(name) or depth >= tier_last_layer(plan, name):
            raise RouteError(
                f"{name} does not accept samples at boundary {depth} (it accepts {list(plan.accepts(name))})"
            )
    return arr


# ---- the segment driver -------------------------------------------------------------------------------------
Decide = Callable[[np.ndarray, int], np.ndarray]  # (row indices at this depth, depth k) -> actions
Advance = Callable[[np.ndarray, int], None]  # (row indices at depth k) -> run layer k + 1 for them


def run_segment(
    plan: TierPlan, tier: str, entries: np.ndarray, decide: Decide, advance: Advance
) -> tuple[np.ndarray, np.ndarray]:
    """Drive one tier over a batch whose sample i entered at boundary `entries[i]`.

    At each depth k the samples present (entered at or before k, not yet finished) that may decide (mobile
    from depth 0, a receiving tier from entry + 1) are asked; those that answer or hand off leave, the rest
    advance one layer together. Returns (action, depth) per sample: the action that ended its stay here and
    the depth it was taken at. Every action is validated (RouteError on a bad one)."""
    entries = np.asarray(entries, dtype=np.int64)
    n = entries.shape[0]
    actions = np.zeros(n, dtype=np.int64)
    depths = np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    if n == 0:
        return actions, depths
    last = tier_last_layer(plan, tier)
    first_decision = entries if tier == "mobile" else entries + 1
    for k in range(int(entries.min()), last + 1):
        deciding = np.flatnonzero(~done & (first_decision <= k))
        if deciding.size:
            chosen = check_actions(decide(deciding, k), plan, tier, k)
            if chosen.shape[0] != deciding.size:
                raise RouteError(f"{deciding.size} samples asked at depth {k} but {chosen.shape[0]} actions returned")
            leaving = chosen != CONTINUE
            actions[deciding[leaving]] = chosen[leaving]
            depths[deciding[leaving]] = k
            done[deciding[leaving]] = True
        if k == last or done.all():
            break
        moving = np.flatnonzero(~done & (entries <= k))
        if moving.size:
            advance(moving, k)
    if not done.all():
        raise RouteError(f"{int((~done).sum())} sample(s) reached the end of {tier} without an answer or a handoff")
    return actions, depths
