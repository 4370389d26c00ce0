"""The public Python API: train, evaluate, classify, and the main demo job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clustering import AllCloudPolicy
from glue_eval.metrics import predictions_from_logits, primary_metric
from glue_eval.owndata import own_task_name
from glue_eval.report import POOL_SUFFIX, check_dimee_variant, evaluate_policy_on_run, fit_run_policy
from glue_eval.tasks import run_task
from glue_eval.training import TrainConfig, train_run
from tiers import EarlyExitModel, read_cached_split, read_run_info, tokenize_for_inference
from tiers.run import METRICS_FILE


def train(config: TrainConfig | None = None, **settings) -> Path:
    """Train a run: `train(TrainConfig(...))` or `train(task="rte", ...)` / `train(train_file=..., validation_file=...,
    text_fields="text", label_field="label", output_dir=...)` (any `TrainConfig` field); returns the run folder."""
    if config is not None and settings:
        raise TypeError("give a TrainConfig or its fields as keywords, not both")
    if config is None:
        if "task" not in settings and (settings.get("train_file") or settings.get("dataset_name")):
            settings["task"] = own_task_name(settings.get("train_file"), settings.get("dataset_name"))
        if "output_dir" not in settings:
            settings["output_dir"] = str(Path("runs") / str(settings.get("task") or TrainConfig.task))
        config = TrainConfig(**settings)
    return train_run(config)


def exit_table(run_dir: str | Path, split: str = "validation") -> pd.DataFrame:
    """Per exit: tier, the task's primary metric, and the normalised cost of answering there."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} is missing; run `dimee eval {run_dir}` first")
    metrics = json.loads(metrics_path.read_text())
    if split not in metrics.get("splits", {}):
        have = ", ".join(metrics.get("splits", {})) or "none"
        raise ValueError(f"{metrics_path} has no split {split!r} (has: {have}); cache it with `dimee eval {run_dir} --split {split} ...`")
    metric = primary_metric(run_task(info))
    costs = info.cost_model.normalised_exit_costs(info.plan)
    rows = []
    for entry in metrics["splits"][split]["per_exit"]:
        i = int(entry["exit"])
        rows.append(
            {
                "exit": i,
                "tier": info.plan.tier_of_exit(i),
                metric: round(100 * float(entry[metric]), 2),
                "cumulative_cost": round(float(costs[i - 1]), 3),
            }
        )
    return pd.DataFrame(rows)


def predict_texts(run_dir: str | Path, texts: list[str], text_pairs: list[str] | None = None) -> list[dict]:
    """Classify texts in one process: every exit's prediction, and the final exit's label and probabilities."""
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "encoder")
    batch = tokenize_for_inference(tokenizer, texts, text_pairs, info.max_length)  # bad texts fail before loading
    model = EarlyExitModel.from_pretrained(run_dir)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()
    per_exit = predictions_from_logits(run_task(info), logits)
    rows = []
    for i, text in enumerate(texts):
        final = logits[i, -1]
        row = {"text": text, "exit_predictions": per_exit[i].tolist()}
        if info.num_labels == 1:
            row["score"] = float(final[0])
        else:
            probs = np.exp(final.astype(np.float64) - final.max())
            probs /= probs.sum()
            label = int(probs.argmax())
            row.update(label=label, label_name=info.label_names[label], probabilities=probs.round(4).tolist())
        rows.append(row)
    return rows


DEMO_VARIANT = "dimee-entry-threshold"  # the variant ahead of the baselines on most GLUE tasks (results/glue.md)


def run_demo(
    output_dir: str | Path = "runs/demo-sst2",
    train_subset: int = 4000,
    epochs: float = 1.0,
    data_dir: str | None = None,
    max_drop: float = 0.003,
    learning_rate: float = 1e-4,
    variant: str = DEMO_VARIANT,
) -> dict:
    """The README's main job: brief SST-2 fine-tune of the offline encoder, then the per-exit table and the
    DIMEE `variant` (one of the report's; its knob chosen on calibration) against all-cloud on validation."""
    check_dimee_variant(variant)  # before minutes of training, not after
    if variant.endswith(POOL_SUFFIX):
        raise ValueError(
            f"variant {variant!r} pools out-of-fold logits, which a fresh run has not cached: run the demo with "
            f"{variant.removesuffix(POOL_SUFFIX)!r}, then `dimee oof RUN` and `dimee.fit_policy(RUN, variant={variant!r})`"
        )
    config = TrainConfig(
        task="sst2",
        output_dir=str(output_dir),
        train_subset=train_subset,
        calibration_subset=1000,
        epochs=epochs,
        max_length=64,
        learning_rate=learning_rate,
        data_dir=data_dir,
    )
    run = train_run(config)
    table = exit_table(run)
    print("\nPer-exit accuracy on the SST-2 validation split (cost normalised by all-cloud = 1.0):")
    print(table.to_string(index=False))
    policy, knob = fit_run_policy(run, max_drop=max_drop, variant=variant)
    dimee = evaluate_policy_on_run(policy, run)
    cloud = evaluate_policy_on_run(AllCloudPolicy(policy.plan, policy.cost_model).fit(*_calibration(run)), run)
    by_threshold = getattr(policy, "exit_threshold", None) is not None
    parts = [variant, f"threshold={knob}" if by_threshold else f"mu={knob}"]
    if getattr(policy, "entry_stage_", None) is not None:
        parts.append(f"{policy.entry_n_clusters_} entry clusters")
    if not by_threshold:
        parts.append(f"{policy.n_clusters_} clusters in all")
    print(f"\nDIMEE policy ({', '.join(parts)}, fitted on the calibration split) on validation:")
    for name, row in (("all-cloud", cloud), ("DIMEE", dimee)):
        print(
            f"  {name:9s} accuracy {row['metric']:6.2f}  drop {row['drop']:+5.2f} pts  cost {row['normalised_cost']:.3f}"
            f"  ({row['cost_reduction_%']:+.1f}% vs all-cloud reference)  tiers m/e/c "
            f"{row['mobile']:.2f}/{row['edge']:.2f}/{row['cloud']:.2f}"
        )
    print(f"policy saved to {Path(run) / 'policy.json'}; serve it with `dimee serve-all {run}`")
    return {"run_dir": str(run), "exit_table": table, "dimee": dimee, "all_cloud": cloud, "variant": variant, "knob": knob, "mu": policy.mu}


def _calibration(run: Path) -> tuple[np.ndarray, np.ndarray]:
    split = read_cached_split(run, "calibration")
    return split.logits, split.labels
