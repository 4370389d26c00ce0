"""Time a 10,000-setting cost sweep over one task's cached logits and check it against refitting.

    .venv/bin/python benchmarks/sweep_speed.py --run runs/gpu/sst2 --out results/sweep_speed.json

The grid is N x N values (default 100 x 100) of two offloading-cost fields, mobile_to_edge and edge_to_cloud,
each in 0.0..0.6. Three configurations are timed (wall clock, a fresh sweep each, logits read inside):

* fixed: all-mobile, all-edge, all-cloud and the oracle (fitted once; only the scoring runs per setting);
* baselines: fixed + the confidence-threshold rule (threshold re-chosen per setting on the fit split);
* full: baselines + DIMEE (``DimeePolicy.fit_many`` over the settings: k-means once per (fold, k), every
  setting's choices at once) + random (DIMEE's shares); then the same again in the same process (k-means
  cached: what a second sweep over the same logits costs).

Then `--verify` settings drawn at random are re-run with `exact=True` (every policy refitted through its own
`fit`) and compared row by row with the fast table. One real `DimeePolicy.fit` is also timed, to show what
refitting from scratch per setting would cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clustering import DimeePolicy  # noqa: E402
from glue_eval.sweep import sweep  # noqa: E402
from tiers import read_cached_split, read_run_info  # noqa: E402

CONFIGS = {
    "fixed": "all-mobile,all-edge,all-cloud,oracle",
    "baselines": "threshold,all-mobile,all-edge,all-cloud,oracle",
    "full": "dimee,threshold,all-mobile,all-edge,all-cloud,random,oracle",
}
FIELDS = ("mobile_to_edge", "edge_to_cloud")


def machine_note() -> dict:
    cpu = "unknown"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "threads": "sweep(threads=1): BLAS/OpenMP capped at 1 thread while it runs",
    }


def timed_sweep(run: str, policies: str, grid: dict) -> tuple[float, object]:
    start = time.perf_counter()
    table = sweep(run, policies, grid, progress=False)
    return time.perf_counter() - start, table


def verify(run: str, policies: str, table, values: np.ndarray, count: int, seed: int) -> dict:
    """Re-run `count` random settings with every policy refitted; compare all numeric columns."""
    rng = np.random.default_rng(seed)
    mismatched, checked, seconds = [], 0, 0.0
    for _ in range(count):
        a, b = (float(rng.choice(values)) for _ in FIELDS)
        start = time.perf_counter()
        exact = sweep(run, policies, {FIELDS[0]: [a], FIELDS[1]: [b]}, progress=False, exact=True)
        seconds += time.perf_counter() - start
        fast = table[(table[FIELDS[0]] == a) & (table[FIELDS[1]] == b)].reset_index(drop=True)
        numeric = exact.select_dtypes("number").columns
        diff = (fast[numeric].astype(float) - exact[numeric].astype(float)).abs().max(axis=1).fillna(0.0)
        checked += len(exact)
        for policy in exact.loc[diff > 1e-9, "policy"]:
            mismatched.append({FIELDS[0]: a, FIELDS[1]: b, "policy": policy})
    return {"settings": count, "rows": checked, "mismatched_rows": mismatched, "exact_seconds": round(seconds, 2)}


def one_dimee_fit(run: str) -> float:
    info = read_run_info(run)
    fit = read_cached_split(run, "calibration")
    with threadpool_limits(1):
        start = time.perf_counter()
        DimeePolicy(info.plan, info.cost_model).fit(fit.logits, fit.labels)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/gpu/sst2")
    parser.add_argument("--n", type=int, default=100, help="values per field (settings = n * n)")
    parser.add_argument("--verify", type=int, default=10, help="random settings to re-run with exact=True")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/sweep_speed.json")
    arguments = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(arguments)

    note = machine_note()
    values = np.round(np.linspace(0.0, 0.6, args.n), 4)
    grid = {field: values.tolist() for field in FIELDS}
    n_settings = args.n**2
    fit_split = read_cached_split(args.run, "calibration")
    eval_split = read_cached_split(args.run, "validation")

    results = {}
    tables = {}
    for name, policies in CONFIGS.items():
        seconds, table = timed_sweep(args.run, policies, grid)
        tables[name] = table
        results[name] = {
            "policies": policies,
            "seconds": round(seconds, 3),
            "rows": len(table),
            "settings_per_second": round(n_settings / seconds),
            "under_10_s": seconds < 10.0,
        }
        print(f"{name:10s} {seconds:7.2f} s  {len(table)} rows  ({policies})", flush=True)
    warm, _ = timed_sweep(args.run, CONFIGS["full"], grid)
    results["full_kmeans_cached"] = {"policies": CONFIGS["full"], "seconds": round(warm, 3)}
    print(f"full, k-means cached {warm:7.2f} s", flush=True)

    full = tables["full"]
    dimee = full[full.policy == "dimee"]
    check = verify(args.run, CONFIGS["full"], full, values, args.verify, args.seed)
    fit_seconds = one_dimee_fit(args.run)
    report = {
        "command": " ".join([".venv/bin/python", "benchmarks/sweep_speed.py", *arguments]),
        "run": args.run,
        "fit_split_samples": int(fit_split.labels.size),
        "eval_split_samples": int(eval_split.labels.size),
        "grid": {field: f"{args.n} values in 0.0..0.6" for field in FIELDS},
        "settings": n_settings,
        "timings": results,
        "seconds": results["full"]["seconds"],
        "target_under_2_s": results["full"]["seconds"] < 2.0,
        "distinct_dimee_tier_mixes": len(dimee[["share_mobile", "share_edge", "share_cloud"]].drop_duplicates()),
        "dimee_k_chosen": sorted(int(k) for k in dimee["knob"].unique()),
        "verification": check,
        "one_dimee_fit_from_scratch_seconds": round(fit_seconds, 3),
        "refit_from_scratch_estimate_seconds": round(fit_seconds * n_settings),
        "machine": note,
        "notes": (
            "Times include reading the cached logits and building the table. Route costs of all settings are one "
            "product per plan (tiers.path_costs_many). Fixed-exit policies are fitted once per plan and only "
            "scored; the oracle is fitted once per distinct order of its candidates' costs (ExitPolicy.fit_many); "
            "the threshold rule's choice among its candidate thresholds is redone for every cost vector in one "
            "matrix product (ties: select_setting itself); DIMEE is DimeePolicy.fit_many over all settings of a "
            "chunk (the code DimeePolicy.fit runs: k-means once per (fold, k), every setting's cluster exits and k "
            "at once), the eval split predicted once per distinct fitted routing. verification compares random "
            "settings against refitting every policy through its own fit()."
        ),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("settings", "seconds", "verification")}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
