"""GLUE metric for `evaluate`: `evaluate.load("<path>/glue_eval/glue_metric", "<task>")`, offline.

Self-contained on purpose: `evaluate` copies this one file into its modules cache and imports it from there, so it
must not import the project. It computes the same numbers as `glue_eval.metrics.compute_glue_metrics`
(scikit-learn / scipy; keys as in HF's `glue` metric). Keep `import evaluate` (not `from evaluate import Metric`):
evaluate takes the first EvaluationModule subclass in this module's namespace as the metric class.
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

_METRIC_NAMES = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}

_CITATION = """@inproceedings{wang2019glue,
  title={GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={ICLR},
  year={2019}
}
"""

_DESCRIPTION = (
    "GLUE metrics: accuracy (sst2, mnli, qnli, rte, wnli), accuracy and F1 of class 1 (mrpc, qqp), "
    "Matthews correlation (cola), Pearson and Spearman correlation (stsb)."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (float scores for stsb).
    references: gold class ids (float scores for stsb).
Returns: a dict with the task's metrics (keys accuracy, f1, matthews_correlation, pearson, spearmanr).
"""


def _score(task: str, preds: np.ndarray, refs: np.ndarray) -> dict:
    out = {}
    for name in _METRIC_NAMES[task]:
        if name == "accuracy":
            out[name] = float((preds == refs).mean())
        elif name == "f1":
            out[name] = float(f1_score(refs, preds, pos_label=1, average="binary", zero_division=0.0))
        elif name == "matthews_correlation":
            out[name] = float(matthews_corrcoef(refs, preds))
        elif name == "pearson":
            out[name] = float(pearsonr(preds, refs)[0])
        elif name == "spearmanr":
            out[name] = float(spearmanr(preds, refs)[0])
    return out


class GlueMetric(evaluate.Metric):
    """config_name is the GLUE task (one of cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli)."""

    def _info(self):
        if self.config_name not in _METRIC_NAMES:
            raise ValueError(
                f"config_name must be a GLUE task, one of {', '.join(_METRIC_NAMES)}; got {self.config_name!r}"
            )
        dtype = "float64" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            # No format="numpy": datasets' numpy formatter turns float64 columns into float32, which would make
            # stsb's Pearson differ from glue_eval.metrics in the 9th digit. Python lists keep float64.
        )

    def _compute(self, predictions, references):
        dtype = np.float64 if self.config_name == "stsb" else np.int64
        return _score(self.config_name, np.asarray(predictions, dtype=dtype), np.asarray(references, dtype=dtype))
