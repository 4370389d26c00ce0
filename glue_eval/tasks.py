"""Registry of the nine GLUE tasks, with field names and label encodings exactly as in HF `nyu-mll/glue`, and
task descriptions for any other data set (`custom_task`), which a run stores in its run.json (`run_task`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

_STANDARD_SPLITS = ("train", "validation", "test")


class UnknownTaskError(ValueError):
    """Raised by `get_task` for a name that is not one of the nine GLUE tasks."""


#: Metrics of a task that is not GLUE: accuracy and macro F1 (classification), Pearson and Spearman (regression).
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("pearson", "spearmanr")


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task.

    `num_labels` is 1 for STS-B (regression: the label is a float similarity score 0-5) and `label_names` is then
    empty. `splits` are the HF split names; `validation_split` is the one used for evaluation (MNLI:
    "validation_matched", as GLUE's dev score). `primary` names the headline metric (empty: the GLUE
    leaderboard's choice, `glue_eval.metrics.PRIMARY_METRICS`, for a GLUE name, else the first metric).
    """

    name: str
    text_fields: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    validation_split: str = "validation"
    splits: tuple[str, ...] = _STANDARD_SPLITS
    train_split: str = "train"
    primary: str = ""

    def __post_init__(self) -> None:
        if len(self.text_fields) not in (1, 2):
            raise ValueError(f"{self.name}: text_fields must hold 1 or 2 names, got {self.text_fields}")
        if self.num_labels > 1 and len(self.label_names) != self.num_labels:
            raise ValueError(f"{self.name}: {self.num_labels} labels but label_names={self.label_names}")
        if self.primary and self.primary not in self.metric_names:
            raise ValueError(f"{self.name}: primary metric {self.primary!r} is not among {self.metric_names}")
        if self.validation_split not in self.splits or self.train_split not in self.splits:
            raise ValueError(f"{self.name}: train/validation split missing from splits={self.splits}")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_pair(self) -> bool:
        """True for sentence-pair tasks (two text fields)."""
        return len(self.text_fields) == 2


_ALL = (
    GlueTask("cola", ("sentence",), 2, ("unacceptable", "acceptable"), ("matthews_correlation",)),
    GlueTask("sst2", ("sentence",), 2, ("negative", "positive"), ("accuracy",)),
    GlueTask("mrpc", ("sentence1", "sentence2"), 2, ("not_equivalent", "equivalent"), ("accuracy", "f1")),
    GlueTask("qqp", ("question1", "question2"), 2, ("not_duplicate", "duplicate"), ("accuracy", "f1")),
    GlueTask("stsb", ("sentence1", "sentence2"), 1, (), ("pearson", "spearmanr")),
    GlueTask(
        "mnli",
        ("premise", "hypothesis"),
        3,
        ("entailment", "neutral", "contradiction"),
        ("accuracy",),
        validation_split="validation_matched",
        splits=("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"),
    ),
    GlueTask("qnli", ("question", "sentence"), 2, ("entailment", "not_entailment"), ("accuracy",)),
    GlueTask("rte", ("sentence1", "sentence2"), 2, ("entailment", "not_entailment"), ("accuracy",)),
    GlueTask("wnli", ("sentence1", "sentence2"), 2, ("not_entailment", "entailment"), ("accuracy",)),
)

#: name -> task, in the GLUE benchmark's order. Read-only.
TASKS: Mapping[str, GlueTask] = MappingProxyType({t.name: t for t in _ALL})


def get_task(task: str | GlueTask) -> GlueTask:
    """Return the task named `task` (case-insensitive; "SST-2" works too). A `GlueTask` is returned unchanged."""
    if isinstance(task, GlueTask):
        return task
    key = str(task).strip().lower().replace("-", "")
    try:
        return TASKS[key]
    except KeyError:
        raise UnknownTaskError(f"unknown GLUE task {task!r}; known tasks: {', '.join(TASKS)}") from None


def custom_task(name: str, text_fields, label_names=None) -> GlueTask:
    """The description of a task that is not GLUE: 1 or 2 text fields; `label_names` (2 or more) for a
    classification task (accuracy, macro F1; headline: accuracy), None or empty for regression (one float
    output; Pearson, Spearman; headline: Pearson)."""
    names = tuple(str(n) for n in (label_names or ()))
    if names and len(names) < 2:
        raise ValueError(f"{name}: a classification task needs at least 2 labels, got {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: label names repeat: {list(names)}")
    metrics = CLASSIFICATION_METRICS if names else REGRESSION_METRICS
    return GlueTask(str(name), tuple(text_fields), len(names) or 1, names, metrics, primary=metrics[0])


def run_task(info) -> GlueTask:
    """The task of a run, from its run.json alone (a `tiers.RunInfo`; duck-typed, so `tiers` stays below).

    A run of another data set stores its whole description (text fields, label names, metrics; see
    `custom_task`) and is rebuilt from it; a GLUE run (its data kind "glue", or a run.json older than the
    stored description) is the registry's task of that name.
    """
    data = getattr(info, "data", None) or {}
    metrics = tuple(getattr(info, "metric_names", None) or ())
    if data.get("kind", "glue") == "glue" or not metrics:
        return get_task(info.task)
    labels = () if int(info.num_labels) == 1 else tuple(info.label_names)
    return GlueTask(
        str(info.task), tuple(info.text_fields), int(info.num_labels), labels, metrics,
        primary=getattr(info, "primary_metric", "") or metrics[0],
    )
