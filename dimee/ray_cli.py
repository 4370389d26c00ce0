"""`dimee serve-ray RUN`: the three tiers as Ray Serve deployments (a local Ray instance, or `--address` for a
`ray start` cluster), or `--write-config FILE`: the same deployment as Ray Serve's own YAML config.

User mistakes (a replica spec that names no tier, a bad count, no run folder, Ray not installed) are one line
on stderr and exit 2, before anything starts.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

#: DIMEE_* variables that are per tier (set by serve-ray itself) or secret: never copied into the replicas' fields.
_NOT_COPIED = frozenset(
    f"DIMEE_{name}"
    for name in ("TIER", "RUN_DIR", "PLAN", "NEXT_URL", "CLOUD_URL", "HOST", "PORT", "HANDOFF_TOKEN", "PARENT_PID")
)


class _Refused(Exception):
    """One line for the user; exit 2."""


def env_settings(environ: dict[str, str] | None = None) -> dict[str, str]:
    """TierSettings fields from this process's DIMEE_* variables (batch window, timeouts, ...), so that replicas on
    any node of the cluster get them (their own environment may not hold them)."""
    environ = os.environ if environ is None else environ
    return {
        key[len("DIMEE_") :].lower(): value
        for key, value in environ.items()
        if key.startswith("DIMEE_") and key not in _NOT_COPIED
    }


def _checked(args: argparse.Namespace):
    from services.ray_config import ReplicaSpecError, parse_replicas

    try:
        scaling = parse_replicas(args.replicas)
    except ReplicaSpecError as err:
        raise _Refused(str(err)) from None
    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").is_file():
        raise _Refused(f"{run_dir} is not a run folder (no run.json); train one with `dimee train` or `dimee demo`")
    if args.max_ongoing_requests < 1:
        raise _Refused(f"--max-ongoing-requests must be >= 1, got {args.max_ongoing_requests}")
    if args.replica_cpus <= 0:
        raise _Refused(f"--replica-cpus must be > 0, got {args.replica_cpus}")
    if args.detach and not args.address:
        raise _Refused("--detach needs a running cluster (--address ADDR, e.g. after `ray start --head`): a local Ray "
                       "instance ends with this command")  # fmt: skip
    return scaling, run_dir.resolve()


def cmd_serve_ray(args: argparse.Namespace) -> int:
    try:
        scaling, run_dir = _checked(args)
        if args.write_config:
            return _write_config(args, scaling, run_dir)
        from services.ray_config import RayMissing, require_ray

        try:
            require_ray()
        except RayMissing as err:
            raise _Refused(str(err)) from None
    except _Refused as err:
        print(f"dimee serve-ray: {err}", file=sys.stderr)
        return 2
    return _serve(args, scaling, run_dir)


def _write_config(args: argparse.Namespace, scaling, run_dir: Path) -> int:
    import yaml

    from services.ray_config import serve_config

    config = serve_config(
        run_dir, scaling, args.http_port, args.plan, args.replica_cpus, args.target_ongoing_requests, env_settings(),
        args.max_ongoing_requests,
    )  # fmt: skip
    out = Path(args.write_config)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"wrote {out}: deploy it with `serve deploy {out}` (a running cluster) or `serve run {out}`; "
          "set DIMEE_HANDOFF_TOKEN on every node first (the same value everywhere)")  # fmt: skip
    return 0


def _serve(args: argparse.Namespace, scaling, run_dir: Path) -> int:
    import time

    import ray
    from ray import serve

    from services.launch import stop_signals
    from services.ray_serve import deploy

    token = os.environ.get("DIMEE_HANDOFF_TOKEN") or secrets.token_urlsafe(32)
    replicas = sum(s.max_replicas for s in scaling.values())
    try:
        if args.address:
            try:
                ray.init(address=args.address, log_to_driver=False)
            except ConnectionError as err:  # no cluster there: a user's address, not a bug
                print(f"error: cannot reach a Ray cluster at {args.address!r} ({err}); start one with `ray start "
                      "--head` or check --address", file=sys.stderr)  # fmt: skip
                return 2
        else:  # a local instance: enough logical CPUs for every replica (a small machine shares its cores)
            cpus = max(os.cpu_count() or 1, int(replicas * args.replica_cpus + 0.999))
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        # after ray.init, which installs a SIGTERM handler of its own that aborts the driver
        with stop_signals():
            serve.start(http_options={"host": args.http_host, "port": args.http_port})
            urls = deploy(
                str(run_dir), scaling, token, args.http_port, args.plan, args.replica_cpus,
                args.target_ongoing_requests, env_settings(), _proxy_host(args.http_host), args.max_ongoing_requests,
            )  # fmt: skip
            _print_urls(urls, scaling)
            if args.detach:
                print("detached: the applications stay on the cluster (`serve shutdown` removes them)", flush=True)
                return 0
            while True:
                time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping", flush=True)
        if ray.is_initialized():
            serve.shutdown()
        return 0
    finally:
        if ray.is_initialized():
            ray.shutdown()


def _print_urls(urls: dict[str, str], scaling) -> None:
    print("serving on Ray Serve (Ctrl-C or SIGTERM stops them):", flush=True)
    for tier, url in urls.items():
        spec = scaling[tier]
        count = f"{spec.min_replicas}-{spec.max_replicas} (autoscaling)" if spec.autoscaling else spec.min_replicas
        print(f"  {tier:6s} {url}   replicas: {count}")
    print(
        f"try:  curl -s -X POST {urls['mobile']}/v1/classify -H 'Content-Type: application/json' "
        '-d \'{"text": "a gripping, beautifully shot film"}\'',
        flush=True,
    )


def _proxy_host(bind: str) -> str:
    """Where a replica reaches its node's proxy: loopback when the proxy binds it or every address."""
    if bind in ("", "0.0.0.0", "::", "127.0.0.1", "localhost"):
        return "127.0.0.1"
    return f"[{bind}]" if ":" in bind else bind


def register(sub: argparse._SubParsersAction) -> None:
    from services.ray_config import MAX_ONGOING_REQUESTS  # ray-free

    ray_cmd = sub.add_parser(
        "serve-ray",
        help="serve mobile, edge and cloud as Ray Serve deployments (pip install -e .[ray]); or write Ray's YAML",
    )
    ray_cmd.add_argument("run_dir")
    ray_cmd.add_argument(
        "--replicas",
        default="mobile=1,edge=1,cloud=1",
        help="replicas per tier: TIER=N fixed, TIER=MIN-MAX autoscaling (e.g. mobile=1,edge=2,cloud=1-4); "
        "tiers not named get 1",
    )
    ray_cmd.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=None,
        help="autoscaling target: ongoing requests per replica (Ray's target_ongoing_requests)",
    )
    ray_cmd.add_argument(
        "--address", default=None, help="Ray cluster address (`ray start --head` prints it); default: a local instance"
    )
    ray_cmd.add_argument(
        "--http-host", default="127.0.0.1", help="address of Ray's HTTP proxy (loopback unless you mean otherwise)"
    )
    ray_cmd.add_argument("--http-port", type=int, default=8000, help="port of Ray's HTTP proxy on every node")
    ray_cmd.add_argument("--plan", default=None, help="tier plan override 'm,e'")
    ray_cmd.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica")
    ray_cmd.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=MAX_ONGOING_REQUESTS,
        help=f"requests one replica takes at a time (Ray's max_ongoing_requests; default {MAX_ONGOING_REQUESTS}, "
        "so that the tier's micro-batcher sees company; Ray's own default, 5, starves it)",
    )
    ray_cmd.add_argument(
        "--detach", action="store_true", help="deploy and exit, leaving the applications running (with --address)"
    )
    ray_cmd.add_argument("--write-config", metavar="FILE", default=None,
                         help="write Ray Serve's YAML config for this deployment and exit (no Ray needed)")  # fmt: skip
    ray_cmd.set_defaults(func=cmd_serve_ray)
