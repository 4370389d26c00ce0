"""Cost of answering a sample: compute on each tier it visited plus offloading per hop it crossed.

Units are arbitrary; what is reported is the cost normalised by the all-cloud reference route (token ids
straight to the cloud, every layer run there), so that route costs exactly 1.0. One function,
:meth:`CostModel.route_units`, turns (layers run per tier, bytes per hop) into units; the offline evaluation
(vectorised over cached logits, :meth:`CostModel.path_costs`) and the services' per-answer accounting
(:meth:`CostModel.route_breakdown`) both call it, so a served answer costs what the evaluation says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Sequence

import numpy as np

from .codec import hop_payload_size
from .plan import TIERS, TierPlan
from .routes import Path, Stop, chain_path, enumerate_paths, exit_span, path_stops, reference_path

HOPS: tuple[str, ...] = ("mobile_edge", "mobile_cloud", "edge_cloud")
_LEGACY_FIELDS = {"input_to_cloud": "mobile_to_cloud"}  # run.json files written before routes existed


class CostModelError(ValueError):
    """A cost model with a negative, non-finite or unknown setting."""


@dataclass(frozen=True)
class CostModel:
    """Per-layer compute cost per tier and per-hop offloading cost.

    Defaults (a judgement, documented in the README): a mobile layer costs the most (battery), an edge
    layer half of that, a cloud layer a fifth; each hop costs more than a couple of mobile layers, and the
    hop from mobile straight to the cloud (a WAN round trip) the most. If a link rate is set, a hop also
    costs `transmit_cost_per_second` times the time its payload (token ids or hidden states, exact codec
    bytes) takes on that link.
    """

    mobile_layer: float = 0.10
    edge_layer: float = 0.05
    cloud_layer: float = 0.02
    mobile_to_edge: float = 0.20
    edge_to_cloud: float = 0.30
    mobile_to_cloud: float = 0.50
    mobile_edge_rate_bps: float = 0.0  # 0 = payload size ignored on this hop
    edge_cloud_rate_bps: float = 0.0
    mobile_cloud_rate_bps: float = 0.0
    transmit_cost_per_second: float = 1.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise CostModelError(f"cost model field {field.name} must be a finite number >= 0, got {value!r}")

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_values(self, **changes: float) -> "CostModel":
        """A copy with some fields changed; unknown names are an error, not ignored."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise CostModelError(f"unknown cost model field(s) {unknown}; known: {', '.join(self.field_names())}")
        return type(self)(**{**self.__dict__, **{k: float(v) for k, v in changes.items()}})

    @classmethod
    def splitee(cls, offload: float = 0.3) -> "CostModel":
        """The SplitEE preset (same authors): lambda = 0.1 per layer everywhere, offloading o per hop."""
        return cls(0.1, 0.1, 0.1, offload, offload, offload)

    @classmethod
    def offload_dominated(cls) -> "CostModel":
        """Offloading dominates: edge and cloud compute nearly free, every hop dear (that line of work's
        assumption when the servers are plentiful and the radio is what the phone pays for)."""
        return cls(0.10, 0.001, 0.001, 0.5, 0.2, 0.8)

    @classmethod
    def preset(cls, name: str) -> "CostModel":
        """'default', 'splitee' (o = 0.3) or 'offload-dominated'."""
        presets = {"default": cls, "splitee": cls.splitee, "offload-dominated": cls.offload_dominated}
        if name not in presets:
            raise CostModelError(f"unknown cost preset {name!r}; known: {', '.join(presets)}")
        return presets[name]()

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CostModel":
        data = {_LEGACY_FIELDS.get(k, k): v for k, v in data.items()}
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise CostModelError(f"unknown cost model field(s) {unknown}; known: {', '.join(cls.field_names())}")
        return cls(**{k: float(v) for k, v in data.items()})

    # ---- the one accounting ----------------------------------------------------------------------------
    def layer_cost(self, tier: str) -> float:
        return {"mobile": self.mobile_layer, "edge": self.edge_layer, "cloud": self.cloud_layer}[tier]

    def hop_cost(self, hop: str, payload_bytes: float | np.ndarray = 0.0) -> float | np.ndarray:
        """Offloading cost of one hop ('mobile_edge', 'mobile_cloud', 'edge_cloud') carrying `payload_bytes`."""
        if hop not in HOPS:
            raise CostModelError(f"unknown hop {hop!r}; known: {', '.join(HOPS)}")
        fixed, rate = {
            "mobile_edge": (self.mobile_to_edge, self.mobile_edge_rate_bps),
            "edge_cloud": (self.edge_to_cloud, self.edge_cloud_rate_bps),
            "mobile_cloud": (self.mobile_to_cloud, self.mobile_cloud_rate_bps),
        }[hop]
        payload = np.asarray(payload_bytes, dtype=float)
        variable = payload * 8.0 / rate * self.transmit_cost_per_second if rate > 0 else np.zeros_like(payload)
        cost = fixed + variable
        return float(cost) if cost.ndim == 0 else cost

    def route_units(self, stops: list[Stop], bytes_per_hop: dict[str, float | np.ndarray]) -> dict:
        """Compute units per tier, offload units per hop and their total for a route (scalars, or arrays
        over samples when the bytes are arrays). The single place where cost is added up."""
        compute: dict = {tier: 0.0 for tier in TIERS}
        for stop in stops:
            compute[stop.tier] = compute[stop.tier] + stop.layers * self.layer_cost(stop.tier)
        offload: dict = {}
        for before, after in zip(stops[:-1], stops[1:]):
            hop = f"{before.tier}_{after.tier}"
            offload[hop] = self.hop_cost(hop, bytes_per_hop.get(hop, 0.0))
        total = compute["mobile"] + compute["edge"] + compute["cloud"]
        for hop in offload:
            total = total + offload[hop]
        return {"compute_units": compute, "offload_units": offload, "total_units": total}

    def reference_units(self, plan: TierPlan, reference_bytes: float | np.ndarray = 0.0) -> float | np.ndarray:
        """All-cloud reference: token ids straight to the cloud (`reference_bytes` of them), L layers there."""
        path = reference_path(plan)
        stops = path_stops(plan, path, plan.num_layers)
        hop = f"{stops[0].tier}_{stops[1].tier}"
        return self.route_units(stops, {hop: reference_bytes})["total_units"]

    def reference_cost(self, plan: TierPlan) -> float:
        """The reference route's cost without payload-size charges (exact when no link rate is set)."""
        return float(self.reference_units(plan))

    def route_breakdown(
        self, plan: TierPlan, stops: list[Stop], bytes_per_hop: dict[str, int], reference_bytes: int = 0
    ) -> dict:
        """One answered request: layers per tier, compute and offload units, total and normalised cost
        (normalised by the reference route carrying `reference_bytes` of token ids)."""
        units = self.route_units(stops, bytes_per_hop)
        layers = {tier: 0 for tier in TIERS}
        for stop in stops:
            layers[stop.tier] += stop.layers
        return {
            "layers": layers,
            **units,
            "normalised": units["total_units"] / self.reference_units(plan, reference_bytes),
        }

    # ---- vectorised over samples: the offline evaluation ----------------------------------------------
    def path_costs(
        self,
        plan: TierPlan,
        paths: list[Path] | None = None,
        token_counts: np.ndarray | None = None,
        hidden_size: int = 0,
        encoding: str = "fp32",
    ) -> np.ndarray:
        """Normalised cost of answering at exit j by route p: [P, L] without token counts, [n, P, L] with
        them (payload sizes then follow each sample's length). NaN where route p cannot answer at exit j."""
        if token_counts is None:
            return path_costs_many([self], plan, paths)[0]
        paths = enumerate_paths(plan) if paths is None else paths
        L = plan.num_layers
        counts = np.asarray(token_counts, dtype=np.int64)
        table = np.full((counts.shape[0], len(paths), L), np.nan)
        sizes: dict[int, np.ndarray] = {}

        def size(boundary: int) -> np.ndarray:
            if boundary not in sizes:
                sizes[boundary] = np.array(
                    [hop_payload_size([c], boundary, hidden_size, encoding) for c in counts], dtype=float
                )
            return sizes[boundary]

        reference = self.reference_units(plan, size(0))
        if (np.asarray(reference) <= 0).any():
            raise CostModelError(_free_reference_message(plan))
        for p, path in enumerate(paths):
            first, last = exit_span(plan, path)
            for j in range(max(1, first), last + 1):
                stops = path_stops(plan, path, j)
                payload = {f"{a.tier}_{b.tier}": size(b.entry) for a, b in zip(stops[:-1], stops[1:])}
                table[:, p, j - 1] = self.route_units(stops, payload)["total_units"] / reference
        return table

    def linear_values(self) -> np.ndarray:
        """The fields a cost without payload charges is linear in (``LINEAR_FIELDS``), as a vector."""
        return np.array([getattr(self, name) for name in LINEAR_FIELDS], dtype=np.float64)

    def exit_costs(self, plan: TierPlan) -> np.ndarray:
        """Cost units of answering at each exit on the linear route mobile -> edge -> cloud, [L]."""
        return _combine(self.linear_values()[None, :], _chain_units(plan))[0]

    def normalised_exit_costs(self, plan: TierPlan) -> np.ndarray:
        """`exit_costs` / the reference route's cost, [L]."""
        return normalised_exit_costs_many([self], plan)[0]


# ---- costs without payload charges, for many cost models at once ------------------------------------------
#: The fields in the order :meth:`CostModel.route_units` adds a route's terms: compute per tier (mobile, edge,
#: cloud), then each hop in route order (a route visits the tiers in that order, so its hops are a
#: subsequence of these three).
LINEAR_FIELDS: tuple[str, ...] = (
    "mobile_layer", "edge_layer", "cloud_layer", "mobile_to_edge", "edge_to_cloud", "mobile_to_cloud",
)  # fmt: skip


def _unit_model(name: str) -> CostModel:
    return CostModel(**{field: float(field == name) for field in LINEAR_FIELDS})


@lru_cache(maxsize=256)
def _path_units(plan: TierPlan, paths: tuple[Path, ...]) -> tuple[np.ndarray, np.ndarray]:
    """What each linear field contributes to every (route, exit) [F, P, L] (NaN where the route cannot
    answer) and to the reference route [F]: :meth:`CostModel.route_units` under a model with that field 1
    and the others 0 (layer counts and hop counts, so exact)."""
    units = np.full((len(LINEAR_FIELDS), len(paths), plan.num_layers), np.nan)
    reference = np.empty(len(LINEAR_FIELDS))
    for f, name in enumerate(LINEAR_FIELDS):
        unit = _unit_model(name)
        reference[f] = unit.reference_units(plan)
        for p, path in enumerate(paths):
            first, last = exit_span(plan, path)
            for j in range(max(1, first), last + 1):
                units[f, p, j - 1] = unit.route_units(path_stops(plan, path, j), {})["total_units"]
    units.setflags(write=False)
    reference.setflags(write=False)
    return units, reference


@lru_cache(maxsize=256)
def _chain_units(plan: TierPlan) -> np.ndarray:
    """Per linear field, its units for an answer at each exit on the linear route, [F, L]."""
    units = np.array(
        [
            [_unit_model(name).route_units(path_stops(plan, chain_path(plan, j), j), {})["total_units"] for j in range(1, plan.num_layers + 1)]
            for name in LINEAR_FIELDS
        ]
    )
    units.setflags(write=False)
    return units


def _combine(values: np.ndarray, units: np.ndarray) -> np.ndarray:
    """sum_f values[:, f] * units[f], added term by term in ``LINEAR_FIELDS`` order: the same floating-point
    operations as :meth:`CostModel.route_units` (a zero term adds nothing), so the result is bit-identical."""
    out = np.zeros((values.shape[0],) + units.shape[1:])
    for f in range(units.shape[0]):
        out = out + values[:, f].reshape((-1,) + (1,) * (units.ndim - 1)) * units[f]
    return out


def path_costs_many(cost_models: Sequence[CostModel], plan: TierPlan, paths: Sequence[Path] | None = None) -> np.ndarray:
    """:meth:`CostModel.path_costs` (no payload charges) of many cost models at once, [S, P, L]: a cost
    model's route costs are linear in its fields, so each (route, exit)'s field units are counted once."""
    key = tuple(enumerate_paths(plan) if paths is None else paths)
    units, reference = _path_units(plan, key)
    values = np.stack([c.linear_values() for c in cost_models]) if cost_models else np.zeros((0, len(LINEAR_FIELDS)))
    totals = _combine(values, units)
    return totals / _reference_units(values, plan, reference)[:, None, None]


def normalised_exit_costs_many(cost_models: Sequence[CostModel], plan: TierPlan) -> np.ndarray:
    """:meth:`CostModel.normalised_exit_costs` of many cost models at once, [S, L]."""
    values = np.stack([c.linear_values() for c in cost_models]) if cost_models else np.zeros((0, len(LINEAR_FIELDS)))
    _, reference = _path_units(plan, tuple(enumerate_paths(plan)))
    return _combine(values, _chain_units(plan)) / _reference_units(values, plan, reference)[:, None]


def _reference_units(values: np.ndarray, plan: TierPlan, reference: np.ndarray) -> np.ndarray:
    """The reference route's units per cost model [S]; a free reference route cannot normalise: refused."""
    refs = _combine(values, reference[:, None])[:, 0]
    if (refs <= 0).any():
        raise CostModelError(_free_reference_message(plan))
    return refs


def _free_reference_message(plan: TierPlan) -> str:
    final = "cloud" if plan.edge_end < plan.num_layers else "edge"
    hop = "mobile_to_cloud" if final == "cloud" else "mobile_to_edge"
    return (
        f"the all-cloud reference route (token ids straight to {final}, every layer there) costs 0 under this cost "
        f"model, so costs cannot be normalised by it: give {final}_layer (or {hop}) a value > 0"
    )
