"""The tier plan: which contiguous layer range each of mobile, edge and cloud runs."""

from __future__ import annotations

from dataclasses import dataclass

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

    def to_dict(self) -> dict[str, int]:
        return {"mobile_end": self.mobile_end, "edge_end": self.edge_end, "num_layers": self.num_layers}

    @classmethod
    def from_dict(cls, data: dict) -> "TierPlan":
        return cls(int(data["mobile_end"]), int(data["edge_end"]), int(data["num_layers"]))

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
