"""Training and logit caching for real (glue_eval.training): a tiny random-init encoder learns a separable toy
task through `train_run`, and the cached per-exit logits equal a fresh forward pass of the saved checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from glue_eval import training
from glue_eval.training import TrainConfig, evaluate_run, train_run
from tests.toy_task import write_tiny_encoder, write_toy_glue, toy_sentences
from tiers import EarlyExitModel, read_cached_split, read_run_info

NUM_LAYERS = 4
# the cache (length-sorted batches of 64) and one padded batch of all 120 rows gave bit-identical float32 logits
# here (measured max |diff| 0.0); 1e-6 leaves room for float32 summation-order noise on logits of size ~5
CACHE_ATOL = 1e-6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    data_dir = write_toy_glue(root / "glue", n_train=400, n_validation=120)
    encoder = write_tiny_encoder(root / "encoder", num_layers=NUM_LAYERS)
    losses: list[float] = []
    real_loss = training.joint_exit_loss

    def recording_loss(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        losses.append(float(loss.detach()))
        return loss

    config = TrainConfig(
        task="sst2", model=str(encoder), output_dir=str(root / "run"), epochs=3, batch_size=16,
        learning_rate=2e-3, max_length=32, data_dir=str(data_dir), source="local", device="cpu",
    )
    mp = pytest.MonkeyPatch()
    mp.setattr(training, "joint_exit_loss", recording_loss)
    try:
        run = train_run(config)
    finally:
        mp.undo()
    return {"run": run, "losses": losses, "config": config, "data_dir": data_dir}


def test_loss_falls(trained):
    losses = trained["losses"]
    assert len(losses) == 69  # 360 training rows (40 held out for calibration): ceil(3 * 360 / 16) steps
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert first == pytest.approx(np.log(2), abs=0.1)  # random init on two balanced classes: about ln 2
    assert last < 0.25 * first


def test_final_exit_learns_the_task(trained):
    run = trained["run"]
    cached = read_cached_split(run, "validation")
    expected = np.array([row["label"] for row in toy_sentences(120, seed=2)])
    np.testing.assert_array_equal(cached.labels, expected)  # the file's order, every row
    final_accuracy = float((cached.logits[:, -1].argmax(axis=1) == expected).mean())
    assert final_accuracy >= 0.9
    metrics = json.loads((run / "metrics.json").read_text())
    per_exit = metrics["splits"]["validation"]["per_exit"]
    assert [row["exit"] for row in per_exit] == list(range(1, NUM_LAYERS + 1))
    assert per_exit[-1]["accuracy"] == pytest.approx(final_accuracy)
    info = read_run_info(run)
    assert info.task == "sst2" and info.plan.num_layers == NUM_LAYERS and info.training["n_train"] == 360


def _fresh_forward(run, texts):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "encoder")
    model = EarlyExitModel.from_pretrained(run).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()
    return logits, batch["attention_mask"].sum(dim=1).numpy()


def test_cached_logits_equal_a_fresh_forward_pass(trained):
    run = trained["run"]
    cached = read_cached_split(run, "validation")
    texts = [row["sentence"] for row in toy_sentences(120, seed=2)]
    fresh, lengths = _fresh_forward(run, texts)  # one padded batch, file order (the cache: length-sorted batches)
    assert cached.logits.shape == fresh.shape == (120, NUM_LAYERS, 2)
    assert np.abs(cached.logits - fresh).max() <= CACHE_ATOL
    np.testing.assert_array_equal(cached.token_counts, lengths)


def test_evaluate_run_recaches_the_same_logits(trained):
    run = trained["run"]
    before = {split: read_cached_split(run, split) for split in ("calibration", "validation")}
    evaluate_run(run, data_dir=str(trained["data_dir"]), source="local", device="cpu")
    for split, old in before.items():
        new = read_cached_split(run, split)
        np.testing.assert_array_equal(new.labels, old.labels)
        assert np.abs(new.logits - old.logits).max() <= CACHE_ATOL
