"""Expert exits: storage in the run folder, the switch in the tier pipeline, head training on cached states,
the distortion detector on a tiny synthetic case, and the errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from clustering.detector import DetectorError, DistortionDetector, text_feature_names
from glue_eval.distortion import distort_texts
from glue_eval.experts import (
    ExpertConfig,
    ExpertSetupError,
    TextSplit,
    expert_logits,
    forward_states,
    switched_logits,
    train_expert_head,
)
from tests.conftest import random_batch
from tests.factories import WORDS, add_perturbed_experts, tiny_run_folder, tiny_tokenizer
from tiers import EarlyExitModel, load_tier_part, read_run_info, run_three_tiers
from tiers.experts import (
    CLEAN,
    ExpertError,
    ExpertInfo,
    has_experts,
    load_experts,
    part_with_experts,
    run_mobile,
    run_part,
    with_experts,
)

TOL = 1e-5
TYPES = ["keyboard", "word_dropout"]


@pytest.fixture(scope="module")
def run_with_experts(tmp_path_factory):
    """A tiny 6-layer run (plan 2,4) with expert heads on exits 1..4 that differ from the standard ones."""
    folder = tiny_run_folder(tmp_path_factory.mktemp("run"))
    return folder, add_perturbed_experts(folder, TYPES, [1, 2, 3, 4])


def _parts(folder):
    plan = read_run_info(folder).plan
    return {tier: load_tier_part(folder, plan, tier) for tier in ("mobile", "edge", "cloud")}


def _layer_states(model, ids, mask):
    """Hidden state after every layer of the one-pass model."""
    from tiers.model import attention_bias, encoder_layers

    hidden = model.embed(ids, None)
    bias = attention_bias(model.config, hidden, mask)
    states = []
    for layer in encoder_layers(model.encoder):
        hidden = layer(hidden, bias)
        states.append(hidden)
    return states


# ---- storage ----------------------------------------------------------------------------------------------
def test_experts_round_trip_and_tiers_load_only_their_exits(run_with_experts):
    folder, experts = run_with_experts
    assert has_experts(folder)
    meta = json.loads((folder / "experts" / "experts.json").read_text())
    assert meta["types"] == TYPES and meta["exits"] == [1, 2, 3, 4] and meta["train_severity"] == [0.05, 0.5]
    loaded = load_experts(folder)
    for a, b in zip(loaded.state_dict().values(), experts.state_dict().values()):
        assert torch.equal(a, b)
    edge = load_experts(folder, exits=[3, 4])
    assert edge.exits == [3, 4] and set(edge.heads["keyboard"].keys()) == {"3", "4"}
    cloud = load_experts(folder, exits=[5, 6])
    assert cloud.exits == [] and cloud.types == TYPES
    only = load_experts(folder, types=["keyboard"])
    assert only.types == ["keyboard"]


def test_no_experts_and_unknown_types_are_clear_errors(tmp_path, run_with_experts):
    bare = tiny_run_folder(tmp_path / "bare")
    with pytest.raises(ExpertError, match="has no expert exits.*dimee experts train"):
        load_experts(bare)
    folder, experts = run_with_experts
    with pytest.raises(ExpertError, match=r"no expert exits for distortion\(s\) \['blur'\]"):
        load_experts(folder, types=["blur"])
    parts = _parts(folder)
    with pytest.raises(ExpertError, match="no expert exits for distortion 'blur'; this run has: keyboard, word_dropout"):
        with_experts(parts, experts, "blur")
    with pytest.raises(ExpertError, match="no experts are loaded"):
        with_experts(parts, None, "keyboard")
    with pytest.raises(ExpertError, match="cannot be an expert type"):
        ExpertInfo(["clean"], [1])
    assert with_experts(parts, None, None)["mobile"] is parts["mobile"]  # experts off needs no experts


# ---- the switch in the tier pipeline ----------------------------------------------------------------------
def test_expert_switch_in_three_tier_pipeline(run_with_experts):
    folder, _ = run_with_experts
    parts = _parts(folder)
    model = EarlyExitModel.from_pretrained(folder)
    ids, mask = random_batch(batch=4, seq=9, vocab=40, seed=2)
    with torch.no_grad():
        standard = run_three_tiers(parts, ids, mask)
        assert (standard - model(ids, mask)).abs().max() <= TOL
        # off: None and "clean" give the standard logits exactly
        for off in (None, CLEAN):
            assert torch.equal(run_three_tiers(with_experts(parts, load_experts(folder), off), ids, mask), standard)
        states = _layer_states(model, ids, mask)
        for name in TYPES:
            # each tier loads only its own experts, as a tier service would
            switched = {
                tier: part_with_experts(part, load_experts(folder, exits=range(part.first_layer, part.last_layer + 1)), name)
                for tier, part in parts.items()
            }
            out = run_three_tiers(switched, ids, mask)
            experts = load_experts(folder)
            for i in (1, 2, 3, 4):  # mobile and edge exits: the expert heads' output
                expected = experts.head(name, i)(states[i - 1], mask)
                assert (out[:, i - 1] - expected).abs().max() <= TOL
                assert (out[:, i - 1] - standard[:, i - 1]).abs().max() > 1e-3
            assert torch.equal(out[:, 4:], standard[:, 4:])  # cloud keeps its heads
            # the switch changes only the heads: the hidden state handed on is the same
            mob_std = parts["mobile"].run_from_ids(ids, mask)
            mob_exp = switched["mobile"].run_from_ids(ids, mask)
            assert torch.equal(mob_std.hidden, mob_exp.hidden)


def test_per_sample_types_in_one_batch(run_with_experts):
    folder, experts = run_with_experts
    parts = _parts(folder)
    ids, mask = random_batch(batch=5, seq=8, vocab=40, seed=4)
    kinds = ["keyboard", None, "word_dropout", "clean", "keyboard"]
    with torch.no_grad():
        mobile = run_mobile(parts["mobile"], ids, mask, None, experts, kinds)
        edge = run_part(parts["edge"], mobile.hidden, mask, experts, kinds)
        cloud = run_part(parts["cloud"], edge.hidden, mask, experts, kinds)
        mixed = torch.cat([mobile.exit_logits, edge.exit_logits, cloud.exit_logits], dim=1)
        for b, kind in enumerate(kinds):
            alone = run_three_tiers(with_experts(parts, experts, kind), ids[b : b + 1], mask[b : b + 1])
            assert (mixed[b : b + 1] - alone).abs().max() <= TOL
        with pytest.raises(ExpertError, match="5 samples but 2 distortion types"):
            run_part(parts["edge"], mobile.hidden, mask, experts, ["keyboard", None])


# ---- cached states and head training ----------------------------------------------------------------------
def test_cached_pooled_states_give_the_pipeline_logits(run_with_experts):
    folder, experts = run_with_experts
    model = EarlyExitModel.from_pretrained(folder)
    tokenizer = tiny_tokenizer()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(11)]
    split = TextSplit(texts, None, np.arange(11) % 2)
    st = forward_states(model, tokenizer, split, 64, [1, 2, 3, 4], full=True, batch_size=4)
    parts = _parts(folder)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = run_three_tiers(parts, enc["input_ids"], enc["attention_mask"]).numpy()
        assert np.abs(st.logits - reference).max() <= TOL
        switched = run_three_tiers(with_experts(parts, experts, "keyboard"), enc["input_ids"], enc["attention_mask"]).numpy()
    assert np.abs(expert_logits(experts, "keyboard", st.pooled) - switched[:, :4]).max() <= TOL
    per_sample = ["keyboard" if i % 3 == 0 else CLEAN for i in range(11)]
    mixed = switched_logits(st, experts, per_sample)
    rows = np.array([i % 3 == 0 for i in range(11)])
    assert np.abs(mixed[rows] - switched[rows]).max() <= TOL
    assert np.array_equal(mixed[~rows], st.logits[~rows])
    partial = forward_states(model, tokenizer, split, 64, [1, 2, 3, 4], full=False)
    assert partial.logits is None and np.abs(partial.pooled - st.pooled).max() <= TOL


def test_train_expert_head_fits_shifted_features():
    from tiers import ExitConfig, ExitHead

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, hidden = 600, 16
    labels = rng.integers(0, 2, n)
    direction = rng.normal(size=hidden)
    clean = rng.normal(size=(n, hidden)) + np.outer(2 * labels - 1, direction)
    head = ExitHead(hidden, ExitConfig(num_labels=2))
    # the standard head: trained on clean features
    train_expert_head(head, clean.astype(np.float32), labels, epochs=40, learning_rate=1e-2, seed=0)
    shifted = (clean @ np.linalg.qr(rng.normal(size=(hidden, hidden)))[0]).astype(np.float32)  # "distorted"
    with torch.no_grad():
        before = (head.classifier(torch.tanh(head.dense(torch.from_numpy(shifted)))).argmax(1).numpy() == labels).mean()
    report = train_expert_head(head, shifted, labels, epochs=40, learning_rate=1e-2, seed=0)
    with torch.no_grad():
        after = (head.classifier(torch.tanh(head.dense(torch.from_numpy(shifted)))).argmax(1).numpy() == labels).mean()
    assert report["held_out_loss"] < report["held_out_loss_start"]
    assert after > 0.9 and after > before + 0.1
    assert not head.training


def test_expert_config_errors():
    with pytest.raises(ValueError, match="unknown distortion 'blur'"):
        ExpertConfig(run_dir="x", types=("blur",)).validate()
    with pytest.raises(ValueError, match=r"severity must be a number in \[0, 1\]"):
        ExpertConfig(run_dir="x", eval_severities=(1.2,)).validate()
    with pytest.raises(ExpertSetupError, match="low <= high"):
        ExpertConfig(run_dir="x", train_severity=(0.5, 0.1)).validate()
    with pytest.raises(ExpertSetupError, match="detector features"):
        ExpertConfig(run_dir="x", detector_features="pixels").validate()


# ---- the detector -----------------------------------------------------------------------------------------
def _synthetic(n: int, seed: int):
    rng = random.Random(seed)
    vocab = ["Alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    clean = [" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 14))) + " ." for _ in range(n)]
    texts = clean + distort_texts(clean, "keyboard", 0.5, seed=seed) + distort_texts(clean, "case_punct", 1.0, seed=seed)
    labels = ["clean"] * n + ["keyboard"] * n + ["case_punct"] * n
    return texts, labels, vocab


def test_detector_names_the_distortion_on_a_tiny_synthetic_case():
    texts, labels, vocab = _synthetic(60, 0)
    detector = DistortionDetector().fit(texts, labels, lexicon=vocab)
    test_texts, test_labels, _ = _synthetic(40, 1)
    assert detector.score(test_texts, test_labels) >= 0.95
    assert set(detector.classes_) == {"clean", "keyboard", "case_punct"}
    assert detector.predict_proba(test_texts[:3]).shape == (3, 3)
    # lexicon learned from the clean texts (cross-fitted by source row) also works
    groups = list(range(60)) * 3
    assert DistortionDetector().fit(texts, labels, groups=groups).score(test_texts, test_labels) >= 0.9
    # JSON round trip, no pickle
    again = DistortionDetector.from_dict(json.loads(json.dumps(detector.to_dict())))
    assert list(again.predict(test_texts)) == list(detector.predict(test_texts))
    assert len(text_feature_names()) == detector.scaler_.mean_.shape[0]


def test_detector_with_hidden_vectors_and_pairs():
    texts, labels, vocab = _synthetic(30, 2)
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(len(texts), 4))
    pairs = list(reversed(texts))
    detector = DistortionDetector().fit(texts, labels, hidden=hidden, text_pairs=pairs, lexicon=vocab)
    assert detector.n_hidden_ == 4
    assert detector.predict(texts[:2], hidden[:2], pairs[:2]).shape == (2,)
    with pytest.raises(DetectorError, match="fitted with a hidden vector of size 4"):
        detector.predict(texts[:2], text_pairs=pairs[:2])
    with pytest.raises(DetectorError, match="hidden has 3 columns"):
        detector.predict(texts[:2], hidden[:2, :3], pairs[:2])
    only_hidden = DistortionDetector(use_text=False).fit(texts, labels, hidden=hidden)
    assert only_hidden.predict(texts[:2], hidden[:2]).shape == (2,)


def test_detector_errors():
    with pytest.raises(DetectorError, match="not fitted"):
        DistortionDetector().predict(["a b"])
    with pytest.raises(DetectorError, match="at least two classes"):
        DistortionDetector().fit(["a b", "c d"], ["clean", "clean"])
    with pytest.raises(DetectorError, match="2 texts but 1 labels"):
        DistortionDetector().fit(["a b", "c d"], ["clean"])
    with pytest.raises(DetectorError, match="no features"):
        DistortionDetector(use_text=False).fit(["a b", "c d"], ["clean", "keyboard"])
    with pytest.raises(DetectorError, match="not a saved distortion detector"):
        DistortionDetector.from_dict({"params": {}})


# ---- command line (registered by dimee.cli) ---------------------------------------------------------------
def _cli(argv):
    import argparse

    from dimee import experts_cli

    parser = argparse.ArgumentParser(prog="dimee")
    experts_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_distort_and_errors(tmp_path, capsys):
    assert _cli(["experts", "distort", "keyboard", "1.0", "hello world", "--seed", "3"]) == 0
    out = capsys.readouterr().out.strip()
    assert out != "hello world" and len(out) == len("hello world")
    with pytest.raises(ValueError, match=r"severity must be a number in \[0, 1\]"):
        _cli(["experts", "distort", "keyboard", "1.5", "hello"])
    bare = tiny_run_folder(tmp_path / "bare")
    with pytest.raises(ExpertError, match="has no expert exits"):
        _cli(["experts", "eval", str(bare)])
    with pytest.raises(ExpertError, match="has no expert exits"):
        _cli(["experts", "detect", str(bare), "some text"])


def test_equal_offload_compares_curve_envelopes():
    from glue_eval.experts import equal_offload

    def pts(mode, pairs):
        return [
            {"task": "t", "policy": "threshold", "distortion": "keyboard", "severity": 0.3, "mode": mode,
             "offload_rate": o, "accuracy": a}
            for o, a in pairs
        ]

    curves = pts("standard", [(0.0, 0.70), (0.5, 0.80), (1.0, 0.75)]) + pts("true_type", [(0.0, 0.80), (1.0, 0.80)])
    (row,) = equal_offload(curves, step=0.5)
    # envelopes on o = 0, 0.5, 1: standard 0.70, 0.80, 0.80; expert 0.80, 0.80, 0.80
    assert row["mode"] == "true_type" and abs(row["mean_gain"] - 0.1 / 3) < 1e-9
    assert abs(row["max_gain"] - 0.1) < 1e-9 and abs(row["share_ahead"] - 1 / 3) < 1e-9
