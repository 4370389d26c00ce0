"""`dimee serve` (one tier) and `dimee serve-all` (all three on loopback, for a local try); `dimee serve-ray`
(all three on Ray Serve) lives in `dimee.ray_cli`."""

from __future__ import annotations

import argparse


def serve_one(argv: list[str]) -> int:
    """`dimee serve ARGS`: `python -m services ARGS` (`--help` lists every option)."""
    from services.__main__ import main as serve_main

    return int(serve_main(argv) or 0)


def cmd_serve(args: argparse.Namespace) -> int:
    return serve_one(args.service_args)


def cmd_serve_all(args: argparse.Namespace) -> int:
    """Start the three tiers and wait; Ctrl-C, SIGTERM or SIGHUP stops all three (and, should this process be
    killed outright, each tier stops itself once it sees its parent gone)."""
    from services import start_all
    from services.launch import stop_signals

    env = {"DIMEE_HANDOFF_ENCODING": args.handoff_encoding} if args.handoff_encoding else None
    with stop_signals():
        try:
            with start_all(
                args.run_dir, base_port=args.base_port, plan=args.plan, env=env, log_dir=args.log_dir
            ) as group:
                mobile = group.urls["mobile"]
                print("serving (Ctrl-C or SIGTERM stops all three):", flush=True)
                for tier, url in group.urls.items():
                    print(f"  {tier:6s} {url}   (log: {group.log_dir}/{tier}.log)")
                print(
                    f"try:  curl -s -X POST {mobile}/v1/classify -H 'Content-Type: application/json' "
                    "-d '{\"text\": \"a gripping, beautifully shot film\"}'",
                    flush=True,
                )
                code = group.wait()
                print("stopping", flush=True)
                return code
        except KeyboardInterrupt:  # while starting (start_all has stopped what it started) or while stopping
            print("stopping", flush=True)
            return 0


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve one tier (all options of `python -m services`, e.g. --tier edge --run-dir RUN --port 8701)",
        add_help=False,
    )
    serve.add_argument("service_args", nargs=argparse.REMAINDER)
    serve.set_defaults(func=cmd_serve)

    serve_all = sub.add_parser("serve-all", help="start mobile, edge and cloud on 127.0.0.1 and wait")
    serve_all.add_argument("run_dir")
    serve_all.add_argument("--base-port", type=int, default=8700, help="mobile's port; edge +1, cloud +2")
    serve_all.add_argument("--plan", default=None, help="tier plan override 'm,e'")
    serve_all.add_argument("--handoff-encoding", choices=("fp32", "fp16", "int8"), default=None)
    serve_all.add_argument("--log-dir", default=None)
    serve_all.set_defaults(func=cmd_serve_all)

    from dimee import ray_cli  # `dimee serve-ray`: imports no ray until it runs

    ray_cli.register(sub)
