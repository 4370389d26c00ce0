"""`dimee calibrate RUN`: fit per-exit temperatures on the held-out split, store them in the run folder
(``<run>/temperatures.json``, read by the services and the policies) and print ECE / NLL per exit before and
after on the evaluation split. ``--plot PATH`` also writes the reliability diagrams (PNG).

Wired into `dimee` by appending :func:`register` to ``dimee.cli.SUBCOMMANDS``; also runs on its own as
``python -m dimee.calibrate_cli RUN ...``.
"""

from __future__ import annotations

import argparse
import json
import sys


def cmd_calibrate(args: argparse.Namespace) -> int:
    from glue_eval.calibration import calibrate_run, calibration_table, plot_reliability

    data = calibrate_run(
        args.run_dir,
        fit_split=args.fit_split,
        eval_split=args.eval_split,
        fit_on=args.fit_on,
        n_bins=args.bins,
        exit_threshold=args.exit_threshold,
    )
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        report = data["report"]
        print(
            f"{report['task']}: temperatures fitted on {data['fit_split']!r} (fit_on={data['fit_on']}), "
            f"scored on {report['split']!r} ({report['n_samples']} samples, ECE with {report['n_bins']} bins)"
        )
        print(calibration_table(data).to_string(index=False))
        if data["fallback_exits"]:
            print(f"exits fitted on all samples (too few exiting there): {data['fallback_exits']}")
        print(f"temperatures written to {args.run_dir}/temperatures.json")
    if args.plot:
        path = plot_reliability(args.run_dir, args.plot, data["temperatures"], split=args.eval_split, n_bins=args.bins)
        if not args.json:
            print(f"reliability diagrams: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `calibrate` subcommand to the `dimee` parser."""
    parser = subparsers.add_parser(
        "calibrate",
        help="fit per-exit temperatures on the held-out split; print ECE/NLL per exit before and after",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("run_dir", metavar="RUN", help="run folder with cached logits (see `dimee eval`)")
    parser.add_argument("--fit-split", default="calibration", help="cached split the temperatures are fitted on")
    parser.add_argument("--eval-split", default="validation", help="cached split the report is computed on")
    parser.add_argument(
        "--fit-on",
        choices=("all", "exiting"),
        default="all",
        help="fit exit i on all samples, or on those an (uncalibrated) threshold rule answers there",
    )
    parser.add_argument(
        "--exit-threshold",
        type=float,
        default=0.9,
        help="confidence threshold deciding who exits where (--fit-on exiting)",
    )
    parser.add_argument("--bins", type=int, default=15, help="equal-width confidence bins of the ECE")
    parser.add_argument("--plot", default=None, metavar="PATH", help="also write reliability diagrams to this PNG")
    parser.add_argument("--json", action="store_true", help="print the stored JSON instead of the table")
    parser.set_defaults(func=cmd_calibrate)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point with the same one-line errors as `dimee`."""
    from dimee.cli import USER_ERRORS

    parser = argparse.ArgumentParser(prog="dimee")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["calibrate", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        print(f"dimee: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
