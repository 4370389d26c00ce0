"""Calibration of a run before deployment: per-exit temperatures, their report, reliability diagrams.

``calibrate_run`` fits one temperature per exit (:class:`clustering.calibration.TemperatureScaler`, NLL,
L-BFGS from T = 1.5) on the held-out fit split (default ``calibration``, carved from train) and stores them in
``<run>/temperatures.json``::

    {"temperatures": [T_1, ..., T_L], "fit_split": "calibration", "fit_on": "all", ..., "report": {...}}

The services, the threshold baselines and the DIMEE policy read the ``"temperatures"`` key; the rest is
provenance plus the per-exit report (ECE with 15 equal-width bins and NLL, before and after, on the eval
split). ``fit_on="exiting"`` fits exit i on the fit samples that exit there, as the calibration-aided
offloading paper's code does; which samples exit where is decided by an uncalibrated confidence threshold
rule at ``exit_threshold`` (exits with too few samples fall back to all samples, see ``fallback_exits``).

Regression runs (STS-B, one output per exit) are refused: temperature scaling calibrates a classifier's
softmax, and a regression head has none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from clustering.baselines import ThresholdPolicy
from clustering.calibration import (
    FIT_ON,
    TemperatureScaler,
    calibration_report,
    expected_calibration_error,
    reliability_curve,
)
from clustering.errors import CalibrationError
from clustering.profiles import softmax
from tiers import CachedSplit, RunInfo, read_cached_split, read_run_info
from tiers.run import TEMPERATURES_FILE, TemperatureFileError
from tiers.run import read_temperatures as read_run_temperatures

N_BINS = 15
CALIBRATION = "calibration"
VALIDATION = "validation"

__all__ = [
    "N_BINS",
    "calibrate_run",
    "calibration_table",
    "fit_run_temperatures",
    "plot_reliability",
    "read_temperatures",
    "run_calibration_report",
]


# ---- inputs --------------------------------------------------------------------------------------------------
def _classification_split(run_dir: str | Path, split: str) -> tuple[RunInfo, CachedSplit]:
    """Run info and one cached split, refusing regression runs with a clear message."""
    info = read_run_info(run_dir)
    if info.num_labels == 1:
        raise CalibrationError(
            f"{run_dir} is a regression run ({info.task}, one output per exit): temperature scaling calibrates "
            "a classifier's softmax confidences, so there is nothing to calibrate"
        )
    cached = read_cached_split(run_dir, split)
    if cached.logits.ndim != 3 or cached.logits.shape[2] < 2:
        raise CalibrationError(
            f"{run_dir}: cached {split!r} logits have shape {cached.logits.shape}; temperature scaling needs "
            "classification logits [n, exits, classes >= 2]"
        )
    if cached.logits.shape[1] != info.plan.num_layers:
        raise CalibrationError(
            f"{run_dir}: cached {split!r} logits have {cached.logits.shape[1]} exits but the run's plan has "
            f"{info.plan.num_layers}"
        )
    return info, cached


def _check_temperature_values(values: Any, num_layers: int | None, where: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise CalibrationError(f"{where}: temperatures must be a list of numbers ({err})") from err
    if arr.ndim != 1 or arr.size == 0:
        raise CalibrationError(f"{where}: temperatures must be a non-empty list of numbers, got {values!r}")
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise CalibrationError(f"{where}: temperatures must be finite and > 0, got {arr.tolist()}")
    if num_layers is not None and arr.size != num_layers:
        raise CalibrationError(f"{where}: expected one temperature per exit ({num_layers}), got {arr.size}")
    return arr


# ---- fitting -------------------------------------------------------------------------------------------------
def fit_run_temperatures(
    run_dir: str | Path, fit_split: str = CALIBRATION, fit_on: str = "all", exit_threshold: float = 0.9
) -> TemperatureScaler:
    """A fitted :class:`TemperatureScaler` for the run's exits (nothing is written; module doc for `fit_on`)."""
    if fit_on not in FIT_ON:
        raise CalibrationError(f"fit_on={fit_on!r} is not one of {', '.join(map(repr, FIT_ON))}")
    info, fit = _classification_split(run_dir, fit_split)
    exits = None
    if fit_on == "exiting":
        if not (np.isfinite(exit_threshold) and 0.0 < exit_threshold <= 1.0):
            raise CalibrationError(f"exit_threshold must lie in (0, 1], got {exit_threshold}")
        rule = ThresholdPolicy(info.plan, info.cost_model, criterion="confidence", threshold=float(exit_threshold))
        exits = rule.fit(fit.logits, fit.labels).predict(fit.logits)
    return TemperatureScaler(fit_on=fit_on).fit(fit.logits, fit.labels, exits=exits)


def run_calibration_report(
    run_dir: str | Path, temperatures: Sequence[float], split: str = VALIDATION, n_bins: int = N_BINS
) -> dict[str, Any]:
    """Per-exit ECE and NLL before and after `temperatures` on a cached split, with accuracy and tier."""
    info, cached = _classification_split(run_dir, split)
    temps = _check_temperature_values(temperatures, info.plan.num_layers, "run_calibration_report")
    raw = calibration_report(cached.logits, cached.labels, temps, n_bins)
    accuracy = (cached.logits.argmax(axis=2) == np.asarray(cached.labels)[:, None]).mean(axis=0)
    rows = []
    for i in range(info.plan.num_layers):
        rows.append(
            {
                "exit": i + 1,
                "tier": info.plan.tier_of_exit(i + 1),
                "temperature": float(temps[i]),
                "accuracy": float(accuracy[i]),
                "ece_before": float(raw["ece_before"][i]),
                "ece_after": float(raw["ece_after"][i]),
                "nll_before": float(raw["nll_before"][i]),
                "nll_after": float(raw["nll_after"][i]),
            }
        )
    n = int(cached.labels.shape[0])
    return {"task": info.task, "split": split, "n_samples": n, "n_bins": int(n_bins), "exits": rows}


def calibrate_run(
    run_dir: str | Path,
    fit_split: str = CALIBRATION,
    eval_split: str = VALIDATION,
    fit_on: str = "all",
    n_bins: int = N_BINS,
    exit_threshold: float = 0.9,
    write: bool = True,
) -> dict[str, Any]:
    """Fit per-exit temperatures on `fit_split`, report ECE/NLL before and after on `eval_split`, and (with
    `write`) store both in ``<run>/temperatures.json``. Returns the stored dict (module doc)."""
    scaler = fit_run_temperatures(run_dir, fit_split, fit_on, exit_threshold)
    temps = scaler.temperatures_
    report = run_calibration_report(run_dir, temps, eval_split, n_bins)
    data: dict[str, Any] = {
        "temperatures": [float(t) for t in temps],
        "fit_split": fit_split,
        "fit_on": fit_on,
        "n_fit_samples": [int(n) for n in scaler.n_samples_],
        "fallback_exits": [int(e) for e in scaler.fallback_exits_],
        "init_temperature": float(scaler.init_temperature),
        "eval_split": eval_split,
        "report": report,
    }
    if fit_on == "exiting":
        data["exit_threshold"] = float(exit_threshold)
    if write:
        (Path(run_dir) / TEMPERATURES_FILE).write_text(json.dumps(data, indent=2))
    return data


def read_temperatures(run_dir: str | Path) -> np.ndarray | None:
    """Per-exit temperatures [L] stored in ``<run>/temperatures.json``, or None when the run has none.

    Raises :class:`CalibrationError` for a damaged file, values that are not finite and > 0, or a count that
    does not match the run's exits (when its run.json is there)."""
    num_layers = None
    try:
        num_layers = read_run_info(run_dir).plan.num_layers
    except ValueError:
        pass  # no (readable) run.json beside it: the count cannot be checked
    try:
        return read_run_temperatures(run_dir, num_layers)
    except TemperatureFileError as err:
        raise CalibrationError(str(err)) from err


# ---- presentation --------------------------------------------------------------------------------------------
def calibration_table(report: dict[str, Any]) -> pd.DataFrame:
    """The per-exit report (``calibrate_run(...)`` or its ``["report"]``) as a table."""
    rows = report["report"]["exits"] if "report" in report else report["exits"]
    table = pd.DataFrame(rows)
    for column in ("ece_before", "ece_after", "nll_before", "nll_after", "accuracy"):
        table[column] = table[column].round(4)
    table["temperature"] = table["temperature"].round(3)
    return table[["exit", "tier", "temperature", "accuracy", "ece_before", "ece_after", "nll_before", "nll_after"]]


def plot_reliability(
    run_dir: str | Path,
    path: str | Path,
    temperatures: Sequence[float] | None = None,
    split: str = VALIDATION,
    n_bins: int = N_BINS,
    title: str | None = None,
    min_count: int = 5,
) -> Path:
    """Reliability diagrams of every exit on `split`, before and after `temperatures` (default: the run's
    ``temperatures.json``), one panel per exit with the diagonal and the ECE in the title; written as PNG.
    Bars: accuracy per confidence bin (bins with fewer than `min_count` samples are not drawn, as their
    accuracy is noise; the ECE uses every sample); lines: accuracy vs the bin's mean confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info, cached = _classification_split(run_dir, split)
    if temperatures is None:
        temps = read_temperatures(run_dir)
        if temps is None:
            raise CalibrationError(f"{run_dir} has no {TEMPERATURES_FILE}; run `dimee calibrate {run_dir}` first")
    else:
        temps = _check_temperature_values(temperatures, info.plan.num_layers, "plot_reliability")
    num_layers = info.plan.num_layers
    probs = {"before": softmax(cached.logits), "after": softmax(cached.logits, temps)}
    cols = min(3, num_layers)
    rows = int(np.ceil(num_layers / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.5 * rows), squeeze=False)
    width = 1.0 / n_bins
    styles = {"before": ("tab:red", "uncalibrated"), "after": ("tab:blue", "temperature-scaled")}
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= num_layers:
            ax.axis("off")
            continue
        ece = {}
        for offset, key in ((-0.2, "before"), (0.2, "after")):
            curve = reliability_curve(probs[key][:, i], cached.labels, n_bins)
            ece[key] = expected_calibration_error(probs[key][:, i], cached.labels, n_bins)
            filled = curve["count"] >= max(1, int(min_count))
            colour, label = styles[key]
            centres = (curve["bin_lower"] + curve["bin_upper"]) / 2
            ax.bar(
                centres[filled] + offset * width,
                curve["accuracy"][filled],
                width=0.4 * width,
                color=colour,
                alpha=0.55,
                label=f"{label} (T={1.0 if key == 'before' else temps[i]:.2f})",
            )
            ax.plot(curve["confidence"][filled], curve["accuracy"][filled], "o-", color=colour, ms=3, lw=1)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        lowest = 1.0 / cached.logits.shape[2]  # max softmax is never below 1 / classes
        ax.set_xlim(max(0.0, lowest - 0.05), 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_title(
            f"exit {i + 1} ({info.plan.tier_of_exit(i + 1)})  ECE {ece['before']:.3f} -> {ece['after']:.3f}",
            fontsize=9,
        )
        ax.set_xlabel("confidence (max softmax)", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
    heading = title or f"{info.task} ({split}, {cached.labels.shape[0]} samples)"
    fig.suptitle(f"{heading}; {n_bins} bins, drawn where >= {min_count} samples", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
