"""Expert exits for distorted text (issue 6; seed: early-exit DNNs with expert branches for distorted images).

For each task (default SST-2 and MRPC, run folders ``runs/ckpt/<task>``), each distortion type and two
severities of the validation split: accuracy, offload rate (share of samples not answered on mobile) and
normalised cost with

(a) the standard exits, (b) expert exits chosen per sample by the distortion detector, (c) expert exits of the
true distortion type (the upper bound),

under offloading policies fitted on the clean calibration split with the standard exits and then used
unchanged (confidence threshold; DIMEE), as the report does (knob = cheapest within ``--max-drop`` by
two-fold cross-fitting on calibration).

Expert heads (exits 1..e: mobile and edge) are trained on distorted copies of a subset of the run's train part
with the encoder frozen, from cached pooled layer states (``glue_eval.experts``); they and the detector are
saved in the run folder (``<run>/experts/``). The forward passes are cached under ``<run>/experts/cache`` and
reused on a rerun with the same settings.

    .venv/bin/python benchmarks/expert_exits.py     # -> results/experts.md, results/experts/*
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # KMeans on a shared 2-core machine is far slower with oversubscription
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import csv
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from glue_eval.experts import EXPERT_TYPES, ExpertConfig, evaluate_experts, prepare_experts
from glue_eval.metrics import primary_metric

REPO = Path(__file__).resolve().parent.parent
TASKS = ("sst2", "mrpc")
TRAIN_SUBSETS = {"sst2": 4000, "mrpc": None}
MODE_LABELS = {"standard": "(a) standard", "detector": "(b) experts by detector", "true_type": "(c) experts, true type"}
SHORT = {
    "char_swap": "swap",
    "char_drop": "drop",
    "char_insert": "insert",
    "keyboard": "keyboard",
    "word_dropout": "word drop",
    "case_punct": "punct",
}
FINDINGS_START, FINDINGS_END = "<!-- findings -->", "<!-- /findings -->"


# ---- plots ------------------------------------------------------------------------------------------------
def plot_modes(data: dict, policy: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = data["tasks"]
    fig, axes = plt.subplots(len(tasks), 3, figsize=(17, 3.6 * len(tasks)), squeeze=False)
    colours = {"standard": "tab:grey", "detector": "tab:blue", "true_type": "tab:green"}
    for row, result in zip(axes, tasks):
        rows = [r for r in result["rows"] if r["policy"] == policy]
        sets = []
        for r in rows:
            key = (r["distortion"], r["severity"])
            if key not in sets:
                sets.append(key)
        x = np.arange(len(sets))
        labels = ["clean" if d == "clean" else f"{SHORT.get(d, d)} {s:g}" for d, s in sets]
        for ax, metric, title in (
            (row[0], "offload_rate", "offload rate (%, not answered on mobile)"),
            (row[1], "accuracy", "accuracy (%)"),
            (row[2], "normalised_cost", "normalised cost (all-cloud = 1)"),
        ):
            for k, mode in enumerate(("standard", "detector", "true_type")):
                vals = []
                for key in sets:
                    hit = [r for r in rows if (r["distortion"], r["severity"]) == key and r["mode"] == mode]
                    vals.append(hit[0][metric] if hit else np.nan)
                vals = np.array(vals) * (1 if metric == "normalised_cost" else 100)
                ax.bar(x + (k - 1) * 0.27, vals, 0.27, color=colours[mode], label=MODE_LABELS[mode])
            ax.set_xticks(x)
            ax.set_xticklabels(labels, fontsize=7, rotation=45, ha="right")
            ax.set_title(f"{result['task']} ({policy}): {title}", fontsize=9)
            ax.tick_params(axis="y", labelsize=7)
            ax.grid(axis="y", alpha=0.3)
            if metric == "accuracy":
                lo = np.nanmin([r["accuracy"] for r in rows]) * 100
                ax.set_ylim(max(0, lo - 5), min(100, np.nanmax([r["accuracy"] for r in rows]) * 100 + 3))
        row[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(result: dict, policy: str, path: Path) -> None:
    """Accuracy against offload rate over the policy's knob grid: one panel per validation set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [c for c in result["curves"] if c["policy"] == policy]
    if not curves:
        return
    sevs = sorted({c["severity"] for c in curves if c["distortion"] != "clean"})
    types = [t for t in result["config"]["types"]]
    fig, axes = plt.subplots(len(sevs), len(types) + 1, figsize=(2.6 * (len(types) + 1), 2.5 * len(sevs)), squeeze=False)
    colours = {"standard": "tab:grey", "detector": "tab:blue", "true_type": "tab:green"}
    for r, sev in enumerate(sevs):
        for c, name in enumerate(["clean", *types]):
            ax = axes[r][c]
            key_sev = 0.0 if name == "clean" else sev
            for mode in ("standard", "detector", "true_type"):
                pts = sorted(
                    (p for p in curves if (p["distortion"], p["severity"], p["mode"]) == (name, key_sev, mode)),
                    key=lambda p: (p["offload_rate"], p["accuracy"]),
                )
                if pts:
                    ax.plot([100 * p["offload_rate"] for p in pts], [100 * p["accuracy"] for p in pts], ".-", ms=2,
                            lw=0.8, color=colours[mode], label=MODE_LABELS[mode])
                chosen = _find(result["rows"], name, key_sev, mode, policy)
                if chosen:
                    ax.plot(100 * chosen["offload_rate"], 100 * chosen["accuracy"], "o", ms=5, mfc="none",
                            color=colours[mode])
            ax.set_title(name if name == "clean" else f"{name} {sev:g}", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            if r == len(sevs) - 1:
                ax.set_xlabel("offload rate (%)", fontsize=7)
            if c == 0:
                ax.set_ylabel("accuracy (%)", fontsize=7)
    axes[0][min(1, len(types))].legend(fontsize=6)
    fig.suptitle(f"{result['task']}: {policy} policy over its knob grid (fitted on clean calibration); "
                 "circles = knob chosen on clean calibration", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- tables -----------------------------------------------------------------------------------------------
def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _find(rows, distortion, severity, mode, policy):
    for r in rows:
        if (r["distortion"], r["severity"], r["mode"], r["policy"]) == (distortion, severity, mode, policy):
            return r
    return None


def mode_table(result: dict, policy: str) -> list[str]:
    rows = [r for r in result["rows"] if r["policy"] == policy]
    sets = []
    for r in rows:
        if (r["distortion"], r["severity"]) not in sets:
            sets.append((r["distortion"], r["severity"]))
    metric_name = {"f1": "F1", "matthews_correlation": "MCC"}.get(primary_metric(result["task"]))
    head = (
        "| distortion | sev | exit-6 acc | acc (a) | acc (b) | acc (c) | offload (a) | offload (b) | offload (c) "
        "| cost (a) | cost (b) | cost (c) | mobile conf (a) | mobile conf (c) |"
        + (f" {metric_name} (a) | {metric_name} (c) |" if metric_name else "")
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d, s in sets:
        a, b, c = (_find(rows, d, s, m, policy) for m in ("standard", "detector", "true_type"))
        lines.append(
            "| "
            + " | ".join(
                [
                    d,
                    "–" if d == "clean" else f"{s:g}",
                    _pct(a["final_accuracy"]),
                    _pct(a["accuracy"]),
                    _pct(b["accuracy"]),
                    _pct(c["accuracy"]) if c else "–",
                    _pct(a["offload_rate"]),
                    _pct(b["offload_rate"]),
                    _pct(c["offload_rate"]) if c else "–",
                    f"{a['normalised_cost']:.3f}",
                    f"{b['normalised_cost']:.3f}",
                    f"{c['normalised_cost']:.3f}" if c else "–",
                    f"{a['mobile_confidence']:.3f}",
                    f"{c['mobile_confidence']:.3f}" if c else "–",
                    *([_pct(a["metric"]), _pct(c["metric"]) if c else "–"] if metric_name else []),
                ]
            )
            + " |"
        )
    return lines


def summary_lines(result: dict, policy: str) -> list[str]:
    """Mean over the distorted sets of the change (b) - (a) and (c) - (a)."""
    rows = [r for r in result["rows"] if r["policy"] == policy and r["distortion"] != "clean"]
    out = []
    for mode in ("detector", "true_type"):
        d_acc, d_off, d_cost = [], [], []
        for r in rows:
            if r["mode"] != mode:
                continue
            a = _find(rows, r["distortion"], r["severity"], "standard", policy)
            d_acc.append(r["accuracy"] - a["accuracy"])
            d_off.append(r["offload_rate"] - a["offload_rate"])
            d_cost.append(r["normalised_cost"] - a["normalised_cost"])
        n = max(1, len(d_acc))
        out.append(
            f"| {result['task']} | {policy} | {MODE_LABELS[mode]} | {100 * sum(d_acc) / n:+.2f} | "
            f"{100 * sum(d_off) / n:+.1f} | {sum(d_cost) / n:+.3f} | "
            f"{sum(1 for x, y in zip(d_acc, d_off) if x >= -1e-9 and y < 0)}/{len(d_acc)} |"
        )
    return out


def equal_accuracy_lines(result: dict, policy: str) -> list[str]:
    """Mean over the distorted sets: least offload rate (and cost) reaching the standard exits' accuracy."""
    eq = [e for e in result["equal_accuracy"] if e["policy"] == policy and e["distortion"] != "clean"]
    out = []
    base = {(e["distortion"], e["severity"]): e for e in eq if e["mode"] == "standard"}
    for mode in ("detector", "true_type"):
        d_off, d_cost, fewer, never = [], [], 0, 0
        for e in eq:
            if e["mode"] != mode:
                continue
            b = base[(e["distortion"], e["severity"])]
            if e["offload_rate"] is None:
                never += 1
                continue
            d_off.append(e["offload_rate"] - b["offload_rate"])
            d_cost.append(e["normalised_cost"] - b["normalised_cost"])
            fewer += e["offload_rate"] < b["offload_rate"] - 1e-9
        n = max(1, len(d_off))
        out.append(
            f"| {result['task']} | {policy} | {MODE_LABELS[mode]} | {100 * sum(d_off) / n:+.1f} | "
            f"{sum(d_cost) / n:+.3f} | {fewer}/{len(d_off) + never} | {never} |"
        )
    return out


def equal_offload_lines(result: dict, policy: str) -> list[str]:
    out = []
    for sev in sorted({e["severity"] for e in result["equal_offload"] if e["distortion"] != "clean"}):
        for mode in ("detector", "true_type"):
            eq = [
                e
                for e in result["equal_offload"]
                if e["policy"] == policy and e["mode"] == mode and e["severity"] == sev and e["distortion"] != "clean"
            ]
            if not eq:
                continue
            cells = " | ".join(f"{100 * e['mean_gain']:+.2f}" for e in eq)
            mean = sum(e["mean_gain"] for e in eq) / len(eq)
            out.append(f"| {result['task']} | {policy} | {sev:g} | {MODE_LABELS[mode]} | {cells} | {100 * mean:+.2f} |")
    return out


def detector_table(data: dict) -> list[str]:
    feats = []
    for result in data["tasks"]:
        for r in result["detection"]:
            if r["features"] not in feats:
                feats.append(r["features"])
    lines = ["| task | distortion | sev | " + " | ".join(feats) + " |", "|---|---|---|" + "---|" * len(feats)]
    for result in data["tasks"]:
        sets = []
        for r in result["detection"]:
            if (r["distortion"], r["severity"]) not in sets:
                sets.append((r["distortion"], r["severity"]))
        for d, s in sets:
            accs = {r["features"]: r["accuracy"] for r in result["detection"] if (r["distortion"], r["severity"]) == (d, s)}
            lines.append(
                f"| {result['task']} | {d} | {'–' if d == 'clean' else f'{s:g}'} | "
                + " | ".join(_pct(accs.get(f)) for f in feats)
                + " |"
            )
    return lines


def head_training_lines(data: dict) -> list[str]:
    lines = ["| task | type | exit: held-out loss start -> best (best epoch) |", "|---|---|---|"]
    for result in data["tasks"]:
        for name, per_exit in result["head_training"].items():
            cells = ", ".join(
                f"{i}: {v['held_out_loss_start']:.3f} -> {v['held_out_loss']:.3f} ({v['best_epoch']})"
                for i, v in per_exit.items()
            )
            lines.append(f"| {result['task']} | {name} | {cells} |")
    return lines


def render_markdown(data: dict, findings: str, md_dir: Path) -> str:
    def rel(p: str) -> str:
        return os.path.relpath(REPO / p, md_dir)

    lines = [
        "# Expert exits for distorted text",
        "",
        "Seed: *Early-exit deep neural networks for distorted images: providing an efficient edge offloading* "
        "(expert side branches per distortion type, chosen by a distortion detector). Design: "
        "`../shared/DESIGN.md` §7. Issue 6.",
        "",
        "## How these numbers were made",
        "",
        "```",
        data["command"],
        "```",
        "",
        "The same, one run at a time, from the command line (trains and stores the experts and the detector in "
        "the run folder, then prints the table):",
        "",
        "```",
        "dimee experts train runs/ckpt/sst2 --train-subset 4000",
        "dimee experts eval runs/ckpt/sst2",
        "```",
        "",
        "Setup:",
        "",
    ]
    for result in data["tasks"]:
        lines.append(f"* `{result['run_dir']}` ({result['task']}): {result['data']}.")
    cfg = data["tasks"][0]["config"]
    lines += [
        "* Encoder: MiniLM-L6 early-exit runs (6 exits, mean pooling, plan mobile 1-2 / edge 3-4 / cloud 5-6, "
        "default cost model), fine-tuned on clean text; frozen here.",
        f"* Distortion types: {', '.join(cfg['types'])} (`glue_eval/distortion.py`; severity = share of eligible "
        "words hit, one edit per hit word for the character types). Both texts of an MRPC pair are distorted. "
        "The encoder is uncased, so `case_punct` reaches the model only through the lost punctuation.",
        f"* Expert heads: one set per type at exits {data['tasks'][0]['expert_exits']} (mobile and edge), "
        "initialised from the standard heads and fine-tuned on the cached pooled states of distorted train "
        f"copies, each row at a severity drawn uniformly from {cfg['train_severity']} (a mix, not the evaluated "
        f"severities); AdamW lr {cfg['learning_rate']}, up to {cfg['epochs']} epochs, early stopping on "
        f"{cfg['holdout']:.0%} held-out rows. Cloud exits 5-6 are never replaced.",
        f"* Detector (`clustering/detector.py`): multinomial logistic regression on {cfg['detector_features']!r} "
        "features (cheap text statistics; the lexicon and trigram statistics come from the whole words of the "
        "encoder's tokenizer vocabulary), trained on the clean and the distorted train copies (7 classes). "
        "Its accuracy on each validation set is below for three feature sets; mode (b) uses "
        f"{cfg['detector_features']!r}.",
        f"* Policies: fitted on the clean calibration split (standard exits), knob = cheapest with a cross-fitted "
        f"drop <= {100 * cfg['max_drop']:.1f} points, then used unchanged: threshold (first exit with max softmax "
        ">= t) and DIMEE (k-means on the mobile confidence profile). Offload rate = share of samples not answered "
        "on mobile; cost = mean cost / all-cloud cost (the detector's own cost, a linear model on ~17 numbers, is "
        "not charged).",
        f"* Validation sets: GLUE dev ({', '.join(str(r['rows'][0]['n']) + ' ' + r['task'] for r in data['tasks'])} "
        f"rows), clean and each type at severities {', '.join(f'{s:g}' for s in cfg['eval_severities'])}.",
        "",
        f"Elapsed: {data['elapsed_s']:.0f} s on {data['machine']} (forward passes reused from the cache where "
        "present; timings per task in the JSON).",
        "",
        FINDINGS_START,
        findings.strip("\n"),
        FINDINGS_END,
        "",
        "## Mean change against the standard exits (distorted sets only)",
        "",
        "| task | policy | mode | accuracy (points) | offload rate (points) | normalised cost | sets with fewer "
        "offloads at equal or better accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in data["tasks"]:
        for policy in result["config"]["policies"]:
            lines += summary_lines(result, policy)
    lines += [
        "",
        "## At equal accuracy (knob curves)",
        "",
        "The policy's whole knob grid, each knob fitted on clean calibration, scored on every set and mode. For each "
        "distorted set, the least offload rate (and cost) at which a mode's curve reaches the accuracy that the "
        "standard exits have at the knob chosen on clean calibration; the table gives the mean change against the "
        "standard exits' own curve. This compares the exits at equal accuracy, free of the threshold choice (but "
        "it picks the knob on validation, so it is what the exits can do, not what a deployed policy does).",
        "",
        "| task | policy | mode | offload rate at equal accuracy (points) | cost at equal accuracy | sets with "
        "fewer offloads | sets where the target is never reached |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in data["tasks"]:
        for policy in result["config"]["policies"]:
            lines += equal_accuracy_lines(result, policy)
    types = data["tasks"][0]["config"]["types"]
    lines += [
        "",
        "Accuracy gain (points) over the standard exits at equal offload rate: the upper envelopes of the curves "
        "(best accuracy at an offload rate <= o), averaged over the offload levels o both cover (0-100% in 1% "
        "steps).",
        "",
        "| task | policy | severity | mode | " + " | ".join(types) + " | mean |",
        "|---|---|---|---|" + "---|" * (len(types) + 1),
    ]
    for result in data["tasks"]:
        for policy in result["config"]["policies"]:
            lines += equal_offload_lines(result, policy)
    for result in data["tasks"]:
        for policy, png in data.get("curve_plots", {}).get(result["task"], {}).items():
            lines += ["", f"![{result['task']} {policy} curves]({rel(png)})"]
    for policy in data["tasks"][0]["config"]["policies"]:
        lines += ["", f"## Per set: {policy} policy", ""]
        lines.append(f"![{policy}]({rel(data['plots'][policy])})")
        for result in data["tasks"]:
            knob = next(r["knob"] for r in result["rows"] if r["policy"] == policy)
            lines += ["", f"### {result['task']} (knob {knob:g})", ""]
            lines += mode_table(result, policy)
    lines += [
        "",
        "Columns: (a) standard exits, (b) expert exits chosen by the detector, (c) expert exits of the true type. "
        "Accuracy in %; offload = share not answered on mobile (%); mobile conf = mean max-softmax at exit 2; "
        "exit-6 acc = the final exit's accuracy on that set (the same in every mode); F1 (MRPC's GLUE metric) of "
        "the chosen exits.",
        "",
        "## Detector accuracy (validation)",
        "",
        "Share of samples whose type (or clean) it names correctly.",
        "",
        *detector_table(data),
        "",
        "## Expert head training",
        "",
        *head_training_lines(data),
        "",
    ]
    return "\n".join(lines)


def _kept_findings(path: Path) -> str:
    placeholder = "## Findings\n\n(Written by hand after the run; kept when the script rewrites this file.)\n"
    if not path.exists():
        return placeholder
    text = path.read_text()
    if FINDINGS_START in text and FINDINGS_END in text:
        return text.split(FINDINGS_START, 1)[1].split(FINDINGS_END, 1)[0]
    return placeholder


def write_csv(data: dict, path: Path) -> None:
    fields = [
        "task",
        "distortion",
        "severity",
        "mode",
        "policy",
        "knob",
        "n",
        "accuracy",
        "metric",
        "final_accuracy",
        "offload_rate",
        "cloud_share",
        "normalised_cost",
        "mobile_accuracy",
        "mobile_confidence",
    ]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for result in data["tasks"]:
            for r in result["rows"]:
                writer.writerow({k: (round(r[k], 5) if isinstance(r[k], float) else r[k]) for k in fields})


def _rounded(value, digits: int = 5):
    """Floats rounded for a smaller JSON (the curves hold thousands of points)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/ckpt", help="folder holding one run folder per task")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--types", nargs="+", default=list(EXPERT_TYPES))
    parser.add_argument("--severities", nargs="+", type=float, default=[0.1, 0.3])
    parser.add_argument("--sst2-train-subset", type=int, default=TRAIN_SUBSETS["sst2"])
    parser.add_argument("--train-subset", type=int, default=None, help="train rows for the other tasks (default: all)")
    parser.add_argument("--train-source", choices=("train", "calibration"), default="train",
                        help="rows the experts train on: the run's train part, or its calibration part (ablation)")
    parser.add_argument("--policies", nargs="+", default=["threshold", "dimee"])
    parser.add_argument("--detector-features", default="text")
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--out-dir", default="results/experts")
    parser.add_argument("--markdown", default="results/experts.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    start = time.time()
    out_dir = REPO / args.out_dir if not Path(args.out_dir).is_absolute() else Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {msg}", flush=True)

    tasks = []
    for task in args.tasks:
        run_dir = Path(args.runs) / task
        config = ExpertConfig(
            run_dir=str(run_dir),
            data_dir=args.data_dir,
            types=tuple(args.types),
            train_subset=args.sst2_train_subset if task == "sst2" else args.train_subset,
            train_source=args.train_source,
            eval_severities=tuple(args.severities),
            device=args.device,
            detector_features=args.detector_features,
            max_drop=args.max_drop,
            policies=tuple(args.policies),
        )
        log(f"{task}: preparing experts in {run_dir}")
        prepared = prepare_experts(config, log)
        log(f"{task}: evaluating ({prepared['timing']})")
        tasks.append(evaluate_experts(config, prepared, log))
    command = ".venv/bin/python benchmarks/expert_exits.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    data = {
        "command": command.strip(),
        "elapsed_s": time.time() - start,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads {args.torch_threads}",
        "tasks": tasks,
        "plots": {p: f"{args.out_dir}/modes_{p}.png" for p in args.policies},
    }
    for policy, png in data["plots"].items():
        plot_modes(data, policy, REPO / png)
    data["curve_plots"] = {
        r["task"]: {p: f"{args.out_dir}/curves_{r['task']}_{p}.png" for p in args.policies} for r in tasks
    }
    for result in tasks:
        for policy, png in data["curve_plots"][result["task"]].items():
            plot_curves(result, policy, REPO / png)
    (out_dir / "experts.json").write_text(json.dumps(_rounded(data), separators=(",", ":")))
    write_csv(data, out_dir / "table.csv")
    md_path = REPO / args.markdown if not Path(args.markdown).is_absolute() else Path(args.markdown)
    md_path.write_text(render_markdown(data, _kept_findings(md_path), md_path.parent))
    log(f"wrote {md_path}, {out_dir / 'experts.json'}, {out_dir / 'table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
