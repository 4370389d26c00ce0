"""GLUE splits as `datasets.Dataset`: from local JSON lines (offline) or from the HF hub (`nyu-mll/glue`).

Local files live at `<data_dir>/<task>/<split>.jsonl` with the HF field names; they are cast to the hub's schema
(`ClassLabel` labels, float32 STS-B scores, int32 `idx`), so downstream code sees the same dataset either way.
Arrow caches go to the default HF datasets cache (`~/.cache/huggingface/datasets`), never into the repository.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import datasets
import numpy as np

from glue_eval.tasks import GlueTask, get_task

HUB_DATASET = "nyu-mll/glue"
ENV_DATA_DIR = "DIMEE_GLUE_DIR"
Source = Literal["auto", "local", "hub"]

_REPO_ROOT = Path(__file__).resolve().parent.parent


class GlueDataError(RuntimeError):
    """A GLUE split could be found neither locally nor on the hub (the message says how to fix it)."""


def default_data_dir() -> Path | None:
    """`$DIMEE_GLUE_DIR` if set, else the first existing of `./../shared/glue` and `<repo root>/../shared/glue`."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    for candidate in (Path.cwd() / ".." / "shared" / "glue", _REPO_ROOT / ".." / "shared" / "glue"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _resolve_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def local_split_path(task: str | GlueTask, split: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Where the local JSON lines for `task`/`split` would be (whether or not it exists); None without a folder."""
    root = _resolve_dir(data_dir)
    return None if root is None else root / get_task(task).name / f"{split}.jsonl"


def available_splits(task: str | GlueTask, data_dir: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """The task's splits that have a local file, in the task's split order.

    Some splits are not in the shared offline copy (mnli/qnli/qqp train, mnli validation_mismatched, all of qqp;
    see shared/glue/MANIFEST.md); callers use this to skip or fall back instead of failing late.
    """
    t = get_task(task)
    root = _resolve_dir(data_dir)
    if root is None:
        return ()
    return tuple(s for s in t.splits if (root / t.name / f"{s}.jsonl").is_file())


def glue_features(task: str | GlueTask, columns: list[str] | None = None) -> datasets.Features:
    """The hub schema of `task` (restricted to `columns` if given; unknown columns default to string)."""
    t = get_task(task)
    label = datasets.Value("float32") if t.is_regression else datasets.ClassLabel(names=list(t.label_names))
    known: dict[str, datasets.features.features.FeatureType] = {f: datasets.Value("string") for f in t.text_fields}
    known["label"] = label
    known["idx"] = datasets.Value("int32")
    cols = list(known) if columns is None else columns
    return datasets.Features({c: known.get(c, datasets.Value("string")) for c in cols})


def quiet_load_dataset(*args, **kwargs):
    """`datasets.load_dataset` without its progress bars and log lines (stderr carries our one-line errors)."""
    enabled = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)  # e.g. "Failed to load JSON from file ..."
    try:
        return datasets.load_dataset(*args, **kwargs)
    finally:
        datasets.logging.set_verbosity(verbosity)
        if enabled:
            datasets.enable_progress_bars()


def _load_local(t: GlueTask, path: Path) -> datasets.Dataset:
    # Typing the columns up front (from the first row's keys) casts while reading: one Arrow cache file, not two.
    with path.open(encoding="utf-8") as f:
        first = f.readline()
    try:
        columns = list(json.loads(first)) if first.strip() else None
    except ValueError as err:
        raise GlueDataError(f"{path} is not JSON lines (line 1: {err})") from None
    if columns is None:
        raise GlueDataError(f"{path} is empty (no rows)")
    missing = [c for c in (*t.text_fields, "label") if c not in columns]
    if missing:
        raise GlueDataError(
            f"{path}: no field {', '.join(map(repr, missing))} (GLUE {t.name} rows hold {', '.join(t.text_fields)}, label; "
            f"fields found: {', '.join(columns)}); for other data use --train-file/--validation-file with --text-fields "
            "and --label-field"
        )
    try:
        ds = quiet_load_dataset("json", data_files=str(path), split="train", features=glue_features(t, columns))
    except Exception as err:  # a row that does not fit the schema: datasets wraps the reader's error
        cause = err.__cause__ or err
        line = (str(cause).strip().splitlines() or [""])[0][:200]
        raise GlueDataError(f"{path} does not fit GLUE {t.name}'s schema ({type(cause).__name__}: {line})") from err
    assert isinstance(ds, datasets.Dataset)
    if not t.is_regression:
        labels = np.asarray(ds["label"])
        bad = np.flatnonzero((labels < -1) | (labels >= t.num_labels))  # -1: GLUE's unlabelled test rows
        if bad.size:
            raise GlueDataError(
                f"{path}: label {int(labels[bad[0]])} in row {int(bad[0]) + 1} is not one of GLUE {t.name}'s "
                f"{t.num_labels} labels (0..{t.num_labels - 1}: {', '.join(t.label_names)}); for another label set "
                "use --train-file/--validation-file (your own data)"
            )
    return ds


def _load_hub(t: GlueTask, split: str) -> datasets.Dataset:
    ds = datasets.load_dataset(HUB_DATASET, t.name, split=split)
    assert isinstance(ds, datasets.Dataset)
    return ds


def _unavailable_message(
    t: GlueTask, split: str, path: Path | None, data_dir: str | os.PathLike[str] | None, hub_error: BaseException | None
) -> str:
    if path is None:
        where = f"no local GLUE folder (${ENV_DATA_DIR} unset, no ../shared/glue found)"
    else:
        local = available_splits(t, data_dir)
        where = f"no local file {path} (local {t.name} splits: {', '.join(local) or 'none'})"
    hub = "hub not tried (source='local')"
    if hub_error is not None:
        first_line = (str(hub_error).strip().splitlines() or [""])[0][:300]
        hub = f'load_dataset("{HUB_DATASET}", "{t.name}") failed: {type(hub_error).__name__}: {first_line}'
    return (
        f"GLUE {t.name}/{split} is not available: {where}; {hub}. Fix: set ${ENV_DATA_DIR} (or pass --data-dir / "
        f"data_dir=) to a folder holding {t.name}/{split}.jsonl (JSON lines with the HF fields "
        f"{', '.join(t.text_fields)}, label, idx), or go online so "
        f'datasets.load_dataset("{HUB_DATASET}", "{t.name}") works (source="hub" or "auto").'
    )


def load_glue_split(
    task: str | GlueTask,
    split: str,
    source: Source = "auto",
    data_dir: str | os.PathLike[str] | None = None,
) -> datasets.Dataset:
    """Load one GLUE split.

    source: "local" reads `<data_dir>/<task>/<split>.jsonl`; "hub" uses `load_dataset("nyu-mll/glue", task)`;
    "auto" uses the local file when it exists, else the hub. Raises `GlueDataError` when the split cannot be had,
    and `ValueError` for a split name the task does not have (e.g. "validation" for mnli). Offline, set
    HF_HUB_OFFLINE=1: otherwise an unreachable hub costs ~20 s of retries before the error.
    """
    t = get_task(task)
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be 'auto', 'local' or 'hub', got {source!r}")
    if split not in t.splits:
        raise ValueError(f"GLUE {t.name} has no split {split!r}; its splits: {', '.join(t.splits)}")
    path = local_split_path(t, split, data_dir)
    if source != "hub" and path is not None and path.is_file():
        return _load_local(t, path)
    if source == "local":
        raise GlueDataError(_unavailable_message(t, split, path, data_dir, None))
    try:
        return _load_hub(t, split)
    except Exception as err:  # hub errors vary (offline mode, DNS, 404, ...); report them all the same way
        raise GlueDataError(_unavailable_message(t, split, path, data_dir, err)) from err


def _sorted_sample(n_total: int, n_pick: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick `n_pick` of `n_total` row ids at random; return (picked, rest), each in original row order."""
    perm = np.random.default_rng(seed).permutation(n_total)
    return np.sort(perm[:n_pick]), np.sort(perm[n_pick:])


def split_for_calibration(
    dataset: datasets.Dataset, fraction: float = 0.1, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Carve a held-out calibration part from a training split: returns (train_part, calibration_part).

    Deterministic for a given (len(dataset), fraction, seed); the parts are disjoint, cover the dataset and keep
    the original row order. The calibration part has round(fraction * n) rows, at least 1.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = len(dataset)
    if n < 2:
        raise ValueError(f"need at least 2 rows to split off a calibration part, got {n}")
    n_cal = min(max(1, round(fraction * n)), n - 1)
    cal_ids, train_ids = _sorted_sample(n, n_cal, seed)
    return dataset.select(train_ids), dataset.select(cal_ids)


def subset(dataset: datasets.Dataset, n: int | None, seed: int = 0) -> datasets.Dataset:
    """A deterministic random subset of `n` rows (original order kept); the dataset itself if n is None or >= len."""
    if n is None or n >= len(dataset):
        return dataset
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    picked, _ = _sorted_sample(len(dataset), n, seed)
    return dataset.select(picked)
