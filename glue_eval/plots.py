"""Plots of a cost sweep (`glue_eval.sweep.sweep`'s table), drawn with matplotlib's Agg canvas.

Figures are built with `matplotlib.figure.Figure` and saved through the Agg canvas, so importing this module
neither needs a display nor changes the process-wide pyplot backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .scoreboard import pareto_front  # noqa: F401 (also public here: the plots draw it)

ORACLE = "oracle"
ALL_CLOUD = "all-cloud"
_TIER_COLOURS = {"mobile": "#4c72b0", "edge": "#dd8452", "cloud": "#55a868"}
_METRIC_LABELS = {
    "accuracy": "accuracy",
    "f1": "F1",
    "matthews_correlation": "Matthews correlation",
    "pearson": "Pearson correlation",
}


def _one_task(df: pd.DataFrame, task: str | None) -> tuple[pd.DataFrame, str]:
    if df.empty:
        raise ValueError("the sweep table is empty: nothing to plot")
    if task is not None:
        rows = df[df["task"] == task]
        if rows.empty:
            raise ValueError(f"no rows for task {task!r}; the table has {', '.join(sorted(df['task'].unique()))}")
        return rows, task
    tasks = sorted(df["task"].unique())
    if len(tasks) > 1:
        raise ValueError(f"the table holds several tasks ({', '.join(tasks)}): pass task=")
    return df, tasks[0]


def _metric_label(rows: pd.DataFrame) -> str:
    names = rows["metric_name"].unique() if "metric_name" in rows else ["accuracy"]
    return " / ".join(_METRIC_LABELS.get(str(n), str(n)) for n in names) + " (x100)"


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(target, dpi=130, bbox_inches="tight")
    return target


def plot_pareto(df: pd.DataFrame, path: str | os.PathLike, task: str | None = None) -> Path:
    """Task metric vs normalised cost for every policy in the sweep: one point per setting, each policy's
    Pareto front as a step line, the oracle as stars, the all-cloud reference (input sent to the cloud, all
    layers there: cost 1, the final exit's metric) as a cross with a dotted line. Returns the file written."""
    rows, task = _one_task(df, task)
    fig = Figure(figsize=(8.5, 5.2))
    ax = fig.add_subplot()
    palette = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974")
    styles = ("-", "--", ":")  # with 9 colours: 27 policies told apart
    for index, (name, group) in enumerate(rows.groupby("policy", sort=False)):
        cost = group["normalised_cost"].to_numpy(dtype=float)
        score = 100 * group["metric"].to_numpy(dtype=float)
        if name == ORACLE:
            ax.scatter(cost, score, marker="*", s=160, color="black", zorder=5, label="oracle (lower bound on cost)")
            continue
        colour, style = palette[index % len(palette)], styles[(index // len(palette)) % len(styles)]
        ax.scatter(cost, score, s=14, alpha=0.35, color=colour)
        front_c, front_s = pareto_front(cost, score)
        if front_c.size:
            label = name if front_c.size == 1 else f"{name} (Pareto front)"
            ax.step(front_c, front_s, where="post", color=colour, linestyle=style, linewidth=1.8, label=label)
            ax.plot(front_c, front_s, "o", color=colour, markersize=4)
    final = 100 * rows["final_metric"].astype(float).iloc[0]
    ax.axhline(final, color="grey", linestyle=":", linewidth=1)
    reference = "all-cloud reference (cost 1)"
    ax.scatter([1.0], [final], marker="X", s=110, color="grey", edgecolor="black", zorder=6, label=reference)
    ax.set_xlabel("normalised cost (1 = token ids straight to the cloud, every layer run there)")
    ax.set_ylabel(_metric_label(rows))
    ax.set_title(f"{task}: task metric vs cost per policy ({len(rows)} points)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)
    return _save(fig, path)


def plot_tier_shares(
    df: pd.DataFrame, x_field: str, path: str | os.PathLike, policy: str = "dimee", task: str | None = None
) -> Path:
    """Stacked share of samples answered on mobile / edge / cloud by `policy` against `x_field` (an
    offloading-cost field such as mobile_to_edge). Rows that share an x value (other grid fields varied) are
    averaged, and the title says so. Returns the file written."""
    rows, task = _one_task(df, task)
    if x_field not in rows.columns:
        raise ValueError(f"{x_field!r} is not a column of the sweep table (grid fields: it must have been swept)")
    rows = rows[rows["policy"] == policy]
    if rows.empty:
        raise ValueError(f"policy {policy!r} is not in the sweep table")
    shares = ["share_mobile", "share_edge", "share_cloud"]
    means = rows.assign(_x=pd.to_numeric(rows[x_field], errors="raise")).groupby("_x")[shares].mean().sort_index()
    averaged = rows.groupby(x_field).size().max() > 1
    fig = Figure(figsize=(8.0, 4.6))
    ax = fig.add_subplot()
    x = means.index.to_numpy(dtype=float)
    ax.stackplot(
        x,
        *(means[c].to_numpy() for c in shares),
        labels=["mobile", "edge", "cloud"],
        colors=[_TIER_COLOURS[t] for t in ("mobile", "edge", "cloud")],
        alpha=0.85,
    )
    ax.set_xlim(x.min(), x.max() if x.max() > x.min() else x.min() + 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(x_field.replace("_", " "))
    ax.set_ylabel("share of samples answered")
    note = " (mean over the other grid fields)" if averaged else ""
    ax.set_title(f"{task}: where {policy} answers vs {x_field}{note}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, title="tier", frameon=False)
    return _save(fig, path)
