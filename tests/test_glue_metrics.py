"""GLUE metrics on hand-computed cases, logits -> predictions, and the `evaluate` script agreeing with them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import evaluate  # a declared dependency (pyproject): its absence is a broken install, not a skip
import numpy as np
import pytest
import torch

from glue_eval import (
    TASKS,
    compute_glue_metrics,
    get_task,
    glue_metric_path,
    predictions_from_logits,
    primary_metric,
)

# Shared binary example (6 items), by hand:
#   refs  = 1 0 0 1 1 1
#   preds = 1 0 1 1 0 1
#   TP = 3 (items 0, 3, 5), TN = 1 (item 1), FP = 1 (item 2), FN = 1 (item 4)
#   accuracy  = (TP + TN) / 6 = 4/6
#   precision = 3/4, recall = 3/4  ->  F1 = 2PR / (P + R) = 0.75
#   Matthews  = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (3 - 1) / sqrt(4*4*2*2) = 2/8 = 0.25
REFS = [1, 0, 0, 1, 1, 1]
PREDS = [1, 0, 1, 1, 0, 1]


def test_mrpc_and_qqp_accuracy_and_f1() -> None:
    for task in ("mrpc", "qqp"):
        out = compute_glue_metrics(task, PREDS, REFS)
        assert list(out) == ["accuracy", "f1"]
        assert out["accuracy"] == pytest.approx(4 / 6)
        assert out["f1"] == pytest.approx(0.75)


def test_f1_is_for_positive_class_1() -> None:
    # Swapping the class ids changes F1 (positive class 1): refs' = 0 1 1 0 0 0, preds' = 0 1 0 0 1 0
    # -> TP = 1 (item 1), FP = 1 (item 4), FN = 1 (item 2) -> P = R = 1/2 -> F1 = 0.5, accuracy unchanged.
    out = compute_glue_metrics("mrpc", [1 - p for p in PREDS], [1 - r for r in REFS])
    assert out == pytest.approx({"accuracy": 4 / 6, "f1": 0.5})
    # No positive predicted or present: F1 is 0 (sklearn's zero_division=0), not an error.
    assert compute_glue_metrics("qqp", [0, 0], [0, 0]) == {"accuracy": 1.0, "f1": 0.0}


def test_cola_matthews() -> None:
    assert compute_glue_metrics("cola", PREDS, REFS) == pytest.approx({"matthews_correlation": 0.25})
    assert compute_glue_metrics("cola", REFS, REFS)["matthews_correlation"] == pytest.approx(1.0)
    flipped = [1 - r for r in REFS]
    assert compute_glue_metrics("cola", flipped, REFS)["matthews_correlation"] == pytest.approx(-1.0)
    # All one class predicted: numerator 0 -> MCC 0 (sklearn's convention, as GLUE).
    assert compute_glue_metrics("cola", [1] * 6, REFS)["matthews_correlation"] == 0.0


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte", "wnli"])
def test_accuracy_tasks(task: str) -> None:
    assert compute_glue_metrics(task, PREDS, REFS) == pytest.approx({"accuracy": 4 / 6})


def test_mnli_three_class_accuracy() -> None:
    out = compute_glue_metrics("mnli", np.array([0, 1, 2, 2, 1]), np.array([0, 1, 2, 0, 0]))
    assert out == pytest.approx({"accuracy": 3 / 5})


def test_stsb_pearson_and_spearman() -> None:
    # preds 1 2 3 4 (mean 2.5, deviations -1.5 -0.5 0.5 1.5, sum sq 5)
    # refs  1 2 3 10 (mean 4, deviations -3 -2 -1 6, sum sq 50)
    # covariance sum = 4.5 + 1 - 0.5 + 9 = 14 -> Pearson = 14 / sqrt(5 * 50) = 14 / sqrt(250)
    # both are increasing in the same order -> Spearman = 1
    out = compute_glue_metrics("stsb", [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 10.0])
    assert list(out) == ["pearson", "spearmanr"]
    assert out["pearson"] == pytest.approx(14 / math.sqrt(250))
    assert out["spearmanr"] == pytest.approx(1.0)
    # Spearman with a reversal: ranks 1 2 3 vs 1 3 2 -> d^2 = 0 + 1 + 1 -> 1 - 6*2 / (3*8) = 0.5
    out = compute_glue_metrics("stsb", [0.1, 0.2, 0.3], [1.0, 5.0, 2.0])
    assert out["spearmanr"] == pytest.approx(0.5)


def test_metric_input_validation() -> None:
    with pytest.raises(ValueError, match="predictions_from_logits"):
        compute_glue_metrics("rte", np.zeros((3, 2)), [0, 1, 0])
    with pytest.raises(ValueError, match="3 predictions but 2"):
        compute_glue_metrics("rte", [0, 1, 0], [0, 1])
    with pytest.raises(ValueError):
        compute_glue_metrics("rte", [], [])
    with pytest.raises(ValueError, match="integer"):
        compute_glue_metrics("rte", [0.5, 1.0], [0, 1])
    assert compute_glue_metrics("rte", [0.0, 1.0], [0, 1]) == {"accuracy": 1.0}  # integral floats are fine


def test_primary_metric() -> None:
    expected = {"cola": "matthews_correlation", "stsb": "pearson", "mrpc": "f1", "qqp": "f1"}
    for name, task in TASKS.items():
        assert primary_metric(name) == expected.get(name, "accuracy")
        assert primary_metric(task) in task.metric_names


def test_predictions_from_logits_classification() -> None:
    logits = np.array([[[0.1, 0.9], [2.0, -1.0]], [[0.0, 0.5], [3.0, 3.5]]])  # [2, 2, 2]
    preds = predictions_from_logits("rte", logits)
    assert preds.shape == (2, 2) and preds.dtype == np.int64
    assert preds.tolist() == [[1, 0], [1, 1]]
    assert predictions_from_logits("mnli", [[0.1, 0.2, 0.7], [5, 1, 1]]).tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        predictions_from_logits("mnli", np.zeros((4, 2)))


def test_predictions_from_logits_regression_and_torch() -> None:
    out = predictions_from_logits("stsb", np.array([[1.5], [4.25]], dtype=np.float32))
    assert out.shape == (2,) and out.tolist() == [1.5, 4.25]
    with pytest.raises(ValueError):
        predictions_from_logits("stsb", np.array([1.5, 4.25]))  # missing the trailing num_labels axis
    t = torch.tensor([[0.2, 0.8], [0.9, 0.1]], requires_grad=True)
    assert predictions_from_logits("sst2", t).tolist() == [1, 0]


# --- the evaluate script ----------------------------------------------------------------------------------------


def test_glue_metric_script_is_self_contained() -> None:
    script = Path(glue_metric_path()) / "glue_metric.py"
    assert script.is_file()  # evaluate loads <folder>/<folder name>.py
    imports = re.findall(r"^(?:from|import)\s+(\w+)", script.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert not {"glue_eval", "tiers", "clustering", "services", "dimee"} & set(imports)


def _cases(task: str) -> tuple[list, list]:
    rng = np.random.default_rng(sum(map(ord, task)))
    t = get_task(task)
    if t.is_regression:
        refs = rng.uniform(0, 5, 40)
        return (refs + rng.normal(0, 1, 40)).tolist(), refs.tolist()
    refs = rng.integers(0, t.num_labels, 40)
    preds = np.where(rng.random(40) < 0.7, refs, rng.integers(0, t.num_labels, 40))
    return preds.tolist(), refs.tolist()


@pytest.mark.parametrize("task", list(TASKS))
def test_evaluate_load_local_path_agrees(task: str) -> None:
    metric = evaluate.load(glue_metric_path(), task, keep_in_memory=True)
    preds, refs = _cases(task)
    got = metric.compute(predictions=preds, references=refs)
    want = compute_glue_metrics(task, preds, refs)
    assert list(got) == list(want)
    assert got == want  # same float64 computation: exactly equal


def test_evaluate_load_needs_a_task_config() -> None:
    with pytest.raises(ValueError, match="GLUE task"):
        evaluate.load(glue_metric_path(), keep_in_memory=True)
    with pytest.raises(ValueError, match="cola"):
        evaluate.load(glue_metric_path(), "squad", keep_in_memory=True)
