"""GLUE task registry and data loading. Offline: the hub loader is replaced by one that fails, so no test can
touch the network; local data comes from the shared copy (shared/glue, see its MANIFEST.md)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import numpy as np
import pytest

import glue_eval
from glue_eval import data as glue_data
from glue_eval import (
    TASKS,
    GlueDataError,
    GlueTask,
    UnknownTaskError,
    available_splits,
    get_task,
    load_glue_split,
    split_for_calibration,
    subset,
)

REPO_ROOT = Path(glue_eval.__file__).resolve().parent.parent
SHARED_GLUE = (REPO_ROOT / ".." / "shared" / "glue").resolve()
needs_shared = pytest.mark.skipif(not (SHARED_GLUE / "rte").is_dir(), reason="shared/glue not present")


@pytest.fixture(autouse=True)
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every hub attempt fail at once (as offline) and drop any user DIMEE_GLUE_DIR."""

    def fail(task: GlueTask, split: str) -> datasets.Dataset:
        raise ConnectionError(f"hub disabled in tests ({task.name}/{split})")

    monkeypatch.setattr(glue_data, "_load_hub", fail)
    monkeypatch.delenv(glue_data.ENV_DATA_DIR, raising=False)


# --- registry ---------------------------------------------------------------------------------------------------


def test_registry_has_the_nine_tasks_in_glue_order() -> None:
    assert list(TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]


@pytest.mark.parametrize(
    ("name", "fields", "num_labels"),
    [
        ("cola", ("sentence",), 2),
        ("sst2", ("sentence",), 2),
        ("mrpc", ("sentence1", "sentence2"), 2),
        ("qqp", ("question1", "question2"), 2),
        ("stsb", ("sentence1", "sentence2"), 1),
        ("mnli", ("premise", "hypothesis"), 3),
        ("qnli", ("question", "sentence"), 2),
        ("rte", ("sentence1", "sentence2"), 2),
        ("wnli", ("sentence1", "sentence2"), 2),
    ],
)
def test_task_fields_match_hf_glue(name: str, fields: tuple[str, ...], num_labels: int) -> None:
    t = get_task(name)
    assert t.text_fields == fields
    assert t.num_labels == num_labels
    assert t.is_regression == (name == "stsb")
    assert len(t.label_names) == (0 if t.is_regression else num_labels)
    assert t.validation_split in t.splits and t.train_split in t.splits


def test_label_names_and_validation_splits() -> None:
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("wnli").label_names == ("not_entailment", "entailment")  # wnli's order is the reverse of rte's
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("mnli").validation_split == "validation_matched"
    assert get_task("rte").validation_split == "validation"
    assert get_task("stsb").metric_names == ("pearson", "spearmanr")
    assert get_task("mrpc").metric_names == ("accuracy", "f1")


def test_get_task_normalises_and_is_frozen() -> None:
    assert get_task("SST-2") is TASKS["sst2"]
    assert get_task(" RTE ") is TASKS["rte"]
    assert get_task(TASKS["cola"]) is TASKS["cola"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASKS["cola"].num_labels = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        TASKS["foo"] = TASKS["cola"]  # type: ignore[index]


def test_unknown_task_error_lists_known_tasks() -> None:
    with pytest.raises(UnknownTaskError) as exc:
        get_task("squad")
    assert isinstance(exc.value, ValueError)
    msg = str(exc.value)
    assert "squad" in msg and all(name in msg for name in TASKS)
    with pytest.raises(UnknownTaskError):
        load_glue_split("squad", "validation", source="local")


# --- loading ----------------------------------------------------------------------------------------------------


@needs_shared
def test_default_lookup_from_repo_root_and_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO_ROOT)  # ../shared/glue relative to the working directory
    assert glue_data.default_data_dir() == SHARED_GLUE
    assert len(load_glue_split("rte", "validation")) == 277
    monkeypatch.chdir(tmp_path)  # nothing at ./../shared/glue: falls back to <repo root>/../shared/glue
    assert glue_data.default_data_dir() == SHARED_GLUE
    assert len(load_glue_split("mrpc", "validation", source="local")) == 408


@needs_shared
def test_row_counts_and_hub_schema() -> None:
    rte = load_glue_split("rte", "validation", source="local")
    assert len(rte) == 277
    assert rte.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert rte.features["label"] == datasets.ClassLabel(names=["entailment", "not_entailment"])
    assert rte.features["idx"] == datasets.Value("int32")
    assert np.bincount(rte["label"]).tolist() == [146, 131]  # MANIFEST label counts

    mrpc = load_glue_split("mrpc", "validation")
    assert len(mrpc) == 408 and np.bincount(mrpc["label"]).tolist() == [129, 279]
    assert len(load_glue_split("wnli", "validation", source="local")) == 71


@needs_shared
def test_stsb_labels_are_float32_scores() -> None:
    stsb = load_glue_split("stsb", "validation", source="local")
    assert len(stsb) == 1500
    assert stsb.features["label"] == datasets.Value("float32")
    row = stsb[5]
    assert row["label"] == pytest.approx(2.615, abs=1e-6)
    assert row["label"] == float(np.float32(2.615))  # the value HF itself returns


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_env_var_points_at_another_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rows = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "label": i % 2, "idx": i} for i in range(5)]
    _write_jsonl(tmp_path / "rte" / "validation.jsonl", rows)
    monkeypatch.setenv(glue_data.ENV_DATA_DIR, str(tmp_path))
    assert glue_data.default_data_dir() == tmp_path
    ds = load_glue_split("rte", "validation")
    assert len(ds) == 5 and ds["sentence1"] == [f"a{i}" for i in range(5)]
    assert ds["label"] == [0, 1, 0, 1, 0]
    assert available_splits("rte") == ("validation",)


@needs_shared
def test_env_var_with_shared_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(glue_data.ENV_DATA_DIR, str(SHARED_GLUE))
    monkeypatch.chdir(tmp_path)
    assert len(load_glue_split("rte", "validation", source="local")) == 277


def test_explicit_data_dir_overrides_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "a" / "cola" / "validation.jsonl", [{"sentence": "x", "label": 1, "idx": 0}])
    monkeypatch.setenv(glue_data.ENV_DATA_DIR, str(tmp_path / "elsewhere"))
    ds = load_glue_split("cola", "validation", source="local", data_dir=tmp_path / "a")
    assert ds[0] == {"sentence": "x", "label": 1, "idx": 0}


def test_missing_local_folder_gives_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dir"
    with pytest.raises(GlueDataError) as exc:
        load_glue_split("rte", "validation", source="local", data_dir=missing)
    msg = str(exc.value)
    assert "rte/validation" in msg
    assert str(missing / "rte" / "validation.jsonl") in msg
    assert "DIMEE_GLUE_DIR" in msg and "--data-dir" in msg
    assert 'load_dataset("nyu-mll/glue", "rte")' in msg


def test_auto_reports_local_and_hub_failure_together(tmp_path: Path) -> None:
    with pytest.raises(GlueDataError) as exc:
        load_glue_split("qqp", "validation", source="auto", data_dir=tmp_path)
    msg = str(exc.value)
    assert "qqp/validation" in msg and "hub disabled in tests" in msg and "DIMEE_GLUE_DIR" in msg
    assert isinstance(exc.value.__cause__, ConnectionError)


def test_bad_split_and_source() -> None:
    with pytest.raises(ValueError, match="validation_matched"):
        load_glue_split("mnli", "validation", source="local")
    with pytest.raises(ValueError, match="source"):
        load_glue_split("rte", "validation", source="disk")  # type: ignore[arg-type]


@needs_shared
def test_available_splits_reflects_the_manifest() -> None:
    assert available_splits("rte", SHARED_GLUE) == ("train", "validation")
    assert available_splits("mnli", SHARED_GLUE) == ("validation_matched",)
    assert available_splits("qnli", SHARED_GLUE) == ("validation",)
    assert available_splits("qqp", SHARED_GLUE) == ()


def test_available_splits_of_missing_folder(tmp_path: Path) -> None:
    assert available_splits("rte", tmp_path / "nothing") == ()


# --- calibration split and subsets ------------------------------------------------------------------------------


def _toy(n: int = 100) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"idx": list(range(n)), "label": [i % 2 for i in range(n)]})


def test_calibration_split_is_deterministic_disjoint_and_complete() -> None:
    ds = _toy(100)
    train_a, cal_a = split_for_calibration(ds, fraction=0.1, seed=0)
    train_b, cal_b = split_for_calibration(ds, fraction=0.1, seed=0)
    assert cal_a["idx"] == cal_b["idx"] and train_a["idx"] == train_b["idx"]
    assert len(cal_a) == 10 and len(train_a) == 90
    assert set(cal_a["idx"]).isdisjoint(train_a["idx"])
    assert sorted(list(cal_a["idx"]) + list(train_a["idx"])) == list(range(100))
    assert list(cal_a["idx"]) == sorted(cal_a["idx"])  # original order kept
    _, cal_other = split_for_calibration(ds, fraction=0.1, seed=1)
    assert cal_other["idx"] != cal_a["idx"]


def test_calibration_split_edge_cases() -> None:
    train, cal = split_for_calibration(_toy(5), fraction=0.01)
    assert len(cal) == 1 and len(train) == 4
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError):
            split_for_calibration(_toy(), fraction=bad)
    with pytest.raises(ValueError):
        split_for_calibration(_toy(1))


def test_subset() -> None:
    ds = _toy(50)
    assert subset(ds, None) is ds and subset(ds, 50) is ds and subset(ds, 500) is ds
    a, b = subset(ds, 10, seed=3), subset(ds, 10, seed=3)
    assert len(a) == 10 and a["idx"] == b["idx"] and list(a["idx"]) == sorted(a["idx"])
    assert subset(ds, 10, seed=4)["idx"] != a["idx"]
    assert len(subset(ds, 0)) == 0
    with pytest.raises(ValueError):
        subset(ds, -1)
