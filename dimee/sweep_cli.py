"""`dimee sweep`: the cost sweep (`glue_eval.sweep.sweep`) from the command line.

    dimee sweep runs/sst2 runs/mrpc --policies dimee,threshold,all-cloud,oracle \\
        --grid mu=0.01,0.05,0.1 --grid mobile_to_edge=0.1,0.3 --out results/sweep.csv --plot results/sweep.png

Grid values are comma-separated; a tier plan is 'm,e', so several plans are separated by ';' or spaces
(`--grid "plan=2,4;3,5"`), or swept as `--grid m=1,2 --grid e=4,5`. `none` for threshold / patience means
"chosen in fit". Wire it into `dimee` with `SUBCOMMANDS.append(sweep_cli.register)` in `dimee.cli`; on its
own: `python -m dimee.sweep_cli RUN ...`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from tiers import CostModel

DEFAULT_POLICIES = "dimee,threshold,entropy,patience,all-mobile,all-edge,all-cloud,random,oracle"
# names the GLUE report (glue_eval.report) gives a row, where the sweep registry spells them differently; every
# other report name (dimee, dimee-edge, dimee-cascade, threshold, entropy, patience, all-*, oracle) is the same
REPORT_NAMES = {"random (DIMEE shares)": "random", "random-dimee-shares": "random"}


def policy_names(text: str) -> list[str]:
    """'--policies' text -> sweep registry names (report names mapped with REPORT_NAMES, order kept)."""
    return [REPORT_NAMES.get(name.strip(), name.strip()) for name in text.split(",") if name.strip()]


def _number(text: str) -> Any:
    """'none' -> None, an integer literal -> int, else float; anything else is left as text for the sweep
    to reject with its own message."""
    if text.lower() in ("none", "auto"):
        return None
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def parse_grid(items: list[str] | None) -> dict[str, list[Any]]:
    """['mu=0.01,0.05', 'plan=2,4;3,5'] -> {'mu': [0.01, 0.05], 'plan': ['2,4', '3,5']}."""
    grid: dict[str, list[Any]] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name or not raw.strip():
            raise ValueError(f"--grid {item!r}: expected FIELD=V1,V2,... (e.g. --grid mu=0.01,0.05)")
        if name in grid:
            raise ValueError(f"--grid {name} is given twice; list all its values in one --grid")
        if name == "plan":
            values: list[Any] = [v.strip() for v in re.split(r"[;\s]+", raw) if v.strip()]
        else:
            values = [_number(v.strip()) for v in raw.split(",") if v.strip()]
        if not values:
            raise ValueError(f"--grid {item!r} lists no values")
        grid[name] = values
    return grid


def cmd_sweep(args: argparse.Namespace) -> int:
    from glue_eval.plots import plot_pareto, plot_tier_shares
    from glue_eval.sweep import sweep

    grid = parse_grid(args.grid)
    if args.shares_plot and not args.shares_x:
        raise ValueError("--shares-plot needs --shares-x FIELD (a swept offloading-cost field, e.g. mobile_to_edge)")
    if args.shares_x and args.shares_x not in grid:
        raise ValueError(f"--shares-x {args.shares_x}: that field is not swept (give it with --grid)")
    table = sweep(
        args.runs,
        policy_names(args.policies),
        grid,
        fit_split=args.fit_split,
        eval_split=args.eval_split,
        csv_path=args.out,
        progress=not args.quiet,
        use_temperatures=not args.no_temperatures,
    )
    if args.out:
        print(f"wrote {len(table)} rows to {args.out}")
    if args.plot:
        for task in sorted(table["task"].unique()):
            path = _per_task(args.plot, task, table["task"].nunique())
            plot_pareto(table, path, task=task)
            print(f"wrote {path}")
    if args.shares_plot:
        for task in sorted(table["task"].unique()):
            path = _per_task(args.shares_plot, task, table["task"].nunique())
            plot_tier_shares(table, args.shares_x, path, policy=args.shares_policy, task=task)
            print(f"wrote {path}")
    if not args.out:
        print(table.to_string(index=False, max_rows=60))
    return 0


def _per_task(path: str, task: str, n_tasks: int) -> Path:
    """One figure per task: 'sweep.png' -> 'sweep-sst2.png' when the sweep covers several tasks."""
    target = Path(path)
    return target if n_tasks == 1 else target.with_name(f"{target.stem}-{task}{target.suffix or '.png'}")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `sweep` to the `dimee` command line (the pattern of `dimee.cli.SUBCOMMANDS`)."""
    parser = subparsers.add_parser(
        "sweep",
        help="evaluate policies over a grid of cost-model fields, policy knobs and tier plans (cached logits only)",
        description="One row per (run, setting, policy), from each run's cached logits; no model is run.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) with cached logits")
    parser.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help=f"comma-separated (default {DEFAULT_POLICIES}); also dimee-edge, dimee-cascade (what "
        "`dimee.fit_policy` deploys by default), dimee-embedding, dimee-paper, dimee-entry, dimee-entry-threshold "
        "(what `dimee demo` deploys; its confidence threshold: the grid's threshold values, 0.9 where it has none), "
        "and the report's row names",
    )
    parser.add_argument(
        "--grid",
        action="append",
        metavar="FIELD=V1,V2",
        help="a swept field and its values; repeat for more fields (cartesian product). Fields: cost-model "
        f"fields ({', '.join(CostModel.field_names())}), mu, k, max_drop, threshold, "
        "patience, plan ('m,e' values separated by ';'), m, e",
    )
    parser.add_argument("--fit-split", default="calibration", help="split the policies are fitted on")
    parser.add_argument("--eval-split", default="validation", help="split they are scored on")
    parser.add_argument("--out", default=None, help="CSV to write (atomically, once the sweep is complete)")
    parser.add_argument("--plot", default=None, help="PNG of metric vs cost with Pareto fronts (one per task)")
    parser.add_argument("--shares-plot", default=None, help="PNG of tier shares vs --shares-x")
    parser.add_argument("--shares-x", default=None, help="swept field for --shares-plot (e.g. mobile_to_edge)")
    parser.add_argument("--shares-policy", default="dimee", help="policy whose tier shares are plotted")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-temperatures",
        action="store_true",
        help="ignore each run's temperatures.json (by default it is applied, as in the report and the deployed policy)",
    )
    parser.set_defaults(func=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m dimee.sweep_cli RUN ...`: the same command without the rest of `dimee`."""
    parser = argparse.ArgumentParser(prog="dimee")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, RuntimeError) as err:
        if os.environ.get("DIMEE_DEBUG"):
            raise
        print(f"dimee: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
