"""Encoders of different depth side by side, from cached runs (no model is run): which encoder a run is (its base
model and layer count), its per-exit validation metric with the majority-class floor, and the published GLUE dev
scores of a base model family. Used by the GLUE report (``glue_eval.glue_md``) and
``benchmarks/depth_comparison.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tiers import RunInfo, read_run_info

from .metrics import compute_glue_metrics, primary_metric
from .tasks import run_task

MAJORITY_NOTE = (
    "`majority class`: the task's metric (x100) of always answering the most frequent validation label (for "
    "accuracy, that label's share). A run whose exits "
    "sit near it has not learned the task, and its cost cuts below are noise, whatever the calibration split says."
)
FLOOR_MARGIN = 5.0  # points: a final exit within this of the majority-class floor is "near the floor"

# Published GLUE dev scores, the task's primary metric (x100). BERT-base (cased) as fine-tuned by Hugging Face's
# run_glue.py (3 epochs, 5 for MRPC and WNLI, lr 2e-5, batch 32, max length 128): the table "results on the dev
# set" in huggingface/transformers, examples/pytorch/text-classification/README.md (commit 05ce25b).
BERT_BASE_DEV = {"cola": 56.53, "sst2": 92.32, "mrpc": 88.85, "stsb": 88.64, "qqp": 87.49, "mnli": 83.91,
                 "qnli": 90.66, "rte": 65.70, "wnli": 56.34}  # fmt: skip
BERT_BASE_SOURCE = (
    "BERT-base (cased), Hugging Face `run_glue.py`, 3 epochs (MRPC and WNLI 5), lr 2e-5: the dev-set table in "
    "huggingface/transformers `examples/pytorch/text-classification/README.md` (MNLI: matched; MRPC, QQP: F1; "
    "STS-B: Pearson)"
)
MPNET_SOURCE = (
    "MPNet-base (`microsoft/mpnet-base`, of which all-mpnet-base-v2 is sentence-transformers' sentence-embedding "
    "fine-tune): Song et al. 2020, \"MPNet: Masked and Permuted Pre-training for Language Understanding\" "
    "(NeurIPS 2020, arXiv:2004.09297), reports GLUE dev results for it, fully fine-tuned per task for 10 epochs "
    "(microsoft/MPNet `MPNet/README.glue.md`). Not quoted here: no copy of the paper's GLUE table was reachable "
    "from this machine (the stored copies hold only its first pages), and no number is quoted from memory"
)


def encoder_key(info: RunInfo) -> tuple[str, int]:
    """Which encoder a run is: (base model name, layer count)."""
    return info.base_model or "unknown", info.plan.num_layers


def encoder_slug(key: tuple[str, int]) -> str:
    """A short file-name-safe name of an encoder: ``mpnet-offline`` -> ``mpnet``, ``org/all-MiniLM-L6-v2`` ->
    ``all-minilm-l6-v2``."""
    name = key[0].rsplit("/", 1)[-1].lower().removesuffix("-offline")
    return re.sub(r"[^a-z0-9.]+", "-", name).strip("-") or f"{key[1]}-layer"


def encoder_title(key: tuple[str, int]) -> str:
    return f"{key[1]}-layer encoder (`{key[0]}`)"


def group_runs(infos: Sequence[RunInfo]) -> list[tuple[tuple[str, int], list[int]]]:
    """Run indices grouped by encoder, groups in the order their first run is given."""
    groups: dict[tuple[str, int], list[int]] = {}
    for index, info in enumerate(infos):
        groups.setdefault(encoder_key(info), []).append(index)
    return list(groups.items())


def majority_floor(run: Path, info: RunInfo, split: str = "validation") -> float | None:
    """The task's primary metric (x100) of always answering the split's most frequent label; None for regression."""
    if info.num_labels <= 1:
        return None
    labels = np.load(Path(run) / "logits" / f"{split}.labels.npy").astype(np.int64)
    constant = np.full(labels.shape, int(np.bincount(labels).argmax()))
    task = run_task(info)
    return round(100 * float(compute_glue_metrics(task, constant, labels)[primary_metric(task)]), 1)


def per_exit_row(run: Path, model: str) -> dict:
    """Per-exit validation metric (x100) of a cached run, with its layer count, training time and (classification)
    the majority-class floor in the same metric."""
    run = Path(run)
    metrics = json.loads((run / "metrics.json").read_text())
    info = read_run_info(run)
    name = metrics["primary_metric"]
    exits = metrics["splits"]["validation"]["per_exit"]
    plan = info.plan
    row = {"task": metrics["task"], "model": model, "layers": len(exits),
           "plan": f"1-{plan.mobile_end} / {plan.mobile_end + 1}-{plan.edge_end} / {plan.edge_end + 1}-{plan.num_layers}",
           "epochs": info.training.get("epochs"), "train_s": info.training.get("train_seconds"),
           "device": info.training.get("device")}  # fmt: skip
    floor = majority_floor(run, info)
    if floor is not None:  # what always answering the most frequent class scores: the floor of "learned"
        row["majority class"] = floor
    row.update({f"exit {e['exit']}": round(100 * e[name], 1) for e in exits})
    return row


def floor_note(row: dict, margin: float = FLOOR_MARGIN) -> str | None:
    """A sentence if the run's final exit is within `margin` points of (or below) its majority-class floor."""
    floor = row.get("majority class")
    final = row.get(f"exit {row['layers']}")
    if floor is None or final is None or final - floor > margin:
        return None
    head = f"{row['task']}, {row['model']} ({row['layers']} layers): final exit {final} vs majority class {floor}: "
    if final < floor:
        return head + "below the majority-class floor: it has not learned the task, and its cost cuts are noise"
    return (
        head + f"near the majority-class floor (within {margin:g} points): it has barely learned the task, if at all, "
        "and its cost cuts are noise"
    )


def published_row(task: str, metric: str, finals: dict[str, float]) -> dict:
    """Per task: our final-exit metric per encoder beside the published dev score of BERT-base (MPNet-base: see
    MPNET_SOURCE)."""
    row = {"task": task, "metric": metric}
    row.update({f"{model} final exit": value for model, value in finals.items()})
    row["BERT-base dev (published)"] = BERT_BASE_DEV.get(task)
    row["MPNet-base dev (published)"] = "not quoted"
    return row
