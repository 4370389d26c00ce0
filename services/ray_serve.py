"""The three tiers as Ray Serve deployments: the same FastAPI app (`services.app.create_app`), tier logic
(`services.tier`), binary handoff, token, /healthz, /readyz and /metrics as the uvicorn services, in Ray replicas.

Each tier is one Ray Serve application holding one deployment, `DimeeTier`, whose replicas each build the tier's
app with `create_app` (`@serve.ingress` with `__serve_build_asgi_app__`: the app is built inside the replica, from
its settings, so no route is redefined here) and run its lifespan (weights loaded at replica start). Ray's HTTP
proxy serves the applications on route prefixes /mobile, /edge and /cloud, and a tier reaches the next one through
that proxy (`services.ray_config`: the layout, the replica spec, Ray's YAML).

Replica health: Ray calls `check_health` (model loaded, batcher running) and replaces a replica that fails it;
a tier's /readyz (next tier reachable) is for the operator and the proxy's clients, not a reason to restart.
A replica killed with requests in flight: the proxy answers their senders with a 5xx of its own, and the sending
tier resends each such handoff once (`ReplicaRetryClient`), so the proxy gives it to a live replica and nothing is
answered degraded.
The handoff token reaches a replica as a bound argument (`dimee serve-ray`) or from DIMEE_HANDOFF_TOKEN in its
environment (a YAML deployment: set it on every node before `ray start`).

This module imports ray; `services.ray_config` does not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray import serve
from ray.serve import Application

from .ray_config import DEPLOYMENT_NAME, MAX_ONGOING_REQUESTS, ROUTE_PREFIXES, Scaling, serve_config, tier_fields
from .replica_retry import ReplicaRetryClient, with_retrying_client

log = logging.getLogger("services.ray")


class RoutePrefix:
    """Pure ASGI middleware: the app sees the path it sees under uvicorn ('/v1/handoff', not '/edge/v1/handoff').

    Ray's proxy keeps the route prefix in `path` and puts it in `root_path`; Starlette routes either way, but the
    app's per-endpoint metrics and its logs name the path itself. `root_path` stays, so /docs still points at
    /<tier>/openapi.json."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            root = scope.get("root_path", "")
            path = scope.get("path", "")
            if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
                scope = {**scope, "path": path[len(root) :] or "/"}
        await self.app(scope, receive, send)


@serve.deployment(
    name=DEPLOYMENT_NAME,
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    health_check_period_s=5,
)
@serve.ingress()
class DimeeTier:
    """One replica of one tier: `fields` are its TierSettings fields (tier, run_dir, next-tier URLs, ...), the
    rest from DIMEE_* in the replica's environment; `token` overrides DIMEE_HANDOFF_TOKEN."""

    def __init__(self, fields: dict[str, Any], token: str | None = None) -> None:
        self._fields = dict(fields)
        self._token = token
        self._service: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        import torch

        from .app import create_app
        from .launch import configure_logging
        from .settings import TierSettings

        fields = dict(self._fields)
        if self._token:
            fields["handoff_token"] = self._token
        settings = TierSettings(**fields)
        configure_logging(settings.log_level)
        torch.set_num_threads(settings.torch_threads)  # as serve_tier: replicas sharing a node share its cores
        app = create_app(settings)
        app.add_middleware(RoutePrefix)  # outermost: before the request-id and metrics middleware
        with_retrying_client(app)
        self._service = app.state.service
        log.info("%s replica built (run %s)", settings.tier, settings.run_dir)
        return app

    async def check_health(self) -> None:
        """Ray's liveness probe: raise (and the replica is replaced) once the model or batcher is gone."""
        if self._service is None or not self._service.loaded:
            raise RuntimeError("tier not loaded")


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve application builder for one tier (`import_path: services.ray_serve:build_app` in Ray's YAML):
    `args` are the tier's TierSettings fields; its replicas read the token from DIMEE_HANDOFF_TOKEN."""
    return DimeeTier.bind(dict(args))


def tier_application(
    fields: dict[str, Any],
    scaling: Scaling,
    token: str | None,
    replica_cpus: float = 1.0,
    target_ongoing_requests: float | None = None,
    max_ongoing_requests: int = MAX_ONGOING_REQUESTS,
) -> Application:
    """One tier's application with its replica count or autoscaling, as `dimee serve-ray` deploys it."""
    options = scaling.deployment_options(target_ongoing_requests, max_ongoing_requests)
    deployment = DimeeTier.options(ray_actor_options={"num_cpus": replica_cpus}, **options)
    return deployment.bind(dict(fields), token)


def deploy(
    run_dir: str,
    scaling: dict[str, Scaling],
    token: str,
    http_port: int,
    plan: str | None = None,
    replica_cpus: float = 1.0,
    target_ongoing_requests: float | None = None,
    settings: dict[str, Any] | None = None,
    proxy_host: str = "127.0.0.1",
    max_ongoing_requests: int = MAX_ONGOING_REQUESTS,
) -> dict[str, str]:
    """Deploy cloud, edge, then mobile on the connected Ray cluster (serve.start must have run) and return each
    tier's URL on the proxy; blocks until every replica is up. `proxy_host`: the address a replica reaches its
    node's proxy at (loopback unless the proxy binds another)."""
    from .ray_config import proxy_url

    proxy = proxy_url(proxy_host, http_port)
    urls = {}
    for tier in ("cloud", "edge", "mobile"):
        fields = {**tier_fields(tier, run_dir, proxy, plan), **(settings or {})}
        app = tier_application(
            fields, scaling[tier], token, replica_cpus, target_ongoing_requests, max_ongoing_requests
        )
        serve.run(app, name=tier, route_prefix=ROUTE_PREFIXES[tier], blocking=False)
        urls[tier] = proxy + ROUTE_PREFIXES[tier]
    return urls


@contextmanager
def local_tiers(
    run_dir: str,
    scaling: dict[str, Scaling],
    token: str,
    http_port: int,
    num_cpus: int | None = None,
    settings: dict[str, Any] | None = None,
    replica_cpus: float = 1.0,
) -> Iterator[dict[str, str]]:
    """The three tiers on a fresh local Ray instance for the block's duration (tests, benchmarks): yields each
    tier's URL on the proxy; Serve and Ray are shut down after. `num_cpus`: Ray's logical CPUs (default: enough
    for every replica, however few cores the machine has)."""
    import os

    import ray

    needed = int(sum(s.max_replicas for s in scaling.values()) * replica_cpus + 0.999)
    cpus = num_cpus if num_cpus is not None else max(os.cpu_count() or 1, needed)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        yield deploy(run_dir, scaling, token, http_port, replica_cpus=replica_cpus, settings=settings)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def replica_actors(tier: str) -> list[Any]:
    """Actor handles of the running replicas of `tier` (for fault tests and benchmarks: `ray.kill` one)."""
    import ray

    names = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and actor["name"].startswith(f"SERVE_REPLICA::{tier}#{DEPLOYMENT_NAME}#")
    ]
    return [ray.get_actor(name, namespace="serve") for name in sorted(names)]


__all__ = [
    "DimeeTier",
    "ReplicaRetryClient",
    "RoutePrefix",
    "build_app",
    "deploy",
    "local_tiers",
    "replica_actors",
    "serve_config",
    "tier_application",
]
