"""The training settings (``TrainConfig``) and their checks, apart from the training code: the command line
builds its parser from these defaults without importing torch or transformers."""

from __future__ import annotations

from dataclasses import dataclass, field

from tiers import CostModel
from tiers.encoders import OFFLINE_ENCODER

from .tasks import TASKS, GlueTask, UnknownTaskError, get_task

LOSS_WEIGHTINGS = ("weighted", "uniform")


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
    # your own data (glue_eval.owndata): local files or a named HF data set; `task` then only names it
    train_file: str | None = None
    validation_file: str | None = None
    dataset_name: str | None = None
    dataset_config: str | None = None
    text_fields: list[str] | None = None
    label_field: str | None = None
    label_names: list[str] | None = None

    @property
    def own_data(self) -> bool:
        """True when the rows come from files or a named data set rather than the GLUE registry."""
        return bool(self.train_file or self.validation_file or self.dataset_name)

    def validate(self) -> None:
        if isinstance(self.task, GlueTask):  # a hand-made task: its fields and label names, with its data
            self._adopt_task(self.task)
        if isinstance(self.text_fields, str):
            self.text_fields = [f.strip() for f in self.text_fields.split(",") if f.strip()]
        if isinstance(self.label_names, str):
            self.label_names = [n.strip() for n in self.label_names.split(",") if n.strip()]
        if self.own_data:
            if not str(self.task).strip():
                raise TrainingError("a task name is needed for your own data (--task NAME)")
            if self.dataset_name and (self.train_file or self.validation_file):
                raise TrainingError("give either --dataset-name or --train-file/--validation-file, not both")
            if not self.dataset_name and not (self.train_file and self.validation_file):
                raise TrainingError("your own data needs both --train-file F and --validation-file F (or --dataset-name)")
        else:
            try:
                get_task(self.task)
            except UnknownTaskError as err:
                raise TrainingError(
                    f"{err}; for your own data pass --train-file F --validation-file F (CSV, JSON lines or Parquet) "
                    "or --dataset-name NAME, with --text-fields a[,b] and --label-field y"
                ) from None
            extra = [n for n, v in (("--text-fields", self.text_fields), ("--label-field", self.label_field),
                                    ("--label-names", self.label_names), ("--dataset-config", self.dataset_config)) if v]
            if extra:
                raise TrainingError(f"{', '.join(extra)} apply to your own data (--train-file/--dataset-name), not to GLUE {self.task}")
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

    def _adopt_task(self, task: GlueTask) -> None:
        if TASKS.get(task.name) == task and not self.own_data:
            self.task = task.name
            return
        if not self.own_data:
            raise TrainingError(
                f"task {task.name!r} is not a GLUE task: give its data (train_file and validation_file, or dataset_name)"
            )
        self.task = task.name
        self.text_fields = self.text_fields or list(task.text_fields)
        self.label_names = self.label_names or (list(task.label_names) or None)
