"""Fine-tune an early-exit encoder on a GLUE task and cache every exit's logits in the run folder.

Joint training: loss = sum_i w_i * loss_i over the L exits, with w_i = i / sum(1..L) (PABEE, DIMEE's
release) or uniform weights (ElasticBERT). Batches are padded dynamically to their longest text.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from tiers import (
    OFFLINE_ENCODER,
    CachedSplit,
    CostModel,
    EarlyExitModel,
    RunInfo,
    TierPlan,
    default_plan,
    resolve_encoder,
    write_cached_split,
    write_run_info,
)
from tiers.run import METRICS_FILE

from .data import available_splits, load_glue_split, split_for_calibration, subset
from .metrics import compute_glue_metrics, predictions_from_logits, primary_metric
from .tasks import GlueTask, get_task

LOSS_WEIGHTINGS = ("weighted", "uniform")
CALIBRATION_SPLIT = "calibration"
VALIDATION_SPLIT = "validation"


class TrainingError(ValueError):
    """A training setting that cannot work (the message says which and why)."""


@dataclass
class TrainConfig:
    task: str = "sst2"
    model: str = OFFLINE_ENCODER
    output_dir: str = "runs/sst2"
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    max_length: int = 128
    seed: int = 0
    train_subset: int | None = None
    eval_subset: int | None = None
    calibration_fraction: float = 0.1
    calibration_subset: int | None = None
    loss_weighting: str = "weighted"
    pooling: str = "mean"
    plan: str | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    eval_batch_size: int = 64
    data_dir: str | None = None
    source: str = "auto"
    device: str = "auto"
    cost_model: dict = field(default_factory=dict)

    def validate(self) -> None:
        get_task(self.task)
        checks = [
            (self.epochs > 0, f"epochs must be > 0, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"learning rate must be > 0, got {self.learning_rate}"),
            (8 <= self.max_length <= 512, f"max length must be within 8..512 tokens, got {self.max_length}"),
            (0 < self.calibration_fraction < 1, f"calibration fraction must be in (0, 1), got {self.calibration_fraction}"),
            (self.loss_weighting in LOSS_WEIGHTINGS, f"loss weighting must be one of {LOSS_WEIGHTINGS}"),
            (self.train_subset is None or self.train_subset >= 2, "train subset must hold at least 2 samples"),
            (self.eval_subset is None or self.eval_subset >= 1, "eval subset must hold at least 1 sample"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)
        CostModel.from_dict(self.cost_model)


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
def load_run_data(config: TrainConfig) -> tuple[dict, str]:
    """Train, calibration and evaluation rows, plus a note on where they came from.

    Where a task's train split is not available (offline MNLI/QNLI), the validation split is carved into
    train / calibration / held-out evaluation parts with a fixed seed, and the note says so.
    """
    task = get_task(config.task)
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
    train, calibration = split_for_calibration(train, config.calibration_fraction, config.seed)
    train = subset(train, config.train_subset, config.seed)
    calibration = subset(calibration, config.calibration_subset, config.seed)
    evaluation = subset(evaluation, config.eval_subset, config.seed)
    return {"train": train, CALIBRATION_SPLIT: calibration, VALIDATION_SPLIT: evaluation}, note


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
    predictions = predictions_from_logits(task.name, cached.logits)  # [n, L]
    return [
        {"exit": i + 1, **compute_glue_metrics(task.name, predictions[:, i], cached.labels)}
        for i in range(cached.logits.shape[1])
    ]


def cache_run_splits(
    model: EarlyExitModel, tokenizer, task: GlueTask, splits: dict, config: TrainConfig, device: torch.device
) -> dict:
    """Write cached logits of the calibration and evaluation splits, and return their per-exit metrics."""
    pad_id = tokenizer.pad_token_id or 0
    metrics = {}
    for split in (CALIBRATION_SPLIT, VALIDATION_SPLIT):
        encoded = encode_split(tokenizer, task, splits[split], config.max_length)
        cached = collect_logits(model, encoded, config.eval_batch_size, pad_id, device, desc=f"logits {split}")
        write_cached_split(config.output_dir, split, cached)
        metrics[split] = {"n": len(encoded), "per_exit": per_exit_metrics(task, cached)}
    return metrics


def train_run(config: TrainConfig) -> Path:
    """Fine-tune, save the run folder (HF checkpoint, run.json), cache logits and write metrics.json."""
    config.validate()
    task = get_task(config.task)
    set_seed(config.seed)
    device = pick_device(config.device)
    splits, data_note = load_run_data(config)
    encoder_path = resolve_encoder(config.model)
    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    model = EarlyExitModel.from_encoder(encoder_path, task.num_labels, pooling=config.pooling)
    plan = TierPlan.parse(config.plan, model.num_layers) if config.plan else default_plan(model.num_layers)
    pad_id = tokenizer.pad_token_id or 0
    train_encoded = encode_split(tokenizer, task, splits["train"], config.max_length)
    training = train_early_exit(model, train_encoded, config, pad_id, device)
    out = Path(config.output_dir)
    model.to("cpu").save_pretrained(out, tokenizer=tokenizer)
    info = RunInfo(
        task=task.name,
        text_fields=list(task.text_fields),
        label_names=list(task.label_names) or ["score"],
        num_labels=task.num_labels,
        max_length=config.max_length,
        plan=plan,
        cost_model=CostModel.from_dict(config.cost_model),
        base_model=str(config.model),
        training={**asdict(config), **training, "data": data_note, "n_train": len(train_encoded)},
    )
    write_run_info(out, info)
    metrics = cache_run_splits(model.to(device), tokenizer, task, splits, config, device)
    write_metrics(out, task, metrics, training)
    return out


def write_metrics(out: Path, task: GlueTask, metrics: dict, training: dict | None = None) -> Path:
    payload = {"task": task.name, "primary_metric": primary_metric(task.name), "splits": metrics}
    if training:
        payload["training"] = training
    path = out / METRICS_FILE
    path.write_text(json.dumps(payload, indent=2))
    return path


def evaluate_run(run_dir: str | Path, data_dir: str | None = None, source: str = "auto", device: str = "auto") -> dict:
    """Re-cache the logits of an existing run (same splits, same seed) and rewrite its metrics."""
    from tiers import read_run_info

    info = read_run_info(run_dir)
    stored = dict(info.training)
    known = {f for f in TrainConfig.__dataclass_fields__}
    config = TrainConfig(**{k: v for k, v in stored.items() if k in known})
    config.output_dir, config.data_dir, config.source, config.device = str(run_dir), data_dir, source, device
    task = get_task(info.task)
    splits, _ = load_run_data(config)
    model = EarlyExitModel.from_pretrained(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(Path(run_dir) / "encoder")
    metrics = cache_run_splits(model, tokenizer, task, splits, config, pick_device(device))
    timing = ("steps", "train_seconds", "seconds_per_1000_samples", "final_loss", "device")
    write_metrics(Path(run_dir), task, metrics, {k: stored[k] for k in timing if k in stored})
    return metrics
