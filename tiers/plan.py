"""The tier plan: which contiguous layer range each of mobile, edge and cloud runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TIERS: tuple[str, str, str] = ("mobile", "edge", "cloud")


class TierPlanError(ValueError):
    """A tier plan that does not fit the model (bad boundaries or layer count)."""


@dataclass(frozen=True)
class TierPlan:
    """Mobile runs layers 1..mobile_end, edge mobile_end+1..edge_end, cloud edge_end+1..num_layers.

    Layers and exits are numbered from 1, as in the papers: exit i sits after layer i.
    """

    mobile_end: int
    edge_end: int
    num_layers: int
    #: Layer boundaries at which edge / cloud accept a sample (0 = token ids, j > 0 = hidden states after
    #: layer j). None = the default deployment: edge {0, m}, cloud {0, m, e}. A tier holds the layers from
    #: its smallest accepted boundary + 1 to its end (and the embeddings when it accepts 0).
    edge_accepts: tuple[int, ...] | None = field(default=None)
    cloud_accepts: tuple[int, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        m, e, n = self.mobile_end, self.edge_end, self.num_layers
        if not all(isinstance(v, (int, np.integer)) for v in (m, e, n)):
            raise TierPlanError(f"tier plan boundaries must be integers, got m={m!r}, e={e!r}, L={n!r}")
        if n < 2:
            raise TierPlanError(f"a three-tier plan needs a model with at least 2 layers; this one has {n}")
        if not 1 <= m < e <= n:
            raise TierPlanError(
                f"tier plan m={m}, e={e} does not fit a {n}-layer model: need 1 <= m < e <= {n} "
                f"(mobile runs 1..m, edge m+1..e, cloud e+1..{n}); for example --plan {default_plan(n).spec}"
            )
        edge = self._check_accepts("edge", self.edge_accepts, (0, m), m)
        cloud_default = (0, m, e) if e < n else ()
        cloud = self._check_accepts("cloud", self.cloud_accepts, cloud_default, e if e < n else -1)
        object.__setattr__(self, "edge_accepts", edge)
        object.__setattr__(self, "cloud_accepts", cloud)

    def _check_accepts(
        self, tier: str, given: tuple[int, ...] | None, default: tuple[int, ...], highest: int
    ) -> tuple[int, ...]:
        if given is None:
            return tuple(default)
        try:
            values = tuple(sorted({int(v) for v in given}))
        except (TypeError, ValueError):
            raise TierPlanError(f"{tier}_accepts must be a list of layer boundaries, got {given!r}") from None
        if any(isinstance(v, bool) for v in given) or any(int(v) != v for v in given):
            raise TierPlanError(f"{tier}_accepts must hold integer layer boundaries, got {given!r}")
        if highest < 0 and values:
            raise TierPlanError(f"cloud holds no layers in plan {self.spec} of {self.num_layers} layers; it accepts nothing")
        if highest >= 0 and not values:
            raise TierPlanError(f"{tier} must accept at least one layer boundary (0 = token ids, m = {self.mobile_end})")
        bad = [v for v in values if not 0 <= v <= highest]
        if bad:
            raise TierPlanError(
                f"{tier} cannot accept samples at boundaries {bad}: allowed 0..{highest} (0 = token ids, j = hidden "
                f"states after layer j, which the tier before it can produce)"
            )
        return values

    def accepts(self, tier: str) -> tuple[int, ...]:
        """Layer boundaries at which `tier` accepts a sample (mobile takes only texts: none)."""
        if tier == "mobile":
            return ()
        if tier == "edge":
            return tuple(self.edge_accepts)
        if tier == "cloud":
            return tuple(self.cloud_accepts)
        raise TierPlanError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")

    def held_range(self, tier: str) -> tuple[int, int]:
        """First and last layer whose weights `tier` holds: mobile 1..m; edge and cloud from their smallest
        accepted boundary + 1 to their end (1..e and 1..L in the default deployment)."""
        first, last = self.layer_range(tier)
        if tier == "mobile" or first > last:
            return first, last
        return min(self.accepts(tier)) + 1, last

    def holds_embeddings(self, tier: str) -> bool:
        """Whether `tier` embeds token ids: mobile always, edge and cloud when they accept boundary 0."""
        return tier == "mobile" or 0 in self.accepts(tier)

    @property
    def is_default_deployment(self) -> bool:
        return self == TierPlan(self.mobile_end, self.edge_end, self.num_layers)

    @property
    def spec(self) -> str:
        """The plan as the CLI writes it: 'm,e'."""
        return f"{self.mobile_end},{self.edge_end}"

    def layer_range(self, tier: str) -> tuple[int, int]:
        """First and last layer (1-based, inclusive) that `tier` runs; first > last means none."""
        bounds = {
            "mobile": (1, self.mobile_end),
            "edge": (self.mobile_end + 1, self.edge_end),
            "cloud": (self.edge_end + 1, self.num_layers),
        }
        if tier not in bounds:
            raise TierPlanError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
        return bounds[tier]

    def tier_of_exit(self, exit_index: int) -> str:
        """The tier that holds exit `exit_index` (1-based)."""
        if not 1 <= exit_index <= self.num_layers:
            raise TierPlanError(f"exit {exit_index} does not exist; exits are 1..{self.num_layers}")
        return TIERS[int(self.exit_tiers()[exit_index - 1])]

    def exit_tiers(self) -> np.ndarray:
        """Tier index (0 mobile, 1 edge, 2 cloud) of every exit, shape [num_layers]."""
        exits = np.arange(1, self.num_layers + 1)
        return (exits > self.mobile_end).astype(int) + (exits > self.edge_end).astype(int)

    def last_exit(self, tier: str) -> int:
        """The deepest exit a tier holds (the one an 'all-<tier>' policy answers at)."""
        first, last = self.layer_range(tier)
        if first > last:
            raise TierPlanError(f"tier {tier} holds no layers in plan {self.spec} of a {self.num_layers}-layer model")
        return last

    def to_dict(self) -> dict:
        return {
            "mobile_end": self.mobile_end,
            "edge_end": self.edge_end,
            "num_layers": self.num_layers,
            "edge_accepts": list(self.edge_accepts),
            "cloud_accepts": list(self.cloud_accepts),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "TierPlan":
        """Read `to_dict` output; a plan written before routes existed gets the default deployment."""
        edge, cloud = data.get("edge_accepts"), data.get("cloud_accepts")
        return cls(
            int(data["mobile_end"]),
            int(data["edge_end"]),
            int(data["num_layers"]),
            None if edge is None else tuple(edge),
            None if cloud is None else tuple(cloud),
        )

    def with_accepts(self, edge: tuple[int, ...] | None = None, cloud: tuple[int, ...] | None = None) -> "TierPlan":
        return TierPlan(self.mobile_end, self.edge_end, self.num_layers, edge, cloud)

    @classmethod
    def parse(cls, spec: str, num_layers: int) -> "TierPlan":
        """Read 'm,e' (as given on the command line) for a model of `num_layers` layers."""
        parts = [p.strip() for p in str(spec).split(",")]
        if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
            raise TierPlanError(f"tier plan {spec!r} is not of the form 'm,e' (e.g. '2,4': mobile 1-2, edge 3-4)")
        return cls(int(parts[0]), int(parts[1]), num_layers)


def default_plan(num_layers: int) -> TierPlan:
    """Thirds of the depth: 6 layers -> mobile 1-2, edge 3-4, cloud 5-6; 12 -> 1-4, 5-8, 9-12."""
    if num_layers < 2:
        raise TierPlanError(f"a three-tier plan needs a model with at least 2 layers; this one has {num_layers}")
    mobile_end = max(1, num_layers // 3)
    edge_end = max(mobile_end + 1, (2 * num_layers) // 3)
    return TierPlan(mobile_end, edge_end, num_layers)
