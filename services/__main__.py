"""`python -m services --tier mobile|edge|cloud --run-dir RUN [...]`: serve one tier.

Any setting not given here is read from the environment (DIMEE_<NAME>, see services.settings); the handoff
token only ever comes from DIMEE_HANDOFF_TOKEN, so that it does not show in the process list.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from tiers import CheckpointError, TierPlanError

from .launch import serve_tier
from .policy import PolicyLoadError
from .settings import TierSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services", description="Serve one DIMEE tier over HTTP.")
    parser.add_argument("--tier", choices=("mobile", "edge", "cloud"), help="tier to serve (or DIMEE_TIER)")
    parser.add_argument("--run-dir", help="run folder (or DIMEE_RUN_DIR)")
    parser.add_argument("--plan", help="tier plan override 'm,e' (default: run.json's)")
    parser.add_argument("--next-url", help="next tier's base URL (mobile: edge's; edge: cloud's)")
    parser.add_argument("--cloud-url", help="mobile: cloud's base URL, for the direct routes mobile -> cloud")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8700 mobile, 8701 edge, 8702 cloud)")
    parser.add_argument("--handoff-encoding", choices=("fp32", "fp16", "int8"), help="encoding of sent hidden states")
    parser.add_argument("--threshold", type=float, help="built-in rule's confidence threshold")
    parser.add_argument("--policy", choices=("auto", "threshold"), help="auto: <run>/policy.json when present")
    parser.add_argument(
        "--experts", action="store_true", default=None,
        help="use the run's expert exits for distorted text (or DIMEE_EXPERTS=1); the run must have them",
    )
    parser.add_argument("--request-timeout-s", type=float, help="deadline of one request, all hops included")
    parser.add_argument("--batch-window-ms", type=float, help="micro-batching window")
    parser.add_argument("--max-batch-size", type=int, help="most samples per forward pass")
    parser.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = TierSettings(**overrides)
    except ValidationError as err:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors())
        print(f"error: invalid settings: {reasons}", file=sys.stderr)
        return 2
    try:
        serve_tier(settings)
    except (CheckpointError, TierPlanError, PolicyLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
