"""Cost of answering a sample at a given exit: compute on each tier plus offloading per hop.

Units are arbitrary; what is reported is the cost normalised by the all-cloud reference (send the input to
the cloud and run every layer there). One object serves the offline evaluation (vectorised over cached
logits) and the services' per-request accounting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from .codec import payload_size
from .plan import TIERS, TierPlan


class CostModelError(ValueError):
    """A cost model with a negative, non-finite or unknown setting."""


@dataclass(frozen=True)
class CostModel:
    """Per-layer compute cost per tier and per-hop offloading cost.

    Defaults (a judgement, documented in the README): a mobile layer costs the most (battery), an edge
    layer half of that, a cloud layer a fifth; each hop costs more than a couple of mobile layers, and
    sending the raw input to the cloud (the all-cloud reference) costs a WAN round trip. If a link rate is
    set, a hop also costs `transmit_cost_per_second` times the time its payload takes on that link.
    """

    mobile_layer: float = 0.10
    edge_layer: float = 0.05
    cloud_layer: float = 0.02
    mobile_to_edge: float = 0.20
    edge_to_cloud: float = 0.30
    input_to_cloud: float = 0.50
    mobile_edge_rate_bps: float = 0.0  # 0 = payload size ignored on this hop
    edge_cloud_rate_bps: float = 0.0
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
        return replace(self, **{k: float(v) for k, v in changes.items()})

    @classmethod
    def splitee(cls, offload: float = 0.3) -> "CostModel":
        """The SplitEE preset (same authors): lambda = 0.1 per layer everywhere, offloading o per hop."""
        return cls(0.1, 0.1, 0.1, offload, offload, offload, 0.0, 0.0, 1.0)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CostModel":
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise CostModelError(f"unknown cost model field(s) {unknown}; known: {', '.join(cls.field_names())}")
        return cls(**{k: float(v) for k, v in data.items()})

    # ---- per-exit costs ------------------------------------------------------------------------------
    def layer_costs(self, plan: TierPlan) -> np.ndarray:
        """Compute cost of each layer 1..L under the plan, shape [L]."""
        per_tier = np.array([self.mobile_layer, self.edge_layer, self.cloud_layer])
        return per_tier[plan.exit_tiers()]

    def hop_cost(self, hop: str, payload_bytes: float | np.ndarray = 0.0) -> float | np.ndarray:
        """Offloading cost of one hop ('mobile_edge' or 'edge_cloud') carrying `payload_bytes`."""
        fixed, rate = {
            "mobile_edge": (self.mobile_to_edge, self.mobile_edge_rate_bps),
            "edge_cloud": (self.edge_to_cloud, self.edge_cloud_rate_bps),
        }[hop]
        payload = np.asarray(payload_bytes, dtype=float)
        variable = payload * 8.0 / rate * self.transmit_cost_per_second if rate > 0 else np.zeros_like(payload)
        cost = fixed + variable
        return float(cost) if cost.ndim == 0 else cost

    def exit_costs(
        self,
        plan: TierPlan,
        token_counts: np.ndarray | None = None,
        hidden_size: int = 0,
        encoding: str = "fp32",
    ) -> np.ndarray:
        """Cost of answering at each exit. Shape [L] without token counts; [n, L] with them (then the
        hops' payload sizes, and so their cost on a rate-limited link, depend on each sample's length)."""
        compute = np.cumsum(self.layer_costs(plan))
        exits = np.arange(1, plan.num_layers + 1)
        past_mobile = exits > plan.mobile_end
        past_edge = exits > plan.edge_end
        if token_counts is None:
            return compute + past_mobile * self.hop_cost("mobile_edge") + past_edge * self.hop_cost("edge_cloud")
        counts = np.asarray(token_counts, dtype=np.int64)
        sizes = np.array([payload_size([c], hidden_size, encoding) for c in counts], dtype=float)
        to_edge = self.hop_cost("mobile_edge", sizes)[:, None]
        to_cloud = self.hop_cost("edge_cloud", sizes)[:, None]
        return compute[None, :] + past_mobile[None, :] * to_edge + past_edge[None, :] * to_cloud

    def reference_cost(self, plan: TierPlan) -> float:
        """All-cloud: ship the input to the cloud and run all L layers there."""
        return self.input_to_cloud + plan.num_layers * self.cloud_layer

    def normalised_exit_costs(self, plan: TierPlan, **kwargs) -> np.ndarray:
        return self.exit_costs(plan, **kwargs) / self.reference_cost(plan)

    # ---- accounting for one answered request (the services use this) ---------------------------------
    def breakdown(self, plan: TierPlan, exit_index: int, bytes_per_hop: dict[str, int] | None = None) -> dict:
        """Layers per tier, compute and offload units, total and normalised cost of one answer."""
        bytes_per_hop = bytes_per_hop or {}
        layers = {}
        compute = {}
        per_layer = dict(zip(TIERS, (self.mobile_layer, self.edge_layer, self.cloud_layer)))
        for tier in TIERS:
            first, last = plan.layer_range(tier)
            ran = max(0, min(last, exit_index) - first + 1)
            layers[tier] = ran
            compute[tier] = ran * per_layer[tier]
        offload = {}
        if exit_index > plan.mobile_end:
            offload["mobile_edge"] = self.hop_cost("mobile_edge", bytes_per_hop.get("mobile_edge", 0))
        if exit_index > plan.edge_end:
            offload["edge_cloud"] = self.hop_cost("edge_cloud", bytes_per_hop.get("edge_cloud", 0))
        total = sum(compute.values()) + sum(offload.values())
        return {
            "layers": layers,
            "compute_units": compute,
            "offload_units": offload,
            "total_units": total,
            "normalised": total / self.reference_cost(plan),
        }
