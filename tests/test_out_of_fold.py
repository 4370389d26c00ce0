"""Out-of-fold exit logits (glue_eval.out_of_fold): a tiny run's training rows, each answered by a fold model that
never trained on it, cached as split "oof" and recorded beside the run's own splits."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from glue_eval import out_of_fold, training
from glue_eval.out_of_fold import OOF_SPLIT, fold_of_rows, train_out_of_fold
from glue_eval.train_config import TrainingError
from glue_eval.training import RunDataMismatch, TrainConfig, train_run
from tests.toy_task import write_tiny_encoder, write_toy_glue
from tiers import cached_splits, read_cached_split, read_run_info

FOLDS = 2


@pytest.fixture(scope="module")
def oof_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("oof")
    data_dir = write_toy_glue(root / "glue", n_train=200, n_validation=60)
    encoder = write_tiny_encoder(root / "encoder", num_layers=4)
    config = TrainConfig(
        task="sst2", model=str(encoder), output_dir=str(root / "run"), epochs=2, batch_size=16,
        learning_rate=2e-3, max_length=32, data_dir=str(data_dir), source="local", device="cpu",
    )
    run = train_run(config)
    before = {s: read_cached_split(run, s) for s in ("calibration", "validation")}
    trained_on: list[set] = []
    answered: list[set] = []
    real_train, real_collect = out_of_fold.train_early_exit, out_of_fold.collect_logits

    def recording_train(model, encoded, *args, **kwargs):
        trained_on.append({tuple(ids) for ids in encoded.input_ids})
        return real_train(model, encoded, *args, **kwargs)

    def recording_collect(model, encoded, *args, **kwargs):
        answered.append({tuple(ids) for ids in encoded.input_ids})
        return real_collect(model, encoded, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(out_of_fold, "train_early_exit", recording_train)
    mp.setattr(out_of_fold, "collect_logits", recording_collect)
    try:
        record = train_out_of_fold(run, folds=FOLDS, device="cpu")
    finally:
        mp.undo()
    return {"run": run, "record": record, "before": before, "trained_on": trained_on, "answered": answered,
            "config": config}


def test_folds_are_balanced_and_seeded():
    fold = fold_of_rows(11, 3, seed=4)
    assert sorted(np.bincount(fold).tolist()) == [3, 4, 4]
    np.testing.assert_array_equal(fold, fold_of_rows(11, 3, seed=4))
    assert not np.array_equal(fold, fold_of_rows(11, 3, seed=5))
    with pytest.raises(TrainingError, match="at least 2"):
        fold_of_rows(10, 1, seed=0)
    with pytest.raises(TrainingError, match="fewer than"):
        fold_of_rows(2, 3, seed=0)


def test_every_row_answered_by_a_model_that_never_saw_it(oof_run):
    assert len(oof_run["trained_on"]) == FOLDS == len(oof_run["answered"])
    for seen, answered in zip(oof_run["trained_on"], oof_run["answered"]):
        assert answered and not (seen & answered)
    assert not (oof_run["answered"][0] & oof_run["answered"][1])  # the folds partition the rows


def test_oof_split_holds_the_training_rows_in_order(oof_run):
    run = oof_run["run"]
    assert OOF_SPLIT in cached_splits(run)
    oof = read_cached_split(run, OOF_SPLIT)
    info = read_run_info(run)
    rows = training.prepare_run_data(oof_run["config"]).splits["train"]
    np.testing.assert_array_equal(oof.labels, np.asarray(rows["label"]))
    assert oof.logits.shape == (info.training["n_train"], 4, 2) and np.isfinite(oof.logits).all()
    assert oof.embedding is not None and oof.embedding.shape[0] == len(oof.labels)
    assert info.data["splits"][OOF_SPLIT]["n"] == len(oof.labels) and info.data["splits"][OOF_SPLIT]["folds"] == FOLDS
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"calibration", "validation", OOF_SPLIT} <= set(metrics["splits"])
    assert metrics["training"]["steps"] == info.training["steps"]  # the run's own training record is kept
    # unseen rows: out-of-fold accuracy at the final exit is a held-out figure, not the 100% of memorised rows
    accuracy = metrics["splits"][OOF_SPLIT]["per_exit"][-1]["accuracy"]
    assert accuracy == pytest.approx(float((oof.logits[:, -1].argmax(1) == oof.labels).mean()))


def test_the_run_s_own_splits_are_untouched(oof_run):
    for split, before in oof_run["before"].items():
        after = read_cached_split(oof_run["run"], split)
        np.testing.assert_array_equal(after.logits, before.logits)
        np.testing.assert_array_equal(after.labels, before.labels)


def test_other_rows_are_refused_before_any_training(oof_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(oof_run["run"], copy)
    labels_path = copy / "logits" / "calibration.labels.npy"
    np.save(labels_path, 1 - np.load(labels_path))
    oof_path = copy / "logits" / f"{OOF_SPLIT}.npy"
    stamp = oof_path.stat().st_mtime_ns
    with pytest.raises(RunDataMismatch, match="calibration rows"):
        train_out_of_fold(copy, folds=FOLDS, device="cpu")
    assert oof_path.stat().st_mtime_ns == stamp
