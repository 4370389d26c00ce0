"""Calibration-aided offloading (Pacheco, Couto, Simeone) on the cached GLUE runs: does temperature scaling
of the exits change what the offloading rules do, and is that worth accuracy?

For each task (default SST-2 (4k-sample run), MRPC, RTE from the committed caches ``results/caches/minilm/<run>``), per-exit temperatures are fitted on the
held-out ``calibration`` split only (carved from train; NLL, L-BFGS from T = 1.5, fit on all samples) and every
number is scored on ``validation``. No run folder is written to: the temperatures live in the results JSON.

Policies, each without (``raw``) and with (``cal``) the temperatures:

* ``threshold``: the project's confidence-threshold rule: answer at the first exit 1..L-1 whose max softmax
  probability is >= t, else at L (a tier hands off when none of its exits passes).
* ``threshold-m``: the paper's offloading rule: one branch at the mobile partition point m; answer on the
  device if its confidence is >= t, else offload the sample to the cloud, which runs the full model (exit L).
* ``dimee``: the DIMEE policy (clusters of the mobile confidence profile, reward correct - mu * cost); its knob is
  mu, it has no confidence target: temperatures change only its features.

(a) Equal target confidence: threshold rules at t in {0.8, 0.9, 0.95} (DIMEE at equal mu): accuracy of the
samples answered early vs the target t, overall accuracy, offload rate, cost.
(b) Equal cost: sweep each knob with and without temperatures, score on validation, interpolate accuracy linearly
on the normalised-cost axis over the cost range both curves cover, and report the gap (cal - raw).
(c) The report's operating-point protocol (glue_eval.report.choose_knob: knob chosen on the calibration split
by two-fold cross-fitting as the cheapest one within a metric drop), with and without temperatures.

    .venv/bin/python benchmarks/calibration_experiment.py            # -> results/calibration.md, .json, pngs

Threads are pinned to 1 (KMeans on a shared 2-core machine is ~40x slower with OpenMP oversubscription).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clustering import DimeePolicy, ExitPolicy, ThresholdPolicy, evaluate_policy
from clustering.profiles import confidence
from glue_eval.calibration import fit_run_temperatures, plot_reliability, run_calibration_report
from glue_eval.metrics import compute_glue_metrics, predictions_from_logits, primary_metric
from glue_eval.report import Tunable, choose_knob
from tiers import CONTINUE, HANDOFF_CLOUD, CachedSplit, CostModel, TierPlan, read_cached_split, read_run_info

REPO = Path(__file__).resolve().parent.parent
TASKS = ("sst2-4k", "mrpc", "rte")  # run folders under --runs (the committed MiniLM caches)
TARGETS = (0.8, 0.9, 0.95)
DIMEE_MUS_A = (0.05, 0.1, 0.2)
SWEEP_THRESHOLDS = tuple(
    np.unique(np.round(np.concatenate([np.linspace(0.5, 0.99, 50), 1.0 - np.logspace(-2, -4, 9)]), 6))
)
# Pinned to what produced results/calibration.md (the report's grid and DIMEE's profile default have since changed)
MU_GRID = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
DIMEE_PROFILE = ("confidence",)
SWEEP_MUS = tuple(sorted({0.001, *MU_GRID, 0.75, 1.0}))
COSTS_AT = (0.4, 0.6, 0.8, 1.0)
MAX_DROPS = (0.003, 0.01)
FINDINGS_START, FINDINGS_END = "<!-- findings -->", "<!-- /findings -->"


# ---- the paper's single-branch rule ------------------------------------------------------------------------
class MobileThresholdRule(ExitPolicy):
    """The paper's rule on our routes: answer at the mobile end m when its confidence is >= t, else hand the
    sample to the cloud at m (the direct mobile -> cloud route), which runs to L. Knob-only: nothing is learned."""

    fit_requires_labels = False

    def __init__(
        self,
        plan: TierPlan | None = None,
        cost_model: CostModel | None = None,
        temperatures: list[float] | None = None,
        threshold: float = 0.9,
    ):
        self.plan, self.cost_model, self.temperatures, self.threshold = plan, cost_model, temperatures, threshold

    def _step(self, logits_seen: np.ndarray, tier: int, depth: int, features: np.ndarray | None) -> np.ndarray:
        n, m, last = logits_seen.shape[0], self.plan_.mobile_end, self.plan_.num_layers
        if tier == 0 and depth == m:
            conf = confidence(logits_seen, self._temps(m))[:, m - 1]
            return np.where(conf >= float(self.threshold), m, HANDOFF_CLOUD)
        if depth == last:
            return np.full(n, last)
        return np.full(n, CONTINUE)


def builders(plan: TierPlan, cost: CostModel, temps: np.ndarray | None) -> dict[str, Callable[[float], object]]:
    t_list = None if temps is None else temps.tolist()
    return {
        "threshold": lambda t: ThresholdPolicy(plan, cost, temperatures=t_list, criterion="confidence", threshold=float(t)),
        "threshold-m": lambda t: MobileThresholdRule(plan, cost, t_list, threshold=float(t)),
        "dimee": lambda mu: DimeePolicy(plan, cost, temperatures=t_list, mu=float(mu), profile_features=DIMEE_PROFILE),
    }


# ---- scoring ------------------------------------------------------------------------------------------------
def score(policy, split: CachedSplit, plan: TierPlan, cost: CostModel, task: str, temps: np.ndarray | None) -> dict:
    """Accuracy, task metric, cost and where samples were answered; `early` = before the final exit L."""
    res = evaluate_policy(policy, split.logits, split.labels, split.embedding)
    exits = res["exits"]
    rows = np.arange(exits.size)
    chosen = split.logits[rows, exits - 1]
    metric = compute_glue_metrics(task, predictions_from_logits(task, chosen), split.labels)[primary_metric(task)]
    conf = confidence(split.logits, temps)[rows, exits - 1]  # the confidence the policy sees at its exit
    correct = res["correct"].astype(bool)
    early, mobile = exits < plan.num_layers, exits <= plan.mobile_end

    def part(mask: np.ndarray) -> tuple[float | None, float | None]:
        if not mask.any():
            return None, None
        return float(correct[mask].mean()), float(conf[mask].mean())

    early_acc, early_conf = part(early)
    mobile_acc, mobile_conf = part(mobile)
    return {
        "accuracy": res["accuracy"],
        "metric": float(metric),
        "normalised_cost": res["normalised_cost"],
        "early_share": float(early.mean()),
        "early_accuracy": early_acc,
        "early_confidence": early_conf,
        "mobile_share": float(mobile.mean()),
        "mobile_accuracy": mobile_acc,
        "mobile_confidence": mobile_conf,
        "offload_rate": float((exits > plan.mobile_end).mean()),
        "edge_cloud_rate": float((exits > plan.edge_end).mean()),
        "tier_shares": res["tier_shares"],
    }


def curve_gap(raw: list[dict], cal: list[dict], key: str) -> dict:
    """`key` of cal minus raw, both linearly interpolated on normalised cost over the shared cost range."""

    def xy(points: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        costs = np.array([p["normalised_cost"] for p in points])
        values = np.array([p[key] for p in points])
        uniq = np.unique(costs)
        return uniq, np.array([values[costs == c].mean() for c in uniq])

    (xr, yr), (xc, yc) = xy(raw), xy(cal)
    lo, hi = max(xr.min(), xc.min()), min(xr.max(), xc.max())
    out: dict = {"cost_range": [float(lo), float(hi)]}
    if hi - lo < 1e-9:
        out.update(mean=None, min=None, max=None, at={})
        return out
    grid = np.linspace(lo, hi, 201)
    gap = np.interp(grid, xc, yc) - np.interp(grid, xr, yr)
    out.update(
        mean=float(gap.mean()),
        min=float(gap.min()),
        max=float(gap.max()),
        cost_of_max=float(grid[gap.argmax()]),
        cost_of_min=float(grid[gap.argmin()]),
        at={
            str(c): float(np.interp(c, xc, yc) - np.interp(c, xr, yr)) for c in COSTS_AT if lo - 1e-9 <= c <= hi + 1e-9
        },
    )
    return out


# ---- one task -------------------------------------------------------------------------------------------------
def run_task(run_dir: Path, out_dir: Path, plot: bool, log) -> dict:
    info = read_run_info(run_dir)
    plan, cost, task = info.plan, info.cost_model, info.task
    fit, ev = read_cached_split(run_dir, "calibration"), read_cached_split(run_dir, "validation")
    scaler = fit_run_temperatures(run_dir, "calibration", "all")
    temps = scaler.temperatures_
    result: dict = {
        "task": task,
        "run": str(run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir),
        "metric_name": primary_metric(task),
        "n_calibration": int(fit.labels.size),
        "n_validation": int(ev.labels.size),
        "plan": plan.to_dict(),
        "normalised_exit_costs": cost.normalised_exit_costs(plan).tolist(),
        "temperatures": temps.tolist(),
        "calibration_validation": run_calibration_report(run_dir, temps, "validation"),
        "calibration_in_sample": run_calibration_report(run_dir, temps, "calibration"),
    }
    if plot:
        path = out_dir / f"reliability_{task}.png"
        heading = f"{task} validation: before vs after temperature scaling"
        plot_reliability(run_dir, path, temps, "validation", title=heading)
        result["reliability_png"] = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    variants = {"raw": None, "cal": temps}

    # (a) equal target confidence / equal knob
    equal_target = []
    for name, knobs in (("threshold", TARGETS), ("threshold-m", TARGETS), ("dimee", DIMEE_MUS_A)):
        for knob in knobs:
            row = {"policy": name, "knob": float(knob)}
            for variant, t in variants.items():
                policy = builders(plan, cost, t)[name](knob).fit(fit.logits, fit.labels, features=fit.embedding)
                row[variant] = score(policy, ev, plan, cost, task, t)
            equal_target.append(row)
    result["equal_target"] = equal_target
    log(f"  {task}: (a) done")

    # (b) equal cost
    sweeps, gaps = {}, {}
    for name, knobs in (("threshold", SWEEP_THRESHOLDS), ("threshold-m", SWEEP_THRESHOLDS), ("dimee", SWEEP_MUS)):
        sweeps[name] = {}
        for variant, t in variants.items():
            build = builders(plan, cost, t)[name]
            points = []
            for knob in knobs:
                policy = build(knob).fit(fit.logits, fit.labels, features=fit.embedding)
                points.append({"knob": float(knob), **score(policy, ev, plan, cost, task, t)})
            sweeps[name][variant] = points
        gaps[name] = {
            "accuracy": curve_gap(sweeps[name]["raw"], sweeps[name]["cal"], "accuracy"),
            "metric": curve_gap(sweeps[name]["raw"], sweeps[name]["cal"], "metric"),
        }
        log(f"  {task}: (b) {name} done")
    result["sweeps"] = {
        name: {v: [{k: p[k] for k in ("knob", "accuracy", "metric", "normalised_cost", "offload_rate")} for p in pts]
               for v, pts in per.items()}
        for name, per in sweeps.items()
    }
    result["equal_cost"] = gaps
    path = out_dir / f"cost_accuracy_{task}.png"
    plot_sweeps(sweeps, task, path)
    result["cost_accuracy_png"] = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)

    # (c) operating-point protocol of glue_eval.report
    operating = []
    for name, knobs in (("threshold", SWEEP_THRESHOLDS), ("dimee", SWEEP_MUS)):
        for variant, t in variants.items():
            family = Tunable(name, knobs, builders(plan, cost, t)[name], cheaper_first=True)
            for max_drop in MAX_DROPS:
                knob, cv_drop = choose_knob(family, fit, plan, cost, task, max_drop)
                policy = family.build(knob).fit(fit.logits, fit.labels, features=fit.embedding)
                scored = score(policy, ev, plan, cost, task, t)
                final = compute_glue_metrics(
                    task, predictions_from_logits(task, ev.logits[:, -1]), ev.labels
                )[primary_metric(task)]
                operating.append(
                    {
                        "policy": name,
                        "variant": variant,
                        "max_drop": max_drop,
                        "knob": float(knob),
                        "cv_drop": float(cv_drop),
                        "drop": float(final - scored["metric"]),
                        **scored,
                    }
                )
    result["operating_point"] = operating
    log(f"  {task}: (c) done")
    return result


def plot_sweeps(sweeps: dict, task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 3.6), squeeze=False)
    for ax, (name, per) in zip(axes[0], sweeps.items()):
        for variant, colour in (("raw", "tab:red"), ("cal", "tab:blue")):
            pts = sorted(per[variant], key=lambda p: p["normalised_cost"])
            ax.plot(
                [p["normalised_cost"] for p in pts],
                [100 * p["accuracy"] for p in pts],
                "o-",
                ms=2.5,
                lw=1,
                color=colour,
                label="uncalibrated" if variant == "raw" else "temperature-scaled",
            )
        ax.set_title(f"{task}: {name}", fontsize=9)
        ax.set_xlabel("normalised cost (all-cloud = 1)", fontsize=8)
        ax.set_ylabel("validation accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- markdown -------------------------------------------------------------------------------------------------
def _pct(x, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _signed(x, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:+.{digits}f}"


def render_markdown(data: dict, findings: str, md_dir: Path) -> str:
    runs = ", ".join("`" + t["run"] + "`" for t in data["tasks"])

    def image(png: str) -> str:
        return os.path.relpath(REPO / png if not Path(png).is_absolute() else Path(png), md_dir)

    lines = [
        "# Calibration before deployment: temperature-scaled exits and offloading",
        "",
        "Seed: *Calibration-Aided Edge Inference Offloading via Adaptive Model Partitioning of Deep Neural "
        "Networks* (Pacheco, Couto, Simeone). Design: `../shared/DESIGN.md` §5. Issue 5, part 1.",
        "",
        "## How these numbers were made",
        "",
        "```",
        data["command"],
        "```",
        "",
        "Per-task calibration of a run folder in place (what a deployment does; writes `<run>/temperatures.json`):",
        "",
        "```",
        "dimee calibrate runs/<task> --plot results/calibration/reliability_<task>.png",
        "```",
        "",
        f"Runs: {runs} (MiniLM-L6 early-exit model, 6 exits, plan "
        "mobile 1-2 / edge 3-4 / cloud 5-6, default cost model). Temperatures: one per exit, NLL-optimal on the "
        "held-out `calibration` split (carved from train), L-BFGS from T = 1.5, fitted on all samples. Every "
        "policy is fitted on `calibration` and scored once on `validation` (GLUE dev). ECE: 15 equal-width bins. "
        "Accuracy is the fraction of samples whose chosen exit is right; the task metric (F1 for MRPC, "
        "accuracy otherwise) is in the JSON.",
        "",
        "Policies (each `raw` = uncalibrated confidences, `cal` = temperature-scaled):",
        "",
        "* **threshold**: first exit 1..5 with max-softmax >= t answers, else exit 6 (tiers hand off in between).",
        "* **threshold-m**: the paper's rule, one branch at the mobile partition point (exit 2): answer on the "
        "device if confidence >= t, else offload to the cloud, which runs the full model (exit 6).",
        "* **dimee**: the DIMEE policy (k-means on the mobile confidence profile, reward correct - mu x cost). "
        "It has no "
        "confidence target; calibration changes only its input features.",
        "",
        f"Elapsed: {data['elapsed_s']:.0f} s on {data['machine']}.",
        "",
        FINDINGS_START,
        findings.strip("\n"),
        FINDINGS_END,
        "",
        "## Per-exit calibration (validation)",
        "",
        "ECE and NLL before -> after temperature scaling; T fitted on the calibration split. "
        "Accuracy per exit on both splits shows how far the calibration split is from validation.",
        "",
    ]
    for t in data["tasks"]:
        lines += [
            f"### {t['task']} ({t['n_calibration']} calibration / {t['n_validation']} validation samples)",
            "",
            "| exit | tier | T | acc val | acc cal | ECE before | ECE after | NLL before | NLL after |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row, ins in zip(t["calibration_validation"]["exits"], t["calibration_in_sample"]["exits"]):
            lines.append(
                f"| {row['exit']} | {row['tier']} | {row['temperature']:.2f} | {_pct(row['accuracy'])} | "
                f"{_pct(ins['accuracy'])} | {row['ece_before']:.3f} | {row['ece_after']:.3f} | "
                f"{row['nll_before']:.3f} | {row['nll_after']:.3f} |"
            )
        if "reliability_png" in t:
            lines += ["", f"![reliability {t['task']}]({image(t['reliability_png'])})"]
        lines.append("")

    lines += [
        "## (a) Equal target confidence",
        "",
        "Threshold rules at target t, DIMEE at equal mu. *early acc* = accuracy of the samples answered before "
        "the final exit (threshold-m: answered on the device), *early conf* = their mean confidence as the policy "
        "saw it; a well calibrated rule has early acc >= t and early acc ~ early conf. *offload* = share sent "
        "from mobile to edge/cloud. Accuracy, early-acc and offload in %, cost normalised (all-cloud = 1).",
        "",
        "| task | policy | t / mu | early acc raw | early acc cal | early conf raw | early conf cal | "
        "early share raw | "
        "early share cal | acc raw | acc cal | offload raw | offload cal | cost raw | cost cal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in data["tasks"]:
        for row in t["equal_target"]:
            r, c = row["raw"], row["cal"]
            acc_key, conf_key, share_key = (
                ("mobile_accuracy", "mobile_confidence", "mobile_share")
                if row["policy"] == "threshold-m"
                else ("early_accuracy", "early_confidence", "early_share")
            )
            lines.append(
                f"| {t['task']} | {row['policy']} | {row['knob']:g} | {_pct(r[acc_key])} | {_pct(c[acc_key])} | "
                f"{_pct(r[conf_key])} | {_pct(c[conf_key])} | {_pct(r[share_key])} | {_pct(c[share_key])} | "
                f"{_pct(r['accuracy'])} | {_pct(c['accuracy'])} | {_pct(r['offload_rate'])} | "
                f"{_pct(c['offload_rate'])} | {r['normalised_cost']:.3f} | {c['normalised_cost']:.3f} |"
            )
    lines += [
        "",
        "## (b) Accuracy at equal cost",
        "",
        "Each knob swept (thresholds: "
        f"{len(SWEEP_THRESHOLDS)} values in [0.5, 0.9999]; DIMEE mu: {', '.join(f'{m:g}' for m in SWEEP_MUS)}), "
        "with and without temperatures, scored on validation. Accuracy is interpolated linearly on the normalised "
        "cost axis over the cost range both curves cover; the gap is cal - raw in accuracy points (task-metric "
        "points in the last column). Positive = calibration wins at equal cost.",
        "",
        "| task | policy | shared cost range | mean gap | worst | best | "
        + " | ".join(f"gap @ {c:g}" for c in COSTS_AT)
        + " | mean gap, task metric |",
        "|---|---|---|---:|---:|---:|" + "---:|" * len(COSTS_AT) + "---:|",
    ]
    for t in data["tasks"]:
        for name, gap in t["equal_cost"].items():
            g, gm = gap["accuracy"], gap["metric"]
            lo, hi = g["cost_range"]
            at = [(_signed(g["at"][str(c)]) if str(c) in g.get("at", {}) else "–") for c in COSTS_AT]
            lines.append(
                f"| {t['task']} | {name} | {lo:.2f}-{hi:.2f} | {_signed(g['mean'])} | {_signed(g['min'])} | "
                f"{_signed(g['max'])} | " + " | ".join(at) + f" | {_signed(gm['mean'])} |"
            )
    lines += [""]
    for t in data["tasks"]:
        lines.append(f"![cost vs accuracy {t['task']}]({image(t['cost_accuracy_png'])})")
    lines += [
        "",
        "## (c) Operating point chosen on the calibration split (the report's protocol)",
        "",
        "`glue_eval.report.choose_knob`: the cheapest knob whose two-fold cross-fitted drop of the task metric on "
        "the calibration split is <= max drop; refitted on the whole calibration split and scored once on "
        "validation. (The temperatures are fitted on the whole calibration split before the cross-fitting.) "
        "drop = final-exit task metric - policy's, in points.",
        "",
        "| task | policy | max drop | knob raw | knob cal | drop raw | drop cal | acc raw | acc cal | "
        "cost raw | cost cal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in data["tasks"]:
        ops = t["operating_point"]
        for name in ("threshold", "dimee"):
            for max_drop in MAX_DROPS:
                r = next(o for o in ops if o["policy"] == name and o["variant"] == "raw" and o["max_drop"] == max_drop)
                c = next(o for o in ops if o["policy"] == name and o["variant"] == "cal" and o["max_drop"] == max_drop)
                lines.append(
                    f"| {t['task']} | {name} | {100 * max_drop:g} | {r['knob']:g} | {c['knob']:g} | "
                    f"{100 * r['drop']:+.2f} | {100 * c['drop']:+.2f} | {_pct(r['accuracy'], 2)} | "
                    f"{_pct(c['accuracy'], 2)} | {r['normalised_cost']:.3f} | {c['normalised_cost']:.3f} |"
                )
    lines += ["", "Raw numbers (every sweep point, tier shares): `results/calibration/calibration.json`.", ""]
    return "\n".join(lines)


def _kept_findings(path: Path) -> str:
    if not path.exists():
        return "## Findings\n\n(Written by hand after the run; kept when the script rewrites this file.)\n"
    text = path.read_text()
    if FINDINGS_START in text and FINDINGS_END in text:
        return text.split(FINDINGS_START, 1)[1].split(FINDINGS_END, 1)[0]
    return "## Findings\n\n(Written by hand after the run; kept when the script rewrites this file.)\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="results/caches/minilm", help="folder holding one run folder per task")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="run folder names under --runs")
    parser.add_argument("--plot-tasks", nargs="+", default=list(TASKS), help="tasks that get reliability diagrams")
    parser.add_argument("--out-dir", default="results/calibration")
    parser.add_argument("--markdown", default="results/calibration.md")
    args = parser.parse_args(argv)
    start = time.time()
    out_dir = (REPO / args.out_dir) if not Path(args.out_dir).is_absolute() else Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.1f}s] {msg}", flush=True)

    tasks = []
    for task in args.tasks:
        run_dir = Path(args.runs) / task
        run_dir = run_dir if run_dir.is_absolute() else REPO / run_dir
        log(f"{task}: {run_dir}")
        tasks.append(run_task(run_dir, out_dir, task in args.plot_tasks, log))
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calibration_experiment.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    data = {
        "command": command.strip(),
        "elapsed_s": time.time() - start,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (numpy only, no model run)",
        "targets": list(TARGETS),
        "dimee_mus_equal_knob": list(DIMEE_MUS_A),
        "sweep_thresholds": list(SWEEP_THRESHOLDS),
        "sweep_mus": list(SWEEP_MUS),
        "max_drops": list(MAX_DROPS),
        "tasks": tasks,
    }
    (out_dir / "calibration.json").write_text(json.dumps(data, indent=1))
    md_path = REPO / args.markdown if not Path(args.markdown).is_absolute() else Path(args.markdown)
    md_path.write_text(render_markdown(data, _kept_findings(md_path), md_path.parent))
    log(f"wrote {md_path} and {out_dir / 'calibration.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
