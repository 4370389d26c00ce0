"""6 vs 12 layers, per task: per-exit validation metric of each encoder, training time, and every policy's cost
cut at the operating point (drop <= 0.3 points, chosen on calibration), from the committed caches.

A task is compared where both ``results/caches/<shallow>/<task>`` and ``results/caches/<deep>/<task>`` exist.
The scoring is the report's (``glue_eval.report.report_tables`` with ``curves=False``): no model is run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/depth_comparison.py     # -> results/depth.{md,json}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cache_report import command_line, write_results  # noqa: E402
from glue_eval.depth import MAJORITY_NOTE, per_exit_row  # noqa: E402
from glue_eval.report import markdown_table, report_tables  # noqa: E402


def cut_rows(run: Path, model: str, max_drop: float) -> pd.DataFrame:
    table, _ = report_tables(run, max_drop=max_drop, curves=False)
    keep = table[["task", "policy", "meets_target", "drop", "cost_reduction_%"]].copy()
    return keep.assign(model=model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shallow", default="minilm", help="cache folder of the 6-layer runs")
    parser.add_argument("--deep", default="mpnet", help="cache folder of the 12-layer runs")
    parser.add_argument("--tasks", nargs="*", default=None, help="default: every task cached for both")
    parser.add_argument("--max-drop", type=float, default=0.003)
    parser.add_argument("--out", default="results/depth")
    args = parser.parse_args(argv)
    start = time.time()
    caches = ROOT / "results" / "caches"
    deep = caches / args.deep
    tasks = args.tasks or sorted(p.name for p in deep.iterdir() if (caches / args.shallow / p.name).is_dir()) if deep.is_dir() else []
    if not tasks:
        raise SystemExit(f"no task has caches under both {caches / args.shallow} and {caches / args.deep}")
    exits, cuts = [], []
    for task in tasks:
        for model in (args.shallow, args.deep):
            run = caches / model / task
            exits.append(per_exit_row(run, model))
            cuts.append(cut_rows(run, model, args.max_drop))
    exit_table = pd.DataFrame(exits)
    cut = pd.concat(cuts, ignore_index=True)
    cell = cut.assign(cell=[
        f"{c}% (drop {d})" + ("" if m in (True, None) or m != m else " missed")
        for c, d, m in zip(cut["cost_reduction_%"], cut["drop"], cut["meets_target"])
    ])  # fmt: skip
    wide = cell.pivot_table(index=["task", "policy"], columns="model", values="cell", aggfunc="first", sort=False)
    wide = wide.reset_index()[["task", "policy", args.shallow, args.deep]]
    data = {"command": command_line("benchmarks/depth_comparison.py", argv), "seconds": round(time.time() - start, 1), "per_exit": exits,
            "operating_point": json.loads(cut.to_json(orient="records"))}  # fmt: skip
    write_results(ROOT / args.out, data, f"Depth: {args.shallow} vs {args.deep}, per task", __doc__.split("\n\n")[1].replace("\n", " "), [
        "## Per-exit validation metric (x100) and training time",
        "",
        MAJORITY_NOTE,
        "",
        markdown_table(exit_table),
        "",
        f"## Cost cut vs all-cloud at the operating point (drop <= {100 * args.max_drop:.1f} points on calibration; "
        "validation figures; 'missed': no knob met the target on calibration)",
        "",
        markdown_table(wide),
        "",
    ])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
