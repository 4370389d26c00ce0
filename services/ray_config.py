"""What `dimee serve-ray` deploys, without Ray: the replica spec, each tier's settings under one Ray HTTP proxy,
and Ray Serve's own config file (YAML) for the same deployment.

Layout: the three tiers are three Ray Serve applications, one deployment each, behind Ray's HTTP proxy on route
prefixes /mobile, /edge and /cloud (`ROUTE_PREFIXES`); a tier's next-tier URL is the proxy's address with that
tier's prefix (mobile: next_url http://127.0.0.1:8000/edge and cloud_url .../cloud; edge: next_url .../cloud). Ray
runs a proxy on every node, so each replica sends its handoffs to the proxy of its own node (127.0.0.1), which
spreads them over all replicas of the next tier in the cluster: the tiers never learn where a replica lives.

Importing this module never imports ray (the CLI checks a spec and writes a config file without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiers import TIERS

#: The route prefix of each tier's application on the Ray HTTP proxy.
ROUTE_PREFIXES: dict[str, str] = {tier: f"/{tier}" for tier in TIERS}
#: Ray Serve's default HTTP proxy port.
DEFAULT_HTTP_PORT = 8000
#: Name of the deployment (inside each tier's application) and import path of the application builder.
DEPLOYMENT_NAME = "DimeeTier"
BUILDER_IMPORT_PATH = "services.ray_serve:build_app"
INSTALL_HINT = "Ray Serve is not installed; install the extra: pip install -e .[ray]"
MAX_REPLICAS = 1024
#: Requests one replica takes at a time (Ray's max_ongoing_requests, whose default 5 would starve a tier's
#: micro-batcher: it batches the requests that arrive together, so it needs many in flight).
MAX_ONGOING_REQUESTS = 64


class ReplicaSpecError(ValueError):
    """A --replicas spec this command cannot use (the message says why, in one line)."""


class RayMissing(RuntimeError):
    """ray[serve] is not importable."""


def require_ray() -> None:
    """RayMissing (with the install hint) unless `ray.serve` can be imported."""
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        raise RayMissing(INSTALL_HINT) from None


@dataclass(frozen=True)
class Scaling:
    """Replicas of one tier: a fixed count (min == max), or autoscaling between min and max."""

    min_replicas: int
    max_replicas: int

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas != self.max_replicas

    def deployment_options(
        self, target_ongoing_requests: float | None = None, max_ongoing_requests: int = MAX_ONGOING_REQUESTS
    ) -> dict[str, Any]:
        """Ray Serve deployment options: num_replicas or autoscaling_config (Ray's own keys), and
        max_ongoing_requests."""
        if not self.autoscaling:
            return {"num_replicas": self.min_replicas, "max_ongoing_requests": max_ongoing_requests}
        config: dict[str, Any] = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "initial_replicas": max(1, self.min_replicas),
        }
        if target_ongoing_requests is not None:
            config["target_ongoing_requests"] = target_ongoing_requests
        return {"autoscaling_config": config, "max_ongoing_requests": max_ongoing_requests}


def parse_replicas(spec: str) -> dict[str, Scaling]:
    """'mobile=1,edge=2,cloud=1-4' -> the replicas of each tier; tiers not named get one replica.

    `tier=N` is a fixed count (N >= 1); `tier=MIN-MAX` autoscales between MIN (>= 0) and MAX (>= MIN, >= 1)."""
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if not parts:
        raise ReplicaSpecError(
            f"--replicas names no tier; give e.g. mobile=1,edge=2,cloud=2 (tiers: {', '.join(TIERS)})"
        )
    scaling: dict[str, Scaling] = {}
    for part in parts:
        tier, sep, count = (piece.strip() for piece in part.partition("="))
        if not sep or tier not in TIERS:
            raise ReplicaSpecError(
                f"--replicas: {part!r} names no tier; write TIER=COUNT or TIER=MIN-MAX with TIER one of "
                f"{', '.join(TIERS)} (e.g. mobile=1,edge=2,cloud=1-4)"
            )
        if tier in scaling:
            raise ReplicaSpecError(f"--replicas names {tier} twice")
        scaling[tier] = _parse_count(tier, count)
    return {tier: scaling.get(tier, Scaling(1, 1)) for tier in TIERS}


def _parse_count(tier: str, count: str) -> Scaling:
    low, dash, high = count.partition("-")
    try:
        lo, hi = int(low), int(high if dash else low)
    except ValueError:
        raise ReplicaSpecError(
            f"--replicas: {tier}={count!r} is not a count; write {tier}=N (N >= 1) or {tier}=MIN-MAX"
        ) from None
    if not dash and lo < 1:
        raise ReplicaSpecError(f"--replicas: {tier}={count} must be at least 1 (or MIN-MAX to autoscale from MIN)")
    if dash and (lo < 0 or hi < max(lo, 1)):
        raise ReplicaSpecError(f"--replicas: {tier}={count} needs 0 <= MIN <= MAX and MAX >= 1")
    if hi > MAX_REPLICAS:
        raise ReplicaSpecError(f"--replicas: {tier}={count} exceeds {MAX_REPLICAS} replicas")
    return Scaling(lo, hi)


def proxy_url(host: str = "127.0.0.1", port: int = DEFAULT_HTTP_PORT) -> str:
    """Base URL of the Ray HTTP proxy as seen from a replica (its own node's proxy by default)."""
    return f"http://{host}:{port}"


def tier_fields(tier: str, run_dir: str | Path, proxy: str, plan: str | None = None) -> dict[str, Any]:
    """TierSettings fields of `tier` under the proxy at `proxy`: its run folder and next-tier URLs. Everything
    else (batch window, timeouts, the token) comes from the replica's DIMEE_* environment or the caller."""
    fields: dict[str, Any] = {"tier": tier, "run_dir": str(Path(run_dir).resolve())}
    if plan:
        fields["plan"] = plan
    if tier == "mobile":
        fields["next_url"] = proxy + ROUTE_PREFIXES["edge"]
        fields["cloud_url"] = proxy + ROUTE_PREFIXES["cloud"]
    elif tier == "edge":
        fields["next_url"] = proxy + ROUTE_PREFIXES["cloud"]
    return fields


def serve_config(
    run_dir: str | Path,
    scaling: dict[str, Scaling],
    http_port: int = DEFAULT_HTTP_PORT,
    plan: str | None = None,
    replica_cpus: float = 1.0,
    target_ongoing_requests: float | None = None,
    settings: dict[str, Any] | None = None,
    max_ongoing_requests: int = MAX_ONGOING_REQUESTS,
) -> dict[str, Any]:
    """Ray Serve's config file (the schema of `serve deploy` / `serve run`) for the three tiers: one application
    per tier built by `services.ray_serve:build_app`. The token is not in it: each replica reads
    DIMEE_HANDOFF_TOKEN from its environment (set it on every node, e.g. before `ray start`)."""
    proxy = proxy_url(port=http_port)
    applications = []
    for tier in reversed(TIERS):  # cloud first, as serve-ray deploys them
        options = {
            "name": DEPLOYMENT_NAME,
            **scaling[tier].deployment_options(target_ongoing_requests, max_ongoing_requests),
            "ray_actor_options": {"num_cpus": replica_cpus},
        }
        args = {**tier_fields(tier, run_dir, proxy, plan), **(settings or {})}
        applications.append(
            {
                "name": tier,
                "route_prefix": ROUTE_PREFIXES[tier],
                "import_path": BUILDER_IMPORT_PATH,
                "args": args,
                "deployments": [options],
            }
        )
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": applications,
    }
