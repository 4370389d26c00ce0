"""Your own data: any text-classification or regression data set, from local files or a named HF data set.

The conventions are those of Hugging Face's `run_glue.py`: `train_file` / `validation_file` (CSV, TSV, JSON lines
or Parquet, read with `datasets.load_dataset`) or `dataset_name` [+ `dataset_config`] (`datasets.load_dataset`,
online), `text_fields` (one or two columns) and `label_field`. Labels:

- a `ClassLabel` feature gives the label names;
- strings, integers or booleans: the sorted distinct values of the train split (or the declared `label_names`,
  matched by name or, for integers, by index);
- floats: regression (one output per exit; Pearson and Spearman).

Rows are normalised to the columns `<text fields>` + `label` (class id, or float32 score), which is what the
training code reads for GLUE too. Every problem a user can fix (a missing field, a label outside the names, an
empty split, a file that is not its stated format, a text field holding non-strings) is a `DataSourceError`
with a one-line message naming the file, the row or the columns found.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .data import GlueDataError, quiet_load_dataset
from .tasks import GlueTask, custom_task

#: file suffix -> `datasets` builder (and CSV delimiter)
FILE_FORMATS = {".csv": ("csv", ","), ".tsv": ("csv", "\t"), ".json": ("json", None), ".jsonl": ("json", None),
                ".parquet": ("parquet", None)}
DEFAULT_TEXT_FIELDS = (("text",), ("sentence1", "sentence2"), ("sentence",), ("text1", "text2"))
LABEL = "label"


class DataSourceError(GlueDataError):
    """A data set that cannot be used as given (the one-line message says what and where)."""


@dataclass
class OwnData:
    """A loaded, normalised data set: the task it defines, its train and validation rows, its source."""

    task: GlueTask
    train: datasets.Dataset | None
    validation: datasets.Dataset
    source: dict  # what run.json stores under "data" (kind, files and their sha256, fields, label values)
    note: str


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rows_fingerprint(rows: datasets.Dataset, text_fields) -> str:
    """sha256 of a split's content as the model sees it: its text fields and labels, in row order."""
    payload = {f: list(rows[f]) for f in text_fields}
    payload[LABEL] = [float(v) if isinstance(v, float) else v for v in rows[LABEL]]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def _first_line(err: BaseException) -> str:
    cause = err.__cause__ or err.__context__ or err
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return f"{type(cause).__name__}: {text[:200]}"


def load_file(path: str | os.PathLike[str], what: str = "data") -> datasets.Dataset:
    """One local file as a `datasets.Dataset` (format from the suffix: .csv, .tsv, .json/.jsonl, .parquet)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataSourceError(f"{what} file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise DataSourceError(
            f"{what} file {path}: unknown format {suffix or '(no suffix)'!r}; use one of {', '.join(FILE_FORMATS)}"
        )
    size = path.stat().st_size
    if size == 0 or (size < 4096 and not path.read_bytes().strip()):
        raise DataSourceError(f"{what} file {path} is empty (no rows)")
    builder, delimiter = FILE_FORMATS[suffix]
    extra = {"delimiter": delimiter} if builder == "csv" else {}
    try:
        ds = quiet_load_dataset(builder, data_files=str(path), split="train", **extra)
    except Exception as err:  # datasets wraps the reader's error (ArrowInvalid, ParserError, ...) in its own
        if "corresponds to no data" in str(err):  # e.g. a CSV header without rows, a Parquet file of 0 rows
            raise DataSourceError(f"{what} file {path} has no rows") from err
        raise DataSourceError(f"{what} file {path} is not a readable {builder} file ({_first_line(err)})") from err
    assert isinstance(ds, datasets.Dataset)
    if len(ds) == 0:
        raise DataSourceError(f"{what} file {path} has no rows")
    return ds


def load_named(name: str, config: str | None = None) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """(train, validation, validation split name) of `datasets.load_dataset(name, config)` (online)."""
    try:
        dd = quiet_load_dataset(name, config)
    except Exception as err:
        raise DataSourceError(f'datasets.load_dataset("{name}", {config!r}) failed ({_first_line(err)})') from err
    splits = list(dd)
    if "train" not in dd:
        raise DataSourceError(f"data set {name} has no 'train' split (its splits: {', '.join(splits)})")
    evaluation = next((s for s in ("validation", "validation_matched", "dev", "test") if s in dd), None)
    if evaluation is None:
        raise DataSourceError(f"data set {name} has no validation split (its splits: {', '.join(splits)})")
    return dd["train"], dd[evaluation], evaluation


def own_task_name(train_file: str | None, dataset_name: str | None = None) -> str:
    """A name for your own task when none is given: the data set's name, else the train file's stem without a
    train suffix (`scores_train.csv` -> scores), or its folder's name when the stem is just 'train'."""
    if dataset_name:
        return dataset_name.rstrip("/").split("/")[-1]
    path = Path(str(train_file)).expanduser().resolve()
    stem = path.name.split(".")[0]
    for suffix in ("_train", "-train", ".train"):
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return path.parent.name if stem.lower() in ("train", "training") and path.parent.name else stem


def pick_text_fields(columns: list[str], text_fields, label_field: str) -> tuple[str, ...]:
    """The given text fields (each must exist), or the first of DEFAULT_TEXT_FIELDS that does."""
    if text_fields:
        fields = tuple(text_fields.split(",")) if isinstance(text_fields, str) else tuple(text_fields)
        fields = tuple(f.strip() for f in fields if f.strip())
        if not 1 <= len(fields) <= 2:
            raise DataSourceError(f"text fields must be 1 or 2 column names, got {list(fields)}")
        if label_field in fields:
            raise DataSourceError(f"{label_field!r} is both a text field and the label field")
        return fields
    for candidate in DEFAULT_TEXT_FIELDS:
        if all(c in columns for c in candidate):
            return candidate
    raise DataSourceError(
        f"no text field given and none of the usual names ({', '.join('/'.join(c) for c in DEFAULT_TEXT_FIELDS)}) "
        f"is a column; columns found: {', '.join(columns)}; pass --text-fields a[,b]"
    )


def _check_columns(ds: datasets.Dataset, fields, where: str) -> None:
    missing = [f for f in fields if f not in ds.column_names]
    if missing:
        raise DataSourceError(
            f"{where}: no column {', '.join(map(repr, missing))}; columns found: {', '.join(ds.column_names)}"
            " (choose them with --text-fields a[,b] and --label-field y)"
        )


def _check_texts(ds: datasets.Dataset, fields, where: str) -> None:
    for f in fields:
        feature = ds.features[f]
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            values = ds[f]
            bad = next((i for i, v in enumerate(values) if v is None), None)
            if bad is not None:
                raise DataSourceError(f"{where}: text field {f!r} is empty (null) in row {bad + 1}")
            continue
        values = list(ds[f])
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), 0)
        raise DataSourceError(
            f"{where}: text field {f!r} holds {feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__}"
            f" values, not strings (row {bad + 1}: {values[bad]!r})"
        )


def _label_kind(feature) -> str:
    if isinstance(feature, datasets.ClassLabel):
        return "classlabel"
    if isinstance(feature, datasets.Value):
        if feature.dtype.startswith("float"):
            return "float"
        if feature.dtype in ("string", "large_string") or feature.dtype.startswith(("int", "uint")) or feature.dtype == "bool":
            return "values"
    raise DataSourceError(f"label feature {feature} is neither class names, integers, strings nor floats")


def _value_key(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def define_labels(train: datasets.Dataset, label_field: str, declared=None, where: str = "train") -> tuple[list[str], list]:
    """(label names, label values): from a ClassLabel, the declared names, or the sorted distinct train values;
    ([], []) for float labels (regression)."""
    feature = train.features[label_field]
    kind = _label_kind(feature)
    if kind == "float" and not declared:
        return [], []
    if kind == "classlabel":
        return list(feature.names), list(range(len(feature.names)))
    if declared:
        names = [str(n) for n in declared]
        return names, names
    values = list(train[label_field])
    missing = next((i for i, v in enumerate(values) if v is None), None)
    if missing is not None:
        raise DataSourceError(f"{where}: label field {label_field!r} is empty (null) in row {missing + 1}")
    distinct = sorted(set(values))
    if len(distinct) < 2:
        raise DataSourceError(f"{where}: label field {label_field!r} holds one value only ({distinct[0]!r}); a classifier needs 2 or more")
    return [_value_key(v) for v in distinct], distinct


def encode_labels(ds: datasets.Dataset, label_field: str, names: list[str], values: list, where: str) -> list:
    """Class ids (names non-empty) or float scores of `ds`'s label column; a value outside the names, or a
    missing one, names the row."""
    feature = ds.features[label_field]
    raw = list(ds[label_field])
    if not names:  # regression
        if _label_kind(feature) not in ("float", "values") or any(isinstance(v, str) for v in raw[:1]):
            raise DataSourceError(f"{where}: label field {label_field!r} must hold numbers for this regression task, got {feature}")
        bad = next((i for i, v in enumerate(raw) if v is None or not np.isfinite(float(v))), None)
        if bad is not None:
            raise DataSourceError(f"{where}: label {raw[bad]!r} in row {bad + 1} is not a finite number")
        return [float(v) for v in raw]
    if isinstance(feature, datasets.ClassLabel):
        if list(feature.names) != list(names):
            raise DataSourceError(f"{where}: label names {feature.names} differ from the task's {names}")
        return [int(v) for v in raw]
    index = {_value_key(v): i for i, v in enumerate(values)}
    by_name = {n: i for i, n in enumerate(names)}
    ids = []
    for row, v in enumerate(raw):
        key = _value_key(v)
        if key in index:
            ids.append(index[key])
        elif key in by_name:
            ids.append(by_name[key])
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= int(v) < len(names):
            ids.append(int(v))  # declared names, integer labels: the index
        else:
            raise DataSourceError(
                f"{where}: label {v!r} in row {row + 1} is not one of the task's labels ({', '.join(names)})"
            )
    return ids


def normalise(ds: datasets.Dataset, task: GlueTask, label_field: str, values: list, where: str) -> datasets.Dataset:
    """`ds` checked and reduced to the task's text fields + `label` (hub-like schema)."""
    if len(ds) == 0:
        raise DataSourceError(f"{where} has no rows")
    _check_columns(ds, [*task.text_fields, label_field], where)
    _check_texts(ds, task.text_fields, where)
    labels = encode_labels(ds, label_field, list(task.label_names), values, where)
    label_feature = datasets.Value("float32") if task.is_regression else datasets.ClassLabel(names=list(task.label_names))
    features = datasets.Features({**{f: datasets.Value("string") for f in task.text_fields}, LABEL: label_feature})
    columns = {f: list(ds[f]) for f in task.text_fields}
    columns[LABEL] = labels
    return datasets.Dataset.from_dict(columns, features=features)


def load_own_data(
    name: str,
    train_file: str | None = None,
    validation_file: str | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    text_fields=None,
    label_field: str | None = None,
    label_names=None,
    task: GlueTask | None = None,
    label_values: list | None = None,
) -> OwnData:
    """Load and check a data set; define its task (or, with `task` and `label_values` from a run, apply that
    run's task to it: the same fields and label mapping). `train_file=None` with a `validation_file` loads the
    validation rows only (evaluating a run on new data)."""
    label_field = label_field or LABEL
    if dataset_name:
        train, validation, evaluation = load_named(dataset_name, dataset_config)
        where_train, where_val = f"{dataset_name} train", f"{dataset_name} {evaluation}"
        source = {"kind": "dataset", "dataset_name": dataset_name, "dataset_config": dataset_config,
                  "validation_split": evaluation}
        note = f"data set {dataset_name}{'/' + dataset_config if dataset_config else ''}: train, evaluation: {evaluation}"
    else:
        if not validation_file:
            raise DataSourceError("a validation file is needed beside the train file (--validation-file F)")
        validation = load_file(validation_file, "validation")
        train = load_file(train_file, "train") if train_file else None
        where_train, where_val = f"train file {train_file}", f"validation file {validation_file}"
        files = {k: str(Path(p).expanduser().resolve()) for k, p in (("train", train_file), ("validation", validation_file)) if p}
        source = {"kind": "files", **{f"{k}_file": p for k, p in files.items()},
                  "sha256": {k: file_sha256(p) for k, p in files.items()}}
        note = "train: " + (Path(train_file).name if train_file else "-") + f"; evaluation: {Path(validation_file).name}"
    if task is None:
        if train is None:
            raise DataSourceError("a train file is needed to define the task (--train-file F)")
        _check_columns(train, [label_field], where_train)
        fields = pick_text_fields(train.column_names, text_fields, label_field)
        names, values = define_labels(train, label_field, label_names, where_train)
        try:
            task = custom_task(name, fields, names)
        except ValueError as err:
            raise DataSourceError(str(err)) from err
    else:
        values = list(label_values if label_values is not None else task.label_names)
    train_rows = None if train is None else normalise(train, task, label_field, values, where_train)
    validation_rows = normalise(validation, task, label_field, values, where_val)
    source.update(text_fields=list(task.text_fields), label_field=label_field,
                  label_values=[v if isinstance(v, (str, int, bool)) else int(v) for v in values])
    return OwnData(task, train_rows, validation_rows, source, note)
