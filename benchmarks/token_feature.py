"""Is the token count worth a place in DIMEE's routing profile? Its predictive value, on the committed caches.

DIMEE routes a sample by whether its early exits will be right. A feature earns a place in the profile only if
it tells that better than the profile does. Here, per task, split and decision exit j (2: mobile's last, 4:
edge's last, under the default plan), a logistic regression predicts "exit j is right" from the profile
(confidence, entropy, margin of exits 1..j), from the profile plus log token count, and from log token count
alone; the figure is the five-fold cross-validated ROC AUC on that split (no fit and score on the same rows).
`gain` = AUC(profile + tokens) - AUC(profile). A gain within a few thousandths is noise at these split sizes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/token_feature.py   # -> results/token_feature.{md,json}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cache_report import command_line, write_results  # noqa: E402
from clustering.profiles import FEATURES, exit_profile, per_exit_correct  # noqa: E402
from glue_eval.report import markdown_table  # noqa: E402
from tiers import read_cached_split, read_run_info  # noqa: E402

RUNS = ("cola", "mnli", "mrpc", "qnli", "rte", "sst2-4k", "stsb", "wnli")
SPLITS = ("calibration", "validation")


def cv_auc(x: np.ndarray, right: np.ndarray, seed: int = 0) -> float:
    """Five-fold cross-validated ROC AUC of a standardised logistic regression of `right` on `x`."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, right, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(right, scores))


def probe(run: Path, split: str, exit_j: int) -> dict | None:
    """The three AUCs at one decision exit; None where exit j is right on all or none of the rows (or on
    fewer than five of either, too few for five folds)."""
    cached = read_cached_split(run, split)
    right = per_exit_correct(cached.logits, cached.labels)[:, exit_j - 1].astype(int)
    if min(right.sum(), len(right) - right.sum()) < 5:
        return None
    profile = exit_profile(cached.logits[:, :exit_j], None, FEATURES)
    tokens = np.log(cached.token_counts.astype(np.float64))[:, None]
    base, both, alone = (cv_auc(x, right) for x in (profile, np.hstack([profile, tokens]), tokens))
    return {"n": len(right), "right_share": round(float(right.mean()), 3), "auc_profile": round(base, 3),
            "auc_profile_tokens": round(both, 3), "auc_tokens": round(alone, 3), "gain": round(both - base, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caches", default="results/caches/minilm")
    parser.add_argument("--runs", nargs="+", default=list(RUNS))
    parser.add_argument("--out", default="results/token_feature")
    args = parser.parse_args(argv)
    start = time.time()
    rows = []
    for name in args.runs:
        run = ROOT / args.caches / name
        plan = read_run_info(run).plan
        for split in SPLITS:
            for exit_j in (plan.mobile_end, plan.edge_end):
                found = probe(run, split, exit_j)
                if found is not None:
                    rows.append({"task": name, "split": split, "exit": exit_j, **found})
    table = pd.DataFrame(rows)
    gains = table["gain"].to_numpy()
    held = table[table["split"] == "validation"]["gain"].to_numpy()
    wide = table.pivot_table(index=["task", "exit"], columns="split", values="gain")
    consistent = wide[(wide > 0.01).all(axis=1)]  # gains > 0.01 on calibration and validation alike
    summary = {
        "probes": len(table), "mean_gain": round(float(gains.mean()), 4), "max_gain": round(float(gains.max()), 3),
        "validation_mean_gain": round(float(held.mean()), 4), "validation_max_gain": round(float(held.max()), 3),
        "consistent_gains": [f"{task} exit {j}" for task, j in consistent.index],
    }
    data = {"command": command_line("benchmarks/token_feature.py", argv), "seconds": round(time.time() - start, 1),
            "summary": summary, "rows": table.to_dict(orient="records")}
    where = ", ".join(summary["consistent_gains"]) or "none"
    verdict = (
        f"Over {summary['probes']} probes the token count changes the AUC by {summary['mean_gain']:+.4f} on average "
        f"(validation: {summary['validation_mean_gain']:+.4f}). It gains more than 0.01 on both splits at: {where}. "
        "Elsewhere it tells nothing the profile does not (gains within noise, some negative)."
    )
    write_results(ROOT / args.out, data, "Token count as a routing feature: predictive value beyond the exit profile",
                  __doc__.split("\n\n")[1].replace("\n", " "), ["## Verdict", "", verdict, "", "## Per task, split and exit", "",
                                                                markdown_table(table), ""])
    return 0


if __name__ == "__main__":
    sys.exit(main())
