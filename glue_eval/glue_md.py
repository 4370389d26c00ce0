"""The GLUE report file, ``glue.md``: every policy at the operating point, the whole-curve scoreboard and the Pareto
plots, one section per encoder (``dimee report``, ``scripts/reproduce.sh``).

Runs are grouped by encoder (base model and layer count, ``glue_eval.depth.group_runs``). The first encoder given
writes the top of ``glue.md`` and the files ``glue.json``, ``glue_scoreboard.json`` and ``glue_<task>_pareto.png``
(with one encoder, that is the whole report). Each further encoder, e.g. the 12-layer ``mpnet-offline``, gets a
section after it with the same tables, its per-exit validation metric beside every other encoder's on the same
task (``glue_eval.depth.per_exit_row``; runs near the majority-class floor are named), its final exit beside the
published GLUE dev scores, and files suffixed with its short name: ``glue-<name>.json``,
``glue_scoreboard-<name>.json``, ``glue_<task>_pareto-<name>.png`` (``-mpnet`` for ``mpnet-offline``).
The scoring is ``glue_eval.report.report_tables``'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tiers import RunInfo, read_run_info

from . import depth, report
from .metrics import primary_metric
from .report import (
    BASELINES,
    DIMEE_VARIANTS,
    VALIDATION,
    Tunable,
    PAPER_CUT_PCT,
    PAPER_ORACLE_FLOOR_PCT,
    _summary,
    markdown_table,
    operating_target,
    pareto_frame,
    run_temperatures,
)
from .scoreboard import BUDGETS, cross_task_choice, scoreboard
from .tasks import run_task


@dataclass(frozen=True)
class _Encoder:
    """One encoder's runs, scored, and what its part of the report is made of."""

    key: tuple[str, int]
    suffix: str  # "" for the first encoder, "-<name>" for the others
    runs: list[str | Path]
    infos: list[RunInfo]
    combined: pd.DataFrame
    per_policy: pd.DataFrame
    board: pd.DataFrame
    notes: list[str]
    cross: pd.DataFrame  # one DIMEE variant and one baseline for every task (scoreboard.cross_task_choice)


def write_glue_report(
    runs: Sequence[str | Path],
    out_dir: str | Path = "results",
    max_drop: float = 0.003,
    command: str = "",
    use_temperatures: bool = True,
    families: Sequence[str | Tunable] | None = None,
    eval_split: str = VALIDATION,
) -> Path:
    """results/glue.md (+ glue.json, glue_scoreboard.json, glue_<task>_pareto.png; per further encoder the same
    files suffixed, module doc): every policy at the operating point, per task. `families` limits the knob-bearing
    policies (default: all of `tunable_policies`); the knob-free ones, the random baseline (with dimee) and the
    oracle are always there. `eval_split`: the cached split scored (e.g. one cached with `dimee eval RUN --split
    NAME`); the knobs are always chosen on calibration."""
    out_dir = Path(out_dir)
    infos = [read_run_info(run) for run in runs]
    scored = [  # every run scored before anything is written (a missing split leaves no half report)
        report.report_tables(
            run, max_drop=max_drop, eval_split=eval_split, families=families, use_temperatures=use_temperatures
        )
        for run in runs
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    encoders, slugs = [], set()
    for number, (key, members) in enumerate(depth.group_runs(infos)):
        slug = depth.encoder_slug(key)
        slug = slug if slug not in slugs else f"{slug}-{key[1]}"
        slugs.add(slug)
        picked = [(runs[i], infos[i], scored[i]) for i in members]
        encoders.append(_write_encoder(key, "" if number == 0 else f"-{slug}", picked, out_dir, use_temperatures))
    first, *others = encoders
    lines = [
        "# GLUE: DIMEE and the baselines at the operating point",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"Operating point: each policy's knob chosen on the calibration split (two-fold cross-fitting) as the "
        f"cheapest setting with a task-metric drop <= {100 * max_drop:.1f} points vs the final exit; then fitted "
        f"on the whole calibration split and scored once on {eval_split}. `cv_drop` / `cv_cost` are the "
        "cross-fitted calibration figures the choice was made on (knob-free policies: measured on the whole "
        "calibration split); `meets_target` says whether that calibration drop is within the target. Where no "
        "knob meets it, the knob with the smallest calibration drop is shown and the row is marked **missed**: "
        f"it is not an operating point. `metric` is the task's primary GLUE metric (x100) on {eval_split}, `drop` "
        "its loss vs the final exit there, cost normalised by the all-cloud reference (token ids sent straight "
        "to the cloud, all L layers there = 1.0). Cost model: the run's (README defaults).",
        "",
        POLICY_LEGEND,
        "",
        *_tables(first, "##", eval_split, max_drop),
    ]
    for encoder in others:
        lines += _encoder_section(encoder, first, encoders, eval_split, max_drop)
    path = out_dir / "glue.md"
    path.write_text("\n".join(lines) + "\n")
    return path


POLICY_LEGEND = (
    "Policies: `dimee` (per-tier clusters of the mobile exit profile), `dimee-edge` (a second decision at edge), "
    "`dimee-cascade` (a cluster decision after every exit), `dimee-embedding` (clusters of the embedding-layer "
    "feature, deciding before any layer), `dimee-paper` (the paper's rule: embedding feature, pools labelled by "
    "exit tier, nearest centroid), `dimee-entry` (entry tier from the embedding feature, then a cascade inside "
    "it), `dimee-entry-threshold` (the same entry stage, then the confidence threshold inside the tier; its knob "
    "is the threshold); `+oof`: the same fitted on calibration pooled with the run's out-of-fold training logits (`dimee oof`; "
    "runs without them have no such rows). Baselines: `threshold` (confidence), `entropy`, `patience` (PABEE), "
    "`all-mobile` / `all-edge` / `all-cloud`, `random (DIMEE shares)`, and the `oracle` (a lower bound on cost)."
)


def _write_encoder(key, suffix: str, picked, out_dir: Path, use_temperatures: bool) -> _Encoder:
    """One encoder's Pareto plots, ``glue<suffix>.json`` and ``glue_scoreboard<suffix>.json``."""
    from .plots import plot_pareto

    tables, all_curves, notes = [], [], []
    for run, info, (table, curves) in picked:
        tables.append(table)
        all_curves.append(curves)
        plot = out_dir / f"glue_{info.task}_pareto{suffix}.png"
        plot_pareto(pareto_frame(curves, primary_metric(run_task(info))), plot, task=info.task)
        calibrated = run_temperatures(run, info.plan.num_layers, use_temperatures) is not None
        temps = "temperatures.json applied" if calibrated else "uncalibrated"
        notes.append(
            f"- `{run}`: {info.task}, {info.training.get('data', '')}, n_train {info.training.get('n_train')}, {temps}"
        )
    combined = pd.concat(tables, ignore_index=True)
    (out_dir / f"glue{suffix}.json").write_text(combined.to_json(orient="records", indent=1))
    boards = [scoreboard(curves, DIMEE_VARIANTS, BASELINES) for curves in all_curves]  # per run: never mixed
    per_policy = pd.concat([b[0] for b in boards], ignore_index=True)
    board = pd.concat([b[1] for b in boards], ignore_index=True)
    chosen, cross = cross_task_choice(per_policy, board)
    (out_dir / f"glue_scoreboard{suffix}.json").write_text(json.dumps({
        "policies": per_policy.to_dict(orient="records"), "summary": board.to_dict(orient="records"),
        "cross_task": {"chosen": chosen, "rows": cross.to_dict(orient="records")},
    }, indent=1))
    return _Encoder(key, suffix, [p[0] for p in picked], [p[1] for p in picked], combined, per_policy, board, notes, cross)


def _target_lines(combined: pd.DataFrame, eval_split: str, max_drop: float) -> list[str]:
    """The paper's operating-point claim (issue 11's target), read for the summary's best DIMEE rows."""
    target = operating_target(combined, max_drop)
    asked = target[target["asked"]]
    mean = f"{asked['cost_reduction_%'].fillna(0.0).mean():.1f}%" if len(asked) else "n/a"
    return [
        f"The paper's claim, issue 11's operating-point target: a cut of >= {PAPER_CUT_PCT:g}% at a drop <= "
        f"{100 * max_drop:.1f} points on every task whose oracle allows >= {PAPER_ORACLE_FLOOR_PCT:g}% (`asked`), "
        f"read on {eval_split} for the best DIMEE row above (chosen on calibration; none: 0% counted). Met on "
        f"{int(asked['met'].sum())} of {len(asked)} asked task(s); their mean cut: {mean} (the target asks >= "
        f"{PAPER_ORACLE_FLOOR_PCT:g}% on average).",
        "",
        markdown_table(target),
        "",
    ]


def _tables(encoder: _Encoder, h: str, eval_split: str, max_drop: float) -> list[str]:
    """Summary, scoreboard, every row and the runs of one encoder, under headings of level `h` ("##" for the
    first encoder, whose scoreboard paragraph the others refer to)."""
    combined, board = encoder.combined, encoder.board
    ahead = int(board["dimee_at_or_above"].fillna(False).astype(bool).sum()) if len(board) else 0
    shown = combined.assign(meets_target=[_target_cell(v) for v in combined["meets_target"]])
    missed = int((combined["meets_target"] == False).sum())  # noqa: E712 (None = not applicable)
    explain = [
        "Each policy's Pareto front over its knob, with the trivial deployments all-mobile and all-cloud added "
        "(any policy can fall back to them), on the common cost range [all-mobile's cost, 1]. `area`: the mean "
        "over that range of (front metric - all-cloud metric), in metric points (higher is better; 0: as good as "
        "all-cloud over the whole range; the front is a step function, so the trivial points alone score "
        "all-mobile's gap). `gap@b`: front metric - all-cloud metric at cost budget "
        f"b ({', '.join(f'{b:g}' for b in BUDGETS)}; empty where b is below all-mobile's cost). "
        "`dimee_at_or_above` counts a tie. `cal_area` is computed from the cross-fitted calibration "
        "figures the knob choice uses; the DIMEE variant and the baseline compared per task are the ones with "
        f"the highest `cal_area`, and {eval_split} (`val_area`, `gap@b`) is read once to score them "
        "(`glue_eval/scoreboard.py`).",
    ] if h == "##" else ["Columns and choices as in the first scoreboard above (`glue_eval/scoreboard.py`)."]  # fmt: skip
    plots = ", ".join(f"`glue_{t}_pareto{encoder.suffix}.png`" for t in combined["task"].unique())
    return [
        f"{h} Summary (per task, among rows that met the target on calibration: the lowest calibration cost; "
        f"its {eval_split} figures)",
        "",
        markdown_table(_summary(combined)),
        "",
        *_target_lines(combined, eval_split, max_drop),
        f"{h} Scoreboard: whole curves (Pareto area and metric at equal cost)",
        "",
        *explain,
        "",
        f"DIMEE (chosen on calibration) at or above the chosen baseline in {eval_split} area on {ahead} of "
        f"{len(board)} run(s).",
        "",
        markdown_table(board),
        "",
        *_cross_task_lines(encoder.cross, eval_split),
        markdown_table(encoder.per_policy),
        "",
        f"{h} Every policy, every task",
        "",
        f"{missed} row(s) missed the target on calibration." if missed else "Every row met the target on calibration.",
        "",
        markdown_table(shown),
        "",
        f"{h} Runs",
        "",
        *encoder.notes,
        "",
        f"Pareto plots (every knob of every policy, fitted on calibration, scored on {eval_split}; the table's "
        "rows are among their points): " + plots,
    ]


def _cross_task_lines(cross: pd.DataFrame, eval_split: str) -> list[str]:
    """The scoreboard's second rule: one DIMEE variant and one baseline for all of the encoder's tasks."""
    if not len(cross):
        return []
    ahead = int(cross["dimee_at_or_above"].fillna(False).astype(bool).sum())
    first = cross.iloc[0]
    return [
        "One choice for all tasks (`glue_eval.scoreboard.cross_task_choice`, calibration only): the DIMEE variant "
        "and the baseline with the best mean rank of `cal_area` over this encoder's tasks, among those scored on "
        "every task; DIMEE counts as ahead where its "
        f"{eval_split} area is at or above both that baseline's and the per-task chosen baseline's. Per-task "
        "choices on 250-1,000 calibration samples are noisy; this rule pools every task's calibration evidence. "
        "It was added after the per-task result above was known, so both are reported.",
        "",
        f"DIMEE ({first['DIMEE']}) at or above the baselines ({first['baseline']}, and the per-task choice) "
        f"in {eval_split} area on {ahead} of {len(cross)} run(s).",
        "",
        markdown_table(cross),
        "",
    ]


def _encoder_section(
    encoder: _Encoder, first: _Encoder, encoders: list[_Encoder], eval_split: str, max_drop: float
) -> list[str]:
    """A further encoder's section: its per-exit metric beside every encoder's run of the same task, its final
    exit vs the published dev scores, then its tables."""
    name = depth.encoder_title(encoder.key)
    exits, finals, notes = [], {}, []
    for task in dict.fromkeys(info.task for info in encoder.infos):
        for other in encoders:
            for run, info in zip(other.runs, other.infos):
                if info.task == task:
                    row = depth.per_exit_row(Path(run), depth.encoder_slug(other.key))
                    exits.append(row)
                    finals.setdefault(task, {}).setdefault(row["model"], row[f"exit {row['layers']}"])
                    notes += [f"- {note}." for note in [depth.floor_note(row)] if note]
    metric_of = {info.task: primary_metric(run_task(info)) for info in encoder.infos}
    published = pd.DataFrame([depth.published_row(t, metric_of[t], f) for t, f in finals.items()])
    files = f"`glue{encoder.suffix}.json`, `glue_scoreboard{encoder.suffix}.json`, `glue_<task>_pareto{encoder.suffix}.png`"
    return [
        "",
        f"## {name}",
        "",
        f"The sections above are the runs of the {depth.encoder_title(first.key)}; this one holds every policy on "
        f"every task cached for the {name}, with the same protocol, target and cost model (the run's; its plan "
        f"splits {encoder.key[1]} layers over the three tiers), scored on {eval_split}. Its files: {files}.",
        "",
        "### Per-exit validation metric (x100), every encoder that ran the task",
        "",
        depth.MAJORITY_NOTE,
        "",
        markdown_table(pd.DataFrame(exits)),
        "",
        *(["Near the majority-class floor (final exit within "
           f"{depth.FLOOR_MARGIN:g} points of it, or below):", "", *notes, ""] if notes else []),  # fmt: skip
        "### Final exit vs published GLUE dev scores",
        "",
        "Our runs' final exit (validation, x100) beside published dev-set scores of 12-layer base models fine-tuned "
        "in full. Not like for like: the published models were trained longer, with tuned hyperparameters, on a "
        "GPU; ours were trained on 2 CPU cores for the epochs `run.json` records, with every exit trained jointly.",
        "",
        markdown_table(published),
        "",
        f"- {depth.BERT_BASE_SOURCE}.",
        f"- {depth.MPNET_SOURCE}.",
        "",
        *_tables(encoder, "###", eval_split, max_drop),
    ]


def _target_cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return "yes" if bool(value) else "**missed**"
