"""The run folder: a self-describing directory that every higher layer reads.

    <run>/encoder/              HF encoder + tokenizer (save_pretrained)
    <run>/exits.safetensors     exit heads; <run>/early_exit.json their config
    <run>/run.json              task (name, text fields, label names, metrics), data source (with fingerprints
                                of its files and of the cached splits), max length, tier plan, cost model, training
    <run>/logits/<split>.npy    cached per-exit logits [n, L, num_labels] (float32)
    <run>/logits/<split>.labels.npy, <split>.tokens.npy (real-token counts), <split>.embedding.npy
    <run>/policy.json           fitted tier-selection policy (optional)
    <run>/temperatures.json     per-exit temperatures (optional)
    <run>/metrics.json          per-exit metrics

The services need only this folder, so they never import the evaluation package.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .cost import CostModel
from .errors import CheckpointError  # not .model: reading a run folder needs no torch
from .plan import TierPlan

RUN_FILE = "run.json"
LOGITS_DIR = "logits"
POLICY_FILE = "policy.json"
TEMPERATURES_FILE = "temperatures.json"
METRICS_FILE = "metrics.json"
OOF_SPLIT = "oof"  # out-of-fold logits of the training rows (`dimee oof`): extra fit data for the policies


@dataclass
class RunInfo:
    """What run.json holds. `metric_names` / `primary_metric` and `data` describe the task and where its rows
    came from (`data["kind"]`: "glue", "files" or "dataset"; `data["splits"]`: per cached split its size and
    content fingerprint), so every later command works from the run folder alone; a run.json written before
    they existed lacks them (a GLUE run: the registry describes it)."""

    task: str
    text_fields: list[str]
    label_names: list[str]
    num_labels: int
    max_length: int
    plan: TierPlan
    cost_model: CostModel = field(default_factory=CostModel)
    base_model: str = ""
    training: dict = field(default_factory=dict)
    metric_names: list[str] = field(default_factory=list)
    primary_metric: str = ""
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["plan"] = self.plan.to_dict()
        data["cost_model"] = self.cost_model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RunInfo":
        data = dict(data)
        data["plan"] = TierPlan.from_dict(data["plan"])
        data["cost_model"] = CostModel.from_dict(data.get("cost_model", {}))
        return cls(**data)


def write_run_info(folder: str | Path, info: RunInfo) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RUN_FILE
    partial = folder / f".{RUN_FILE}.partial"
    partial.write_text(json.dumps(info.to_dict(), indent=2))
    partial.replace(path)  # atomic: a reader sees the old run.json or the new one, never half of one
    return path


def read_run_info(folder: str | Path) -> RunInfo:
    path = Path(folder) / RUN_FILE
    if not path.exists():
        raise CheckpointError(f"{folder} is not a run folder (no {RUN_FILE}); create one with `dimee train`")
    try:
        return RunInfo.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is damaged ({err}); retrain or restore the run folder") from err


@dataclass
class CachedSplit:
    """Per-exit logits of one split with what the policies and the cost model need beside them."""

    logits: np.ndarray  # [n, L, num_labels]
    labels: np.ndarray  # [n]
    token_counts: np.ndarray  # [n] real tokens per sample (handoff payload size)
    embedding: np.ndarray | None = None  # [n, hidden] mean-pooled embedding-layer output

    def rows(self, ids: np.ndarray) -> "CachedSplit":
        """The selected samples (an index array or a boolean mask)."""
        embedding = None if self.embedding is None else self.embedding[ids]
        return CachedSplit(self.logits[ids], self.labels[ids], self.token_counts[ids], embedding)

    @classmethod
    def concat(cls, splits: "list[CachedSplit]") -> "CachedSplit":
        """Samples of several splits of one run, in order (a pooled fit set); the embedding only where every
        split has it."""
        if not splits:
            raise ValueError("concat needs at least one cached split")
        shapes = {s.logits.shape[1:] for s in splits}
        if len(shapes) > 1:
            raise ValueError(f"cached splits of different exits or classes cannot be pooled: {sorted(shapes)}")
        with_embedding = all(s.embedding is not None for s in splits)
        return cls(
            np.concatenate([s.logits for s in splits]),
            np.concatenate([s.labels for s in splits]),
            np.concatenate([s.token_counts for s in splits]),
            np.concatenate([s.embedding for s in splits]) if with_embedding else None,
        )


def write_cached_split(folder: str | Path, split: str, cached: CachedSplit) -> None:
    out = Path(folder) / LOGITS_DIR
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{split}.npy", cached.logits.astype(np.float32))
    np.save(out / f"{split}.labels.npy", cached.labels)
    np.save(out / f"{split}.tokens.npy", cached.token_counts.astype(np.int32))
    if cached.embedding is not None:
        np.save(out / f"{split}.embedding.npy", cached.embedding.astype(np.float16))


def cached_splits(folder: str | Path) -> list[str]:
    out = Path(folder) / LOGITS_DIR
    return sorted(p.name[: -len(".npy")] for p in out.glob("*.npy") if p.name.count(".") == 1)


def read_cached_split(folder: str | Path, split: str) -> CachedSplit:
    out = Path(folder) / LOGITS_DIR
    path = out / f"{split}.npy"
    if not path.exists():
        have = ", ".join(cached_splits(folder)) or "none"
        raise CheckpointError(f"{folder} has no cached logits for split {split!r} (has: {have}); run `dimee eval` first")
    embedding_path = out / f"{split}.embedding.npy"
    return CachedSplit(
        logits=np.load(path),
        labels=np.load(out / f"{split}.labels.npy"),
        token_counts=np.load(out / f"{split}.tokens.npy"),
        embedding=np.load(embedding_path).astype(np.float32) if embedding_path.exists() else None,
    )


class TemperatureFileError(ValueError):
    """temperatures.json exists but does not hold one finite, positive temperature per exit."""


def read_temperatures(folder: str | Path, num_layers: int | None = None) -> np.ndarray | None:
    """Per-exit temperatures [L] from `<run>/temperatures.json` ({"temperatures": [...]}), or None if absent."""
    path = Path(folder) / TEMPERATURES_FILE
    if not path.exists():
        return None
    try:
        values = np.asarray(json.loads(path.read_text())["temperatures"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as err:
        raise TemperatureFileError(
            f'{path} is not {{"temperatures": [a list of numbers, one per exit]}} ({err}); rerun `dimee calibrate {folder}`'
        ) from err
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all() or (values <= 0).any():
        raise TemperatureFileError(f"{path}: temperatures must be finite and > 0, got {values.tolist()}")
    if num_layers is not None and values.size != num_layers:
        raise TemperatureFileError(f"{path}: expected one temperature per exit ({num_layers}), got {values.size}")
    return values
