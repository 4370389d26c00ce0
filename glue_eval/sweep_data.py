"""The cost sweep's run data: what one run contributes before any policy is fitted (its info, each setting's
checked tier plan and cost model, the hidden size its payload bytes need) and its two cached splits, read
once, with what every policy's scoring shares (`_Data`).

Separate from `glue_eval.sweep` because it is the only part that reads run folders; the solvers and the
scoring work on the `_Data` it returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from clustering import per_exit_correct
from tiers import CachedSplit, CostModel, RunInfo, TierPlan, read_cached_split, read_run_info
from tiers.run import LOGITS_DIR, cached_splits, read_temperatures

from .metrics import compute_glue_metrics, predictions_from_logits, primary_metric
from .sweep_grid import PLAN_FIELDS, _cost_changes, _plan_of
from .tasks import run_task


# ---- run data ---------------------------------------------------------------------------------------------
def _hidden_size(folder: Path, split: str) -> int | None:
    """Width of the hidden state a hop carries: the encoder config, else the cached embedding's width."""
    config = folder / "encoder" / "config.json"
    if config.exists():
        data = json.loads(config.read_text())
        for key in ("hidden_size", "d_model", "dim"):
            if isinstance(data.get(key), int):
                return int(data[key])
    embedding = folder / LOGITS_DIR / f"{split}.embedding.npy"
    if embedding.exists():
        return int(np.load(embedding, mmap_mode="r").shape[-1])
    return None


@dataclass
class _Run:
    """What a run contributes before any fitting: its info, checked plans and cost models per setting."""

    folder: Path
    info: RunInfo
    plans: list[TierPlan]
    cost_models: list[CostModel]
    hidden_size: int | None


def _prepare_run(
    folder: Path,
    settings: list[dict[str, Any]],
    base_cost: CostModel | None,
    splits: tuple[str, str],
    needs_embedding: bool,
) -> _Run:
    info = read_run_info(folder)
    have = cached_splits(folder)
    for split in splits:
        if split not in have:
            raise ValueError(f"{folder} has no cached logits for split {split!r} (has: {', '.join(have) or 'none'})")
        if needs_embedding and not (folder / LOGITS_DIR / f"{split}.embedding.npy").exists():
            raise ValueError(f"{folder}: the embedding-feature DIMEE variants need {split}.embedding.npy, which the run does not have")
    base = base_cost or info.cost_model
    plan_cache: dict[str, TierPlan] = {}
    cost_cache: dict[tuple, CostModel] = {}
    plans, costs = [], []
    for setting in settings:
        plan_key = repr(sorted((k, setting[k]) for k in PLAN_FIELDS if k in setting))
        if plan_key not in plan_cache:
            plan_cache[plan_key] = _plan_of(setting, info.plan)
        changes = _cost_changes(setting)
        cost_key = tuple(sorted(changes.items()))
        if cost_key not in cost_cache:
            cost_cache[cost_key] = base.with_values(**changes)
        plans.append(plan_cache[plan_key])
        costs.append(cost_cache[cost_key])
    hidden = _hidden_size(folder, splits[1])
    if hidden is None and any(_has_rate(c) for c in cost_cache.values()):
        raise ValueError(
            f"{folder}: a link rate is set but the hidden size (for the payload bytes) is unknown: "
            "the run has neither encoder/config.json nor cached embeddings"
        )
    return _Run(folder, info, plans, costs, hidden)


@dataclass
class _Data:
    """A run's two cached splits, read once, and what every policy's scoring shares."""

    run: _Run
    task: str
    fit: CachedSplit
    eval: CachedSplit
    metric_name: str
    final_metric: float
    unique_counts: np.ndarray  # [U] distinct token counts of the eval split
    count_index: np.ndarray  # [n] index into unique_counts
    correct_fit: np.ndarray  # [n_fit, L] bool
    temperatures: list[float] | None  # the run's temperatures.json, if applied


def _as_float64_embedding(split: CachedSplit) -> CachedSplit:
    """The split with its embedding features in float64 once (each policy's fit would convert them again)."""
    if split.embedding is None:
        return split
    return replace(split, embedding=np.ascontiguousarray(split.embedding, dtype=np.float64))


def _load(run: _Run, fit_split: str, eval_split: str, use_temperatures: bool) -> _Data:
    fit = _as_float64_embedding(read_cached_split(run.folder, fit_split))
    evaluation = _as_float64_embedding(read_cached_split(run.folder, eval_split))
    if fit.logits.shape[1:] != evaluation.logits.shape[1:]:
        raise ValueError(
            f"{run.folder}: the {fit_split} logits {fit.logits.shape} and the {eval_split} logits "
            f"{evaluation.logits.shape} differ in exits or classes"
        )
    if fit.logits.shape[1] != run.info.plan.num_layers:
        layers = run.info.plan.num_layers
        raise ValueError(f"{run.folder}: logits have {fit.logits.shape[1]} exits, run.json says {layers}")
    task, spec = run.info.task, run_task(run.info)  # spec: the run's own task description (any data set)
    metric = primary_metric(spec)
    final = predictions_from_logits(spec, evaluation.logits[:, -1])
    unique, index = np.unique(np.asarray(evaluation.token_counts, dtype=np.int64), return_inverse=True)
    return _Data(
        run=run,
        task=task,
        fit=fit,
        eval=evaluation,
        metric_name=metric,
        final_metric=compute_glue_metrics(spec, final, evaluation.labels)[metric],
        unique_counts=unique,
        count_index=index.reshape(-1),
        correct_fit=per_exit_correct(fit.logits, fit.labels),
        temperatures=_run_temperatures(run, use_temperatures),
    )


def _run_temperatures(run: _Run, use_temperatures: bool) -> list[float] | None:
    """The run's per-exit temperatures when applied (the report and the deployed policy read the same file)."""
    temps = read_temperatures(run.folder, run.info.plan.num_layers) if use_temperatures else None
    return None if temps is None else [float(t) for t in temps]


def _has_rate(cost: CostModel) -> bool:
    return cost.mobile_edge_rate_bps > 0 or cost.edge_cloud_rate_bps > 0 or cost.mobile_cloud_rate_bps > 0
