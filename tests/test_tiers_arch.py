"""Per-architecture layer adapters (tiers.arch): for BERT, RoBERTa and MPNet the sliced three tiers equal the
encoder's own one-pass forward (`encoder(...)`, MPNet's relative position bias computed inside MPNetEncoder),
in process, over the codec's bytes, from per-tier checkpoint loads and through the early-exit runner; an
architecture no adapter knows is refused in one line. The real 12-layer encoder: `real_mpnet` tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import random_batch, tiny_bert_config, tiny_mpnet_config, tiny_roberta_config
from tiers import (
    CONTINUE,
    HANDOFF_CLOUD,
    HANDOFF_EDGE,
    EarlyExitModel,
    ExitConfig,
    TierPlan,
    UnsupportedArchitectureError,
    decode_handoff,
    default_plan,
    encode_handoff,
    load_tier_part,
    run_routed,
    run_three_tiers,
    slice_model,
)
from tiers.arch import LayerAdapter, MPNetAdapter, adapter_for

TOL = 1e-5  # fp32 max |logit diff| sliced vs one pass (measured 0.0 on the tiny configs: the same kernels run)
CONFIGS = {"bert": tiny_bert_config, "roberta": tiny_roberta_config, "mpnet": tiny_mpnet_config}
PAD = {"bert": 0, "roberta": 1, "mpnet": 1}


def _model(arch: str, num_layers: int = 6, seed: int = 0) -> EarlyExitModel:
    torch.manual_seed(seed)
    model = EarlyExitModel.from_config(CONFIGS[arch](num_layers=num_layers), ExitConfig(num_labels=3)).eval()
    if arch == "mpnet":  # init std 0.02 makes the bias nearly zero: make it matter, so that a missing bias shows
        with torch.no_grad():
            model.encoder.encoder.relative_attention_bias.weight.normal_(0.0, 2.0)
    return model


def _batch(arch: str, seed: int = 0, batch: int = 6, seq: int = 14):
    ids, mask = random_batch(batch=batch, seq=seq, vocab=100, seed=seed)
    return torch.where(mask.bool(), ids, torch.full_like(ids, PAD[arch])), mask


def one_pass_logits(model: EarlyExitModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Every exit on the hidden states of the encoder's own forward pass (not the layer-by-layer runner)."""
    states = model.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    return torch.stack([head(states[i + 1], mask) for i, head in enumerate(model.exits)], dim=1)


def _through_bytes(parts, ids, mask, encoding: str = "fp32") -> torch.Tensor:
    mobile = parts["mobile"].run_from_ids(ids, mask)
    size = parts["edge"].hidden_size
    to_edge = decode_handoff(encode_handoff(mobile.hidden, mask, parts["edge"].chain_first_layer, encoding), size)
    edge = parts["edge"].run_hidden(to_edge.hidden, to_edge.attention_mask)
    to_cloud = decode_handoff(encode_handoff(edge.hidden, edge.attention_mask, parts["cloud"].chain_first_layer, encoding), size)
    cloud = parts["cloud"].run_hidden(to_cloud.hidden, to_cloud.attention_mask)
    return torch.cat([mobile.exit_logits, edge.exit_logits, cloud.exit_logits], dim=1)


@pytest.mark.parametrize("arch", ["bert", "roberta", "mpnet"])
@pytest.mark.parametrize("plan_spec", [(2, 4), (1, 5), (3, 4)])
def test_sliced_tiers_equal_the_encoders_own_forward(arch, plan_spec, tmp_path):
    model = _model(arch, seed=sum(plan_spec))
    ids, mask = _batch(arch, seed=sum(plan_spec))
    plan = TierPlan(*plan_spec, 6)
    with torch.no_grad():
        reference = one_pass_logits(model, ids, mask)
        runner = model(ids, mask)
        in_process = run_three_tiers(slice_model(model, plan), ids, mask)
        over_bytes = _through_bytes(slice_model(model, plan), ids, mask)
        model.save_pretrained(tmp_path)
        loaded = {tier: load_tier_part(tmp_path, plan, tier) for tier in ("mobile", "edge", "cloud")}
        from_disk = _through_bytes(loaded, ids, mask)
    assert reference.shape == (6, 6, 3)
    for got in (runner, in_process, over_bytes, from_disk):
        assert (got - reference).abs().max().item() <= TOL


def _mixed_decide(plan: TierPlan):
    """Answer at odd depths where the exit's logit 0 - logit 1 is above the group's median, hand off at a tier's end, answer at L: samples leave
    at many depths, so the survivors are re-padded to shorter widths (MPNet's bias recomputed for them)."""

    def decide(seen, tier, depth, features):
        out = np.full(seen.shape[0], CONTINUE, dtype=np.int64)
        if depth == 0:
            return out
        last = plan.last_exit(tier)
        if depth == last:
            out[:] = {"mobile": HANDOFF_EDGE, "edge": HANDOFF_CLOUD, "cloud": depth}[tier]
        elif depth % 2 == 1:
            margin = seen[:, -1, 0] - seen[:, -1, 1]
            out[margin > np.median(margin)] = depth
        return out

    return decide


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_early_exit_runner_from_tier_checkpoints_equals_one_pass(arch, tmp_path):
    model = _model(arch)
    ids, mask = _batch(arch, seed=3, batch=12, seq=16)
    plan = TierPlan(2, 4, 6)
    model.save_pretrained(tmp_path)
    parts = {tier: load_tier_part(tmp_path, plan, tier) for tier in ("mobile", "edge", "cloud")}
    samples = [row[: int(n)].tolist() for row, n in zip(ids, mask.sum(dim=1))]
    with torch.no_grad():
        reference = one_pass_logits(model, ids, mask).numpy()
    answers = run_routed(parts, _mixed_decide(plan), samples, pad_id=PAD[arch])
    assert len({a.exit for a in answers}) >= 3  # really mixed depths
    for i, answer in enumerate(answers):
        assert np.abs(answer.logits - reference[i, answer.exit - 1]).max() <= TOL


def test_mpnet_position_bias_is_applied_and_held_by_each_tier(tmp_path):
    model = _model("mpnet")
    ids, mask = _batch("mpnet")
    with torch.no_grad():
        final = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = model.embed(ids)
        inputs = LayerAdapter().prepare(model.config, {}, hidden, mask)  # the BERT call: no position bias
        for layer in model.encoder.encoder.layer:
            hidden = LayerAdapter().run_layer(layer, hidden, inputs)
        states, _ = model.run_layers(model.embed(ids), mask, 1, 6)
    real = mask.bool()
    assert (states[real] - final[real]).abs().max().item() <= TOL
    # without the bias the states differ (measured 0.09; random init keeps attention's share small): the test can fail
    assert (hidden[real] - final[real]).abs().max().item() > 0.02
    model.save_pretrained(tmp_path)
    cloud = load_tier_part(tmp_path, TierPlan(2, 4, 6, edge_accepts=(2,), cloud_accepts=(4,)), "cloud")
    assert cloud.embeddings is None and len(cloud.layers) == 2
    table = cloud.extras["position_bias"].relative_attention_bias.weight
    assert torch.equal(table, model.encoder.encoder.relative_attention_bias.weight)
    assert isinstance(adapter_for(model.config), MPNetAdapter) and isinstance(adapter_for(tiny_bert_config()), LayerAdapter)


def test_mpnet_engine_handoff_as_the_services_do(tmp_path):
    """services.engine.TierEngine (what each tier service runs) chains MPNet tiers over fp32 and fp16 bytes."""
    from services.engine import StateSample, TierEngine, TokenSample, pad_hidden

    model = _model("mpnet")
    model.save_pretrained(tmp_path)
    plan = TierPlan(2, 4, 6)
    ids, mask = _batch("mpnet", seed=5)
    with torch.no_grad():
        reference = one_pass_logits(model, ids, mask).numpy()
    engines = {tier: TierEngine.load(tmp_path, plan, tier, pad_id=1) for tier in ("mobile", "edge", "cloud")}
    # fp16 bytes: max |logit diff| measured 9.2e-5 here; the bound is about 5x that
    for encoding, tol in (("fp32", TOL), ("fp16", 5e-4)):
        samples = [TokenSample(tuple(row[: int(n)].tolist())) for row, n in zip(ids, mask.sum(dim=1))]
        outputs = engines["mobile"].run_tokens(samples)
        logits = [[o.exit_logits] for o in outputs]
        for tier in ("edge", "cloud"):
            padded, sent_mask = pad_hidden([o.hidden for o in outputs])
            got = decode_handoff(encode_handoff(padded, sent_mask, engines[tier].part.chain_first_layer, encoding), 32)
            counts = got.attention_mask.sum(dim=1).tolist()
            outputs = engines[tier].run_states([StateSample(got.hidden[r, :c]) for r, c in enumerate(counts)])
            for row, o in zip(logits, outputs):
                row.append(o.exit_logits)
        chained = np.stack([np.concatenate(row, axis=0) for row in logits])
        diff = np.abs(chained - reference).max()
        assert diff <= tol, (encoding, diff)
        if encoding == "fp16":
            assert diff > 0  # fp16 really was sent


@pytest.mark.parametrize(
    "config_fn",
    [
        lambda: __import__("transformers").DebertaV2Config(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        ),
        lambda: __import__("transformers").DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64),
    ],
    ids=["deberta-v2", "distilbert"],
)
def test_unknown_architecture_is_one_clear_error(config_fn):
    config = config_fn()
    with pytest.raises(UnsupportedArchitectureError) as err:
        EarlyExitModel.from_config(config, ExitConfig(num_labels=2))
    message = str(err.value)
    assert config.model_type in message and "mpnet" in message and "roberta" in message and "tiers/arch.py" in message
    assert "\n" not in message


def test_checkpoint_of_unknown_architecture_is_refused_before_loading(tmp_path):
    model = _model("bert")
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "model_type": "deberta-v2", "architectures": ["DebertaV2Model"]}))
    with pytest.raises(UnsupportedArchitectureError, match="deberta-v2"):
        load_tier_part(tmp_path, TierPlan(2, 4, 6), "edge")
    with pytest.raises(UnsupportedArchitectureError, match="deberta-v2"):
        EarlyExitModel.from_encoder(tmp_path / "encoder", num_labels=2)


def test_default_plan_of_twelve_layers_is_thirds():
    plan = default_plan(12)
    assert [plan.layer_range(t) for t in ("mobile", "edge", "cloud")] == [(1, 4), (5, 8), (9, 12)]


# ---- the real 12-layer encoder (scripts/setup_mpnet.sh) -------------------------------------------------------
REAL_TEXTS = [
    "A gripping, beautifully acted film.",
    "The plot was dull and the ending made no sense at all, which is a pity given the cast.",
    "Fine.",
    "It rains in Paris in November, they said, and it did.",
]


@pytest.mark.real_mpnet
def test_sliced_equals_one_pass_on_the_real_12_layer_encoder(mpnet_encoder_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(mpnet_encoder_path)
    torch.manual_seed(0)
    model = EarlyExitModel.from_encoder(mpnet_encoder_path, num_labels=2).eval()
    assert model.num_layers == 12 and isinstance(model.adapter, MPNetAdapter)
    batch = tokenizer(REAL_TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    plan = default_plan(12)
    with torch.no_grad():
        final = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        reference = one_pass_logits(model, ids, mask)
        parts = slice_model(model, plan)
        over_bytes = _through_bytes(parts, ids, mask)
        mobile = parts["mobile"].run_from_ids(ids, mask)
        edge = parts["edge"].run_hidden(mobile.hidden, mask)
        cloud = parts["cloud"].run_hidden(edge.hidden, mask)
    real = mask.bool()
    assert (cloud.hidden[real] - final[real]).abs().max().item() <= TOL
    assert (over_bytes - reference).abs().max().item() <= TOL
