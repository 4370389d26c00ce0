"""What each DIMEE fitting choice buys, per task, on the committed logit caches (no model is run).

Every variant is a DIMEE policy family over the report's mu grid; like the report, each knob's figures on the
calibration split come from two-fold cross-fitting, and each knob is also fitted on the whole calibration split
and scored once on validation. The whole-curve scores (``glue_eval.scoreboard``: Pareto area over
[all-mobile's cost, 1], in metric points vs all-cloud; higher is better) are given on both splits, next to the
confidence threshold's. The `entry+threshold` rows are DIMEE's entry stage over the threshold's own exit rule
(knob: the threshold, as the threshold's); their base is the threshold. A choice "wins" where it raises the calibration area over its base variant; the
validation column shows whether that carries over to held-out data. A "+oof" row pools the calibration split
with the run's out-of-fold training logits (`dimee oof`) in every fit set (scored on calibration halves only);
runs without them have no such rows.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dimee_ablation.py      # -> results/dimee_ablation.{md,json}
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
from clustering import ENTRY_THRESHOLD_MU, DimeePolicy  # noqa: E402
from glue_eval.report import MU_GRID, Tunable, markdown_table, report_tables, run_temperatures, tunable_policies  # noqa: E402
from glue_eval.scoreboard import scoreboard  # noqa: E402
from tiers import read_run_info  # noqa: E402
from tiers.run import OOF_SPLIT  # noqa: E402

RUNS = ("cola", "mnli", "mrpc", "qnli", "rte", "sst2-4k", "stsb", "wnli")
POOL = "+oof"  # a variant name ending so pools the out-of-fold split into its fit sets
CONFIDENCE = ("confidence",)
WITH_AGREEMENT = ("confidence", "entropy", "margin", "agreement")
# DIMEE's entry stage over threshold stages; exit_threshold is the knob (the threshold baseline's values)
ENTRY_THRESHOLD = {"decision_exits": "all", "entry": "embedding", "mu": ENTRY_THRESHOLD_MU, "exit_threshold": None}
# (name, base variant, DimeePolicy keywords): each row changes one thing of its base (the defaults: profile
# features confidence, entropy and margin; k 2..12, tolerance 0.002, 3 folds, every route, no shrinkage, no
# minimum cluster size)
VARIANTS: tuple[tuple[str, str, dict], ...] = (
    ("dimee", "", {}),
    ("dimee confidence only", "dimee", {"profile_features": CONFIDENCE}),
    ("dimee k<=4", "dimee", {"k_grid": (1, 2, 3, 4)}),
    ("dimee k_tolerance=0.01", "dimee", {"k_tolerance": 0.01}),
    ("dimee 5 folds", "dimee", {"n_folds": 5}),
    ("dimee chain routes", "dimee", {"routes": "chain"}),
    ("dimee +agreement", "dimee", {"profile_features": WITH_AGREEMENT}),
    ("dimee shrinkage=10", "dimee", {"shrinkage": 10.0}),
    ("dimee min cluster 20", "dimee", {"min_cluster_size": 20}),
    ("cascade", "", {"decision_exits": "all"}),
    ("cascade confidence only", "cascade", {"decision_exits": "all", "profile_features": CONFIDENCE}),
    ("cascade k<=4", "cascade", {"decision_exits": "all", "k_grid": (1, 2, 3, 4)}),
    ("cascade k_tolerance=0.01", "cascade", {"decision_exits": "all", "k_tolerance": 0.01}),
    ("cascade 5 folds", "cascade", {"decision_exits": "all", "n_folds": 5}),
    ("cascade tier ends", "cascade", {"decision_exits": "tier_ends"}),
    ("cascade reached", "cascade", {"decision_exits": "all", "cascade_population": "reached"}),
    ("cascade +agreement", "cascade", {"decision_exits": "all", "profile_features": WITH_AGREEMENT}),
    ("cascade shrinkage=10", "cascade", {"decision_exits": "all", "shrinkage": 10.0}),
    ("cascade min cluster 20", "cascade", {"decision_exits": "all", "min_cluster_size": 20}),
    ("entry+cascade", "cascade", {"decision_exits": "all", "entry": "embedding"}),
    ("entry+cascade 5 folds", "entry+cascade", {"decision_exits": "all", "entry": "embedding", "n_folds": 5}),
    ("entry+cascade +agreement", "entry+cascade", {"decision_exits": "all", "entry": "embedding", "profile_features": WITH_AGREEMENT}),
    ("entry+cascade shrinkage=10", "entry+cascade", {"decision_exits": "all", "entry": "embedding", "shrinkage": 10.0}),
    ("entry+cascade min cluster 20", "entry+cascade", {"decision_exits": "all", "entry": "embedding", "min_cluster_size": 20}),
    ("entry+cascade +oof", "entry+cascade", {"decision_exits": "all", "entry": "embedding"}),
    ("cascade +oof", "cascade", {"decision_exits": "all"}),
    ("embedding", "", {"feature": "embedding"}),
    ("embedding shrinkage=10", "embedding", {"feature": "embedding", "shrinkage": 10.0}),
    ("embedding +oof", "embedding", {"feature": "embedding"}),
    ("paper (embedding pools)", "", {"feature": "embedding", "assignment": "pools"}),
    ("entry+threshold", "threshold", ENTRY_THRESHOLD),
    ("entry+threshold +oof", "entry+threshold", ENTRY_THRESHOLD),
    ("entry+threshold shrinkage=10", "entry+threshold", {**ENTRY_THRESHOLD, "shrinkage": 10.0}),
    ("entry+threshold min cluster 20", "entry+threshold", {**ENTRY_THRESHOLD, "min_cluster_size": 20}),
)


def families(run: Path) -> list[Tunable]:
    info = read_run_info(run)
    plan, cost = info.plan, info.cost_model
    temps = run_temperatures(run, plan.num_layers)
    t = None if temps is None else [float(v) for v in temps]

    baselines = [f for f in tunable_policies(plan, cost, t) if f.name == "threshold"]

    def family(name: str, kwargs: dict) -> Tunable:
        """A mu family, or over threshold stages (``ENTRY_THRESHOLD``) one whose knob is the threshold's."""
        by_threshold = "exit_threshold" in kwargs
        knob = "exit_threshold" if by_threshold else "mu"
        knobs = baselines[0].knobs if by_threshold else sorted(MU_GRID, reverse=True)
        build = lambda value: DimeePolicy(plan, cost, t, **{**kwargs, knob: value})  # noqa: E731
        return Tunable(name, knobs, build, True, needs_embedding="entry" in kwargs or "feature" in kwargs,
                       knob_param=knob, pools=OOF_SPLIT if name.endswith(POOL) else None)  # fmt: skip

    return [family(name, kw) for name, _, kw in VARIANTS] + baselines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caches", default="results/caches/minilm", help="folder of run folders with cached logits")
    parser.add_argument("--runs", nargs="+", default=list(RUNS))
    parser.add_argument("--out", default="results/dimee_ablation")
    args = parser.parse_args(argv)
    start = time.time()
    boards = []
    for name in tqdm(args.runs, desc="tasks"):
        run = ROOT / args.caches / name
        _, curves = report_tables(run, families=families(run))
        per_policy, _ = scoreboard(curves, [v[0] for v in VARIANTS], ["threshold"])
        boards.append(per_policy)
    table = pd.concat(boards, ignore_index=True)
    base_of = {name: base for name, base, _ in VARIANTS}
    rows = []
    for task, group in table.groupby("task", sort=False):
        area = group.set_index("policy")
        for name, base, _ in VARIANTS:
            if name not in area.index:
                continue
            row = {"task": task, "variant": name, "cal_area": area.loc[name, "cal_area"], "val_area": area.loc[name, "val_area"]}
            if base:
                row["cal_gain"] = round(area.loc[name, "cal_area"] - area.loc[base, "cal_area"], 3)
                row["val_gain"] = round(area.loc[name, "val_area"] - area.loc[base, "val_area"], 3)
            row["val_vs_threshold"] = round(area.loc[name, "val_area"] - area.loc["threshold", "val_area"], 3)
            rows.append(row)
    ablation = pd.DataFrame(rows)
    thresholds = table[table["policy"] == "threshold"][["task", "cal_area", "val_area"]]
    data = {"command": command_line("benchmarks/dimee_ablation.py", argv), "seconds": round(time.time() - start, 1), "rows": ablation.to_dict(orient="records"),
            "threshold": thresholds.to_dict(orient="records")}
    grouped = ablation.groupby("variant", sort=False)
    mean = pd.DataFrame({
        "variant": list(grouped.groups),
        "tasks": grouped.size().to_numpy(),
        "cal_gain > 0": grouped["cal_gain"].apply(lambda v: int((v > 1e-9).sum())).to_numpy(),
        "val_gain > 0": grouped["val_gain"].apply(lambda v: int((v > 1e-9).sum())).to_numpy(),
        "at or above threshold (val)": grouped["val_vs_threshold"].apply(lambda v: int((v >= -1e-9).sum())).to_numpy(),
        "mean cal_gain": grouped["cal_gain"].mean().round(3).to_numpy(),
        "mean val_gain": grouped["val_gain"].mean().round(3).to_numpy(),
    })
    intro = __doc__.split("\n\n")[1].replace("\n", " ")
    write_results(ROOT / args.out, data, "DIMEE ablation: what each fitting choice buys, per task", intro, [
        "`cal_gain` / `val_gain`: area of the variant minus its base's (the row it changes one thing of: "
        + ", ".join(f"`{n}` from `{b}`" for n, b in base_of.items() if b)
        + "). `val_vs_threshold`: validation area minus the confidence threshold's (positive: DIMEE ahead).",
        "",
        "## Over tasks (counts of tasks; means are dominated by STS-B, whose areas are ten times the others')",
        "",
        markdown_table(mean),
        "",
        "## Confidence threshold (the reference)",
        "",
        markdown_table(thresholds),
        "",
        "## Per task",
        "",
        markdown_table(ablation),
        "",
    ])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
