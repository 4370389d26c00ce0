"""Fine-tune an early-exit encoder on a GLUE task or your own data and cache every exit's logits in the run folder.

Joint training: loss = sum_i w_i * loss_i over the L exits, with w_i = i / sum(1..L) (PABEE, DIMEE's
release) or uniform weights (ElasticBERT). Batches are padded dynamically to their longest text.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from tiers import (
    OFFLINE_ENCODER,  # noqa: F401 (old import path)
    CachedSplit,
    CostModel,
    EarlyExitModel,
    RunInfo,
    TierPlan,
    cached_splits,
    default_plan,
    read_cached_split,
    read_run_info,
    resolve_encoder,
    write_cached_split,
    write_run_info,
)
from tiers.run import METRICS_FILE, RUN_FILE

from .data import available_splits, load_glue_split, local_split_path, split_for_calibration, subset
from .metrics import compute_glue_metrics, predictions_from_logits, primary_metric
from .owndata import DataSourceError, file_sha256, load_own_data, rows_fingerprint
from .tasks import TASKS, GlueTask, UnknownTaskError, get_task, run_task  # noqa: F401 (TASKS, UnknownTaskError: old import path)
from .train_config import LOSS_WEIGHTINGS, TrainConfig, TrainingError  # noqa: F401 (LOSS_WEIGHTINGS: old import path)

CALIBRATION_SPLIT = "calibration"
VALIDATION_SPLIT = "validation"


class RunDataMismatch(ValueError):
    """Data offered to a run is not the data its caches hold (eval refuses to overwrite them)."""


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- tokenising and batching ---------------------------------------------------------------------------
@dataclass
class Encoded:
    """Tokenised rows (unpadded lists) and their labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.input_ids])


def texts_of(task: GlueTask, rows) -> tuple[list[str], list[str] | None]:
    first = list(rows[task.text_fields[0]])
    second = list(rows[task.text_fields[1]]) if task.is_pair else None
    return first, second


def encode_split(tokenizer: PreTrainedTokenizerBase, task: GlueTask, rows, max_length: int) -> Encoded:
    """Tokenise a split once (truncating to max_length); padding happens per batch."""
    first, second = texts_of(task, rows)
    enc = tokenizer(first, second, truncation=True, max_length=max_length)
    type_ids = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
    dtype = np.float32 if task.is_regression else np.int64
    return Encoded(enc["input_ids"], type_ids, np.asarray(rows["label"], dtype=dtype))


def pad_batch(encoded: Encoded, rows: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the selected rows to the longest of them."""
    longest = max(len(encoded.input_ids[i]) for i in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    types = torch.zeros((len(rows), longest), dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for out_row, i in enumerate(rows):
        n = len(encoded.input_ids[i])
        ids[out_row, :n] = torch.tensor(encoded.input_ids[i])
        types[out_row, :n] = torch.tensor(encoded.token_type_ids[i])
        mask[out_row, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def exit_weights(num_layers: int, weighting: str) -> torch.Tensor:
    if weighting == "uniform":
        return torch.full((num_layers,), 1.0 / num_layers)
    depth = torch.arange(1, num_layers + 1, dtype=torch.float32)
    return depth / depth.sum()


def joint_exit_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over exits of each exit's loss; logits [batch, L, C] (C = 1: regression, MSE)."""
    batch, num_exits, num_labels = logits.shape
    if num_labels == 1:
        per_exit = ((logits.squeeze(-1) - labels.unsqueeze(1).float()) ** 2).mean(dim=0)
    else:
        flat = F.cross_entropy(
            logits.reshape(batch * num_exits, num_labels), labels.repeat_interleave(num_exits), reduction="none"
        )
        per_exit = flat.view(batch, num_exits).mean(dim=0)
    return (per_exit * weights.to(per_exit.device)).sum()


# ---- data for a run --------------------------------------------------------------------------------------
@dataclass
class RunData:
    """The rows of a run (train, calibration, validation), the task they define and where they came from
    (`source`: what run.json stores under "data", with the cached splits' sizes and fingerprints)."""

    task: GlueTask
    splits: dict
    note: str
    source: dict


def _glue_rows(task: GlueTask, config: TrainConfig) -> tuple:
    """(train, evaluation, note) of a GLUE task, by the config's source and folder."""
    has_local_train = task.train_split in available_splits(task, config.data_dir)
    if has_local_train or config.source == "hub":
        train = load_glue_split(task, task.train_split, config.source, config.data_dir)
        evaluation = load_glue_split(task, task.validation_split, config.source, config.data_dir)
        note = f"train: {task.train_split}; evaluation: {task.validation_split}"
    else:
        try:
            train = load_glue_split(task, task.train_split, config.source, config.data_dir)
            evaluation = load_glue_split(task, task.validation_split, config.source, config.data_dir)
            note = f"train: {task.train_split}; evaluation: {task.validation_split}"
        except Exception:  # offline without a train split: carve it from validation (documented in the note)
            full = load_glue_split(task, task.validation_split, "local", config.data_dir)
            train, evaluation = split_for_calibration(full, fraction=0.3, seed=config.seed)
            note = (
                f"train split unavailable offline: {task.validation_split} carved into 70% train "
                f"(then {config.calibration_fraction:.0%} of it for calibration) and a 30% held-out evaluation part"
            )
    return train, evaluation, note


def glue_source(task: GlueTask, config: TrainConfig) -> dict:
    """run.json's "data" for a GLUE run: the folder actually read (resolved) and the sha256 of its files."""
    files = {}
    if config.source != "hub":
        for split in (task.train_split, task.validation_split):
            path = local_split_path(task, split, config.data_dir)
            if path is not None and path.is_file():
                files[split] = str(path.resolve())
    folder = str(Path(next(iter(files.values()))).parent.parent) if files else None
    return {"kind": "glue", "task": task.name, "source": "local" if files else config.source, "data_dir": folder,
            "files": files, "sha256": {k: file_sha256(p) for k, p in files.items()}}


def split_record(rows, task: GlueTask) -> dict:
    """What run.json keeps of a cached split: its size and content fingerprint."""
    return {"n": len(rows), "fingerprint": rows_fingerprint(rows, task.text_fields)}


def prepare_run_data(config: TrainConfig, task: GlueTask | None = None, label_values: list | None = None) -> RunData:
    """Train, calibration and evaluation rows of a run, the task, a note on where they came from and the
    source record.

    A GLUE task reads `glue_eval.data`; your own data (`train_file` / `validation_file`, or `dataset_name`)
    reads `glue_eval.owndata` and defines its task there, unless `task` (and `label_values`) of an existing
    run are given: then that run's fields and label mapping apply. Where a GLUE task's train split is not
    available (offline MNLI/QNLI), the validation split is carved into train / calibration / held-out
    evaluation parts with a fixed seed, and the note says so. The calibration part is carved from train.
    """
    if config.own_data:
        own = load_own_data(
            config.task, config.train_file, config.validation_file, config.dataset_name, config.dataset_config,
            config.text_fields, config.label_field, config.label_names, task=task, label_values=label_values,
        )
        task, train, evaluation, note, source = own.task, own.train, own.validation, own.note, own.source
        if len(train) < 2:
            raise DataSourceError(f"{config.train_file or config.dataset_name}: the train split needs at least 2 rows")
    else:
        task = task or get_task(config.task)
        train, evaluation, note = _glue_rows(task, config)
        source = glue_source(task, config)
    train, calibration = split_for_calibration(train, config.calibration_fraction, config.seed)
    train = subset(train, config.train_subset, config.seed)
    calibration = subset(calibration, config.calibration_subset, config.seed)
    evaluation = subset(evaluation, config.eval_subset, config.seed)
    splits = {"train": train, CALIBRATION_SPLIT: calibration, VALIDATION_SPLIT: evaluation}
    source["splits"] = {s: split_record(splits[s], task) for s in (CALIBRATION_SPLIT, VALIDATION_SPLIT)}
    return RunData(task, splits, note, source)


def load_run_data(config: TrainConfig, info: RunInfo | None = None) -> tuple[dict, str]:
    """(splits, note) of `prepare_run_data`; with the run's `info`, its own task and label mapping apply."""
    if info is None:
        data = prepare_run_data(config)
    else:
        data = prepare_run_data(config, run_task(info), (info.data or {}).get("label_values"))
    return data.splits, data.note


# ---- training and logit caching --------------------------------------------------------------------------
def train_early_exit(
    model: EarlyExitModel,
    encoded: Encoded,
    config: TrainConfig,
    pad_id: int,
    device: torch.device,
) -> dict:
    """Joint fine-tuning of encoder and exits; returns timing and loss figures."""
    model.to(device).train()
    weights = exit_weights(model.num_layers, config.loss_weighting)
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimiser = torch.optim.AdamW(groups, lr=config.learning_rate)
    schedule = get_linear_schedule_with_warmup(optimiser, int(config.warmup_ratio * total_steps), total_steps)
    rng = np.random.default_rng(config.seed)
    labels = torch.from_numpy(encoded.labels)
    losses: list[float] = []
    started = time.perf_counter()
    progress = tqdm(total=total_steps, desc=f"train {config.task}", unit="step")
    step = 0
    while step < total_steps:
        order = rng.permutation(len(encoded))
        for start in range(0, len(order), config.batch_size):
            if step >= total_steps:
                break
            rows = order[start : start + config.batch_size]
            batch = {k: v.to(device) for k, v in pad_batch(encoded, rows, pad_id).items()}
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            loss = joint_exit_loss(logits, labels[rows].to(device), weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    progress.close()
    seconds = time.perf_counter() - started
    return {
        "steps": total_steps,
        "samples_seen": min(total_steps * config.batch_size, int(len(encoded) * config.epochs) or 1),
        "train_seconds": round(seconds, 2),
        "seconds_per_1000_samples": round(1000 * seconds / max(1, total_steps * config.batch_size), 2),
        "final_loss": float(np.mean(losses[-20:])),
        "device": str(device),
    }


@torch.no_grad()
def collect_logits(
    model: EarlyExitModel, encoded: Encoded, batch_size: int, pad_id: int, device: torch.device, desc: str = "eval"
) -> CachedSplit:
    """Per-exit logits of every row (batched by similar length, returned in the original order)."""
    model.to(device).eval()
    order = np.argsort(encoded.lengths, kind="stable")
    logits = np.zeros((len(encoded), model.num_layers, model.num_labels), dtype=np.float32)
    embedding = np.zeros((len(encoded), model.config.hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        rows = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch(encoded, rows, pad_id).items()}
        hidden = model.embed(batch["input_ids"], batch["token_type_ids"])
        mask = batch["attention_mask"]
        embedding[rows] = ((hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)).float().cpu().numpy()
        _, out = model.run_layers(hidden, mask, 1, model.num_layers)
        logits[rows] = out.float().cpu().numpy()
    return CachedSplit(logits, encoded.labels, encoded.lengths.astype(np.int32), embedding)


def per_exit_metrics(task: GlueTask, cached: CachedSplit) -> list[dict]:
    """The task's GLUE metrics at every exit (vectorised over the cached logits)."""
    predictions = predictions_from_logits(task, cached.logits)  # [n, L]
    return [
        {"exit": i + 1, **compute_glue_metrics(task, predictions[:, i], cached.labels)}
        for i in range(cached.logits.shape[1])
    ]


def cache_run_splits(
    model: EarlyExitModel, tokenizer, task: GlueTask, splits: dict, config: TrainConfig, device: torch.device,
    out: str | Path | None = None, names: tuple[str, ...] = (CALIBRATION_SPLIT, VALIDATION_SPLIT),
    encoded: dict | None = None,
) -> dict:
    """Write cached logits of the named splits (default: calibration and evaluation) into `out` (default
    config.output_dir), and return their per-exit metrics."""
    pad_id = tokenizer.pad_token_id or 0
    out = Path(out if out is not None else config.output_dir)
    metrics = {}
    for split in names:
        enc = (encoded or {}).get(split) or encode_split(tokenizer, task, splits[split], config.max_length)
        cached = collect_logits(model, enc, config.eval_batch_size, pad_id, device, desc=f"logits {split}")
        write_cached_split(out, split, cached)
        metrics[split] = {"n": len(enc), "per_exit": per_exit_metrics(task, cached)}
    return metrics


def _resolve_paths(config: TrainConfig) -> None:
    """Absolute file paths in the config (run.json must work from any folder later); a `dataset_name` that is a
    local folder or file (which `datasets.load_dataset` reads offline) too, a hub name as it is."""
    for name in ("train_file", "validation_file"):
        value = getattr(config, name)
        if value:
            setattr(config, name, str(Path(value).expanduser().resolve()))
    if config.dataset_name and Path(config.dataset_name).expanduser().exists():
        config.dataset_name = str(Path(config.dataset_name).expanduser().resolve())


def _check_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TrainingError(f"output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / RUN_FILE).exists():
        raise TrainingError(f"output folder {out} exists, holds files and is not a run folder; choose another --output")


def _publish(stage: Path, out: Path) -> None:
    """Move the finished run into place; a run folder already there is replaced as a whole (its policy,
    temperatures and experts belong to the old model)."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    stage.rename(out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def train_run(config: TrainConfig) -> Path:
    """Fine-tune, save the run folder (HF checkpoint, run.json), cache logits and write metrics.json.

    The folder is built beside the output under a hidden name and moved into place only when complete, so a
    failed or interrupted train leaves no run folder (and an earlier run there untouched).
    """
    config.validate()
    _resolve_paths(config)
    out = Path(config.output_dir)
    _check_output(out)
    set_seed(config.seed)
    device = pick_device(config.device)
    data = prepare_run_data(config)
    task, splits = data.task, data.splits
    encoder_path = resolve_encoder(config.model)
    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    model = EarlyExitModel.from_encoder(encoder_path, task.num_labels, pooling=config.pooling)
    plan = TierPlan.parse(config.plan, model.num_layers) if config.plan else default_plan(model.num_layers)
    pad_id = tokenizer.pad_token_id or 0
    train_encoded = encode_split(tokenizer, task, splits["train"], config.max_length)
    if (out / RUN_FILE).exists():  # not silent; said before the work (Ctrl-C keeps it: replaced only at the end)
        print(f"note: {out} holds a run; it is replaced as a whole when this train completes", file=sys.stderr)
    training = train_early_exit(model, train_encoded, config, pad_id, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        model.to("cpu").save_pretrained(stage, tokenizer=tokenizer)
        info = RunInfo(
            task=task.name,
            text_fields=list(task.text_fields),
            label_names=list(task.label_names) or ["score"],
            num_labels=task.num_labels,
            max_length=config.max_length,
            plan=plan,
            cost_model=CostModel.from_dict(config.cost_model),
            base_model=str(config.model),
            training={**asdict(config), **training, "data": data.note, "n_train": len(train_encoded)},
            metric_names=list(task.metric_names),
            primary_metric=primary_metric(task),
            data=data.source,
        )
        metrics = cache_run_splits(model.to(device), tokenizer, task, splits, config, device, out=stage)
        write_metrics(stage, task, metrics, training)
        write_run_info(stage, info)  # last: a folder without run.json is no run to any later command
        _publish(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out


def write_metrics(out: Path, task: GlueTask, metrics: dict, training: dict | None = None) -> Path:
    payload = {"task": task.name, "primary_metric": primary_metric(task), "splits": metrics}
    if training:
        payload["training"] = training
    path = out / METRICS_FILE
    path.write_text(json.dumps(payload, indent=2))
    return path


def stored_config(info: RunInfo, run_dir: str | Path) -> TrainConfig:
    """The run's TrainConfig as run.json stores it, reading from the data source it recorded."""
    known = set(TrainConfig.__dataclass_fields__)
    config = TrainConfig(**{k: v for k, v in info.training.items() if k in known})
    config.output_dir = str(run_dir)
    data = info.data or {}
    if data.get("kind") == "glue" and data.get("data_dir"):
        config.data_dir, config.source = data["data_dir"], "local"
    return config


def _source_of(config: TrainConfig) -> str:
    if config.dataset_name:
        return f"data set {config.dataset_name}" + (f"/{config.dataset_config}" if config.dataset_config else "")
    if config.own_data:
        return f"files {config.train_file or '-'}, {config.validation_file}"
    return f"GLUE {config.task} ({config.source}, {config.data_dir or 'default folder'})"


def _check_same_rows(run_dir: Path, info: RunInfo, data: RunData, encoded: dict, where: str) -> None:
    """Refuse (before anything is written) when the rows offered for a cached split are not the rows cached:
    by content fingerprint where run.json stores one, else by size, labels and token counts of the cache."""
    stored = (info.data or {}).get("splits", {})
    fix = (
        f"nothing was written. To evaluate other data, cache it under a new split name: "
        f"`dimee eval {run_dir} --split NAME` with its source (--data-dir, --validation-file or --dataset-name)"
    )
    for split in (CALIBRATION_SPLIT, VALIDATION_SPLIT):
        new = data.source["splits"][split]
        old = stored.get(split)
        if old is not None:
            if old.get("fingerprint") != new["fingerprint"]:
                raise RunDataMismatch(
                    f"refusing to overwrite {run_dir}'s {split} caches: the rows read now from {where} (n {new['n']}) "
                    f"are not the rows the run was cached with (n {old.get('n')}; fingerprints differ); {fix}"
                )
            continue
        if split not in cached_splits(run_dir):
            continue
        cached = read_cached_split(run_dir, split)
        same = len(cached.labels) == new["n"] and np.array_equal(cached.labels, encoded[split].labels) and np.array_equal(
            cached.token_counts, encoded[split].lengths
        )
        if not same:
            raise RunDataMismatch(
                f"refusing to overwrite {run_dir}'s {split} caches: the rows read now from {where} (n {new['n']}) "
                f"differ from the cached ones (n {len(cached.labels)}); {fix}"
            )


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | None = None,
    source: str | None = None,
    device: str = "auto",
    split: str | None = None,
    validation_file: str | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
) -> dict:
    """Re-cache the logits of an existing run and rewrite its metrics, from the data source run.json stores.

    Another source (`data_dir`/`source` for a GLUE run; `validation_file` or `dataset_name` for your own data)
    may only re-cache the very rows the run holds (checked by fingerprint; else `RunDataMismatch`, nothing
    written). To evaluate other data, name a new split: `split="news"` caches that source's evaluation rows
    as `logits/news.*` and adds them to metrics.json and run.json, leaving calibration and validation alone.
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    config = stored_config(info, run_dir)
    config.device = device
    glue_run = not config.own_data
    if glue_run and (validation_file or dataset_name):
        raise TrainingError(f"{run_dir} is a GLUE run ({info.task}): choose its data with --data-dir / --source")
    if not glue_run and (data_dir is not None or source is not None):
        raise TrainingError(f"{run_dir} is a run of your own data ({info.task}): choose its data with --validation-file or --dataset-name")
    if data_dir is not None:
        config.data_dir = data_dir
    if source is not None:
        config.source = source
    if validation_file is not None:
        config.validation_file = str(Path(validation_file).expanduser().resolve())
    if dataset_name is not None:
        config.dataset_name, config.dataset_config = dataset_name, dataset_config
        config.train_file = config.validation_file = None
    _resolve_paths(config)
    task = run_task(info)
    label_values = (info.data or {}).get("label_values")
    if split is not None:
        return _evaluate_new_split(run_dir, info, task, config, split, label_values)
    data = prepare_run_data(config, task, label_values)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "encoder")
    encoded = {s: encode_split(tokenizer, task, data.splits[s], config.max_length) for s in (CALIBRATION_SPLIT, VALIDATION_SPLIT)}
    _check_same_rows(run_dir, info, data, encoded, _source_of(config))
    model = EarlyExitModel.from_pretrained(run_dir)
    metrics = cache_run_splits(model, tokenizer, task, data.splits, config, pick_device(device), out=run_dir, encoded=encoded)
    timing = ("steps", "train_seconds", "seconds_per_1000_samples", "final_loss", "device")
    stored = dict(info.training)
    write_metrics(run_dir, task, {**_stored_metrics(run_dir), **metrics}, {k: stored[k] for k in timing if k in stored})
    if not (info.data or {}).get("splits"):  # an older run: record what it now holds
        info.data = {**data.source, **(info.data or {}), "splits": data.source["splits"]}
        write_run_info(run_dir, info)
    return metrics


def _stored_metrics(run_dir: Path) -> dict:
    path = run_dir / METRICS_FILE
    try:
        return dict(json.loads(path.read_text()).get("splits", {})) if path.exists() else {}
    except ValueError:
        return {}


def _evaluate_new_split(run_dir: Path, info: RunInfo, task: GlueTask, config: TrainConfig, split: str, label_values) -> dict:
    """Cache another source's evaluation rows under a new split name (never over the run's own splits)."""
    if split in ("train", CALIBRATION_SPLIT, VALIDATION_SPLIT) or not split.replace("-", "_").isidentifier():
        raise TrainingError(
            f"--split {split!r}: choose a new name (letters, digits, _ or -) other than train, calibration, validation"
        )
    if config.own_data and not config.dataset_name:
        own = load_own_data(task.name, None, config.validation_file, text_fields=task.text_fields,
                            label_field=config.label_field, task=task, label_values=label_values)
        rows, note = own.validation, own.note
    elif config.own_data:
        own = load_own_data(task.name, dataset_name=config.dataset_name, dataset_config=config.dataset_config,
                            label_field=config.label_field, task=task, label_values=label_values)
        rows, note = own.validation, own.note
    else:
        rows = load_glue_split(task, task.validation_split, config.source, config.data_dir)
        note = f"GLUE {task.name} {task.validation_split} from {config.data_dir or config.source}"
    rows = subset(rows, config.eval_subset, config.seed)
    record = {**split_record(rows, task), "source": _source_of(config), "note": note}
    data = dict(info.data or {})
    known = dict(data.get("splits", {}))
    if split in known and known[split].get("fingerprint") != record["fingerprint"]:
        raise RunDataMismatch(
            f"refusing to overwrite {run_dir}'s {split!r} caches: they hold other rows "
            f"(n {known[split].get('n')}, from {known[split].get('source')}); choose another --split name"
        )
    if split in cached_splits(run_dir) and split not in known:
        raise RunDataMismatch(f"{run_dir} already has cached logits {split!r} of unknown origin; choose another --split name")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "encoder")
    model = EarlyExitModel.from_pretrained(run_dir)
    metrics = cache_run_splits(model, tokenizer, task, {split: rows}, config, pick_device(config.device), out=run_dir, names=(split,))
    record_split(run_dir, info, task, split, record, metrics[split])
    return metrics


def record_split(run_dir: Path, info: RunInfo, task: GlueTask, split: str, record: dict, metrics: dict) -> None:
    """Add a newly cached split to the run's records: its per-exit metrics to metrics.json (the run's training
    record kept) and its record (size, fingerprint, source) to run.json's data splits."""
    path = run_dir / METRICS_FILE
    previous = json.loads(path.read_text()) if path.exists() else {}
    write_metrics(run_dir, task, {**previous.get("splits", {}), split: metrics}, previous.get("training"))
    data = dict(info.data or {})
    info.data = {**data, "splits": {**data.get("splits", {}), split: record}}
    write_run_info(run_dir, info)
