"""The GLUE comparison under each cost preset (the README default and SplitEE's), from the committed caches.

The same scoring as ``dimee report`` (``glue_eval.report.report_tables``: knobs chosen on calibration by
cross-fitting, scored once on validation) and the same scoreboard, with the run's cost model replaced by a
preset of ``tiers.CostModel.preset``. Per task and preset: the best DIMEE variant and the best baseline at the
operating point (drop <= 0.3 points, chosen on calibration), and whether DIMEE is at or above the baseline in
Pareto area on validation.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cost_presets.py     # -> results/cost_presets.{md,json}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cache_report import command_line, write_results  # noqa: E402
from glue_eval.report import BASELINES, DIMEE_VARIANTS, _summary, markdown_table, report_tables  # noqa: E402
from glue_eval.scoreboard import scoreboard  # noqa: E402
from tiers import CostModel  # noqa: E402

RUNS = ("cola", "mnli", "mrpc", "qnli", "rte", "sst2-4k", "stsb", "wnli")
PRESETS = ("default", "splitee")


def preset_rows(run: Path, preset: str, max_drop: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(operating-point summary row, scoreboard summary row) of one run under one cost preset."""
    table, curves = report_tables(run, max_drop=max_drop, cost_model=CostModel.preset(preset))
    _, board = scoreboard(curves, DIMEE_VARIANTS, BASELINES)
    return _summary(table).assign(preset=preset), board.assign(preset=preset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caches", default="results/caches/minilm", help="folder of run folders with cached logits")
    parser.add_argument("--runs", nargs="+", default=list(RUNS))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--max-drop", type=float, default=0.003)
    parser.add_argument("--out", default="results/cost_presets")
    args = parser.parse_args(argv)
    start = time.time()
    summaries, boards = [], []
    for name in tqdm(args.runs, desc="tasks"):
        for preset in args.presets:
            summary, board = preset_rows(ROOT / args.caches / name, preset, args.max_drop)
            summaries.append(summary)
            boards.append(board)
    summary = pd.concat(summaries, ignore_index=True)
    board = pd.concat(boards, ignore_index=True)
    summary = summary[["task", "preset", *[c for c in summary.columns if c not in ("task", "preset")]]]
    board = board[["task", "preset", *[c for c in board.columns if c not in ("task", "preset")]]]
    data = {"command": command_line("benchmarks/cost_presets.py", argv), "seconds": round(time.time() - start, 1),
            "presets": {p: CostModel.preset(p).to_dict() for p in args.presets},
            "summary": summary.to_dict(orient="records"), "scoreboard": board.to_dict(orient="records")}  # fmt: skip
    ahead = board.groupby("preset", sort=False)["dimee_at_or_above"].apply(lambda v: int(v.fillna(False).astype(bool).sum()))
    intro = __doc__.split("\n\n")[1].replace("\n", " ")
    write_results(ROOT / args.out, data, "GLUE under each cost preset: DIMEE and the baselines", intro, [
        "Presets (`tiers.CostModel.preset`; `to_dict` in the JSON): `default` is the README's cost model, "
        "`splitee` is SplitEE's (lambda = 0.1 per layer on every tier, offloading o = 0.3 per hop).",
        "",
        "DIMEE (chosen on calibration) at or above the chosen baseline in validation Pareto area: "
        + ", ".join(f"{p}: {n} of {len(args.runs)} tasks" for p, n in ahead.items())
        + ".",
        "",
        "## Operating point (drop <= 0.3 points, chosen on calibration; validation figures)",
        "",
        markdown_table(summary.sort_values(["task", "preset"], kind="stable")),
        "",
        "## Scoreboard (Pareto area, validation; DIMEE variant and baseline chosen by calibration area)",
        "",
        markdown_table(board.sort_values(["task", "preset"], kind="stable")),
        "",
    ])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
