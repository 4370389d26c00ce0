"""Out-of-fold exit logits of a run's training rows: more fit data for the tier-selection policies.

A policy is fitted on the calibration split (RTE: 249 samples, MRPC: 367), because the run's own model has seen
its training rows: its exits are over-confident and right there, so their profiles say nothing about unseen
text. K fold models answer that: fold k's model is trained with the run's own recipe (`TrainConfig` from
run.json) on the training rows outside fold k and caches every exit's logits on fold k's rows, which it has
never seen. The K parts together are the split ``oof`` (``<run>/logits/oof.*``: logits, labels, token counts
and the embedding-layer feature, all from the fold model that answered the row), recorded in run.json and
metrics.json beside the run's other splits.

Pooling ``oof`` with the calibration split is honest in that no held-out row is used, and approximate in that
fold models are trained on (K-1)/K of the rows, so their exits are a little weaker than the deployed model's;
whether pooling helps is measured on the validation split (`results/dimee_ablation.md`), not assumed. Nothing
here needs the run's checkpoint: run.json is enough, so it works on a committed cache folder.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from tiers import CachedSplit, EarlyExitModel, read_cached_split, read_run_info, resolve_encoder, write_cached_split
from tiers.run import OOF_SPLIT

from .tasks import run_task
from .train_config import TrainingError
from .training import (
    CALIBRATION_SPLIT,
    Encoded,
    RunDataMismatch,
    collect_logits,
    encode_split,
    per_exit_metrics,
    pick_device,
    prepare_run_data,
    record_split,
    set_seed,
    split_record,
    stored_config,
    train_early_exit,
)

__all__ = ["OOF_SPLIT", "fold_of_rows", "train_out_of_fold"]


def fold_of_rows(n_rows: int, folds: int, seed: int) -> np.ndarray:
    """Fold id (0..folds-1) of every row: a seeded permutation dealt round-robin, so fold sizes differ by <= 1."""
    if folds < 2:
        raise TrainingError(f"--folds must be at least 2 (got {folds}): one fold would train on no rows")
    if n_rows < folds:
        raise TrainingError(f"the run has {n_rows} training rows, fewer than --folds {folds}")
    fold = np.empty(n_rows, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(n_rows)] = np.arange(n_rows) % folds
    return fold


def _rows(encoded: Encoded, ids: np.ndarray) -> Encoded:
    return Encoded([encoded.input_ids[i] for i in ids], [encoded.token_type_ids[i] for i in ids], encoded.labels[ids])


def _check_calibration(run_dir: Path, calibration: Encoded) -> None:
    """The rows rebuilt from run.json must be the run's: its cached calibration split is the witness."""
    cached = read_cached_split(run_dir, CALIBRATION_SPLIT)
    if not (np.array_equal(cached.labels, calibration.labels) and np.array_equal(cached.token_counts, calibration.lengths)):
        raise RunDataMismatch(
            f"{run_dir}: the data read now does not give the run's calibration rows (its labels or token counts "
            "differ from the cached ones), so the training rows cannot be trusted either; nothing was written"
        )


def train_out_of_fold(
    run_dir: str | Path,
    folds: int = 2,
    seed: int = 0,
    device: str = "auto",
    data_dir: str | None = None,
) -> dict:
    """Train `folds` fold models with the run's recipe and cache their out-of-fold exit logits as split ``oof``.

    Returns the split's record (as run.json keeps it) with its per-exit metrics. Writes nothing until every
    fold is done; an earlier ``oof`` split is replaced.
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    config = stored_config(info, run_dir)
    config.device = device
    if data_dir is not None:
        config.data_dir, config.source = data_dir, "local"
    task = run_task(info)
    data = prepare_run_data(config, task, (info.data or {}).get("label_values"))
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(config.model))
    pad_id = tokenizer.pad_token_id or 0
    train = encode_split(tokenizer, task, data.splits["train"], config.max_length)
    _check_calibration(run_dir, encode_split(tokenizer, task, data.splits[CALIBRATION_SPLIT], config.max_length))
    fold = fold_of_rows(len(train), folds, seed)
    torch_device = pick_device(device)
    logits = embedding = None
    seconds = []
    for k in range(folds):
        started = time.perf_counter()
        set_seed(config.seed + 1 + k)  # not the run's own seed: fold models are other draws of the recipe
        model = EarlyExitModel.from_encoder(resolve_encoder(config.model), task.num_labels, pooling=config.pooling)
        fold_config = copy.copy(config)
        fold_config.task = f"{task.name} fold {k + 1}/{folds}"  # the progress bar's label
        train_early_exit(model, _rows(train, np.flatnonzero(fold != k)), fold_config, pad_id, torch_device)
        held = np.flatnonzero(fold == k)
        part = collect_logits(model, _rows(train, held), config.eval_batch_size, pad_id, torch_device, desc=f"logits fold {k + 1}")
        if logits is None:
            logits = np.zeros((len(train), *part.logits.shape[1:]), dtype=np.float32)
            embedding = np.zeros((len(train), part.embedding.shape[1]), dtype=np.float32)
        logits[held], embedding[held] = part.logits, part.embedding
        seconds.append(round(time.perf_counter() - started, 1))
    cached = CachedSplit(logits, train.labels, train.lengths.astype(np.int32), embedding)
    record = {
        **split_record(data.splits["train"], task),
        "source": "out-of-fold: the run's training rows, each answered by a fold model that did not train on it",
        "folds": folds,
        "fold_seed": seed,
        "fold_seconds": seconds,
    }
    write_cached_split(run_dir, OOF_SPLIT, cached)
    metrics = {"n": len(train), "per_exit": per_exit_metrics(task, cached)}
    record_split(run_dir, info, task, OOF_SPLIT, record, metrics)
    return {**record, **metrics}
