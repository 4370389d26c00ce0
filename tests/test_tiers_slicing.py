"""The sliced three-tier pipeline gives the one-pass model's exit logits (the framework's invariant)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_batch, tiny_bert_config, tiny_roberta_config
from tiers import (
    EarlyExitModel,
    ExitConfig,
    TierPlan,
    TierPlanError,
    decode_handoff,
    encode_handoff,
    load_tier_part,
    run_three_tiers,
    slice_model,
)

TOL = 1e-5
# fp16 handoff on the real encoder: max |logit diff| vs one fp32 pass measured 3.1e-5, 6.3e-5, 4.0e-5 for the three
# plans below (MiniLM-L6, 4 texts); the bound is about 5x the largest. It must also be > 0: fp16 really was sent.
FP16_TOL = 3e-4


def _model(config, num_labels=3, pooling="mean"):
    torch.manual_seed(0)
    return EarlyExitModel.from_config(config, ExitConfig(num_labels=num_labels, pooling=pooling)).eval()


def _chain_through_codec(parts, ids, mask, encoding="fp32"):
    """Mobile -> bytes -> edge -> bytes -> cloud, as the services do."""
    mobile = parts["mobile"].run_from_ids(ids, mask)
    hidden_size = parts["edge"].hidden_size
    to_edge = decode_handoff(encode_handoff(mobile.hidden, mask, parts["edge"].first_layer, encoding), hidden_size)
    edge = parts["edge"].run_hidden(to_edge.hidden, to_edge.attention_mask)
    to_cloud = decode_handoff(encode_handoff(edge.hidden, edge.attention_mask, parts["cloud"].first_layer, encoding), hidden_size)
    cloud = parts["cloud"].run_hidden(to_cloud.hidden, to_cloud.attention_mask)
    return torch.cat([mobile.exit_logits, edge.exit_logits, cloud.exit_logits], dim=1)


@pytest.mark.parametrize("config_fn", [tiny_bert_config, tiny_roberta_config], ids=["bert", "roberta"])
@pytest.mark.parametrize("plan_spec", [(1, 2), (1, 3), (2, 3), (3, 4), (1, 4)])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_sliced_equals_one_pass_random_configs(config_fn, plan_spec, pooling):
    model = _model(config_fn(num_layers=4), pooling=pooling)
    ids, mask = random_batch(batch=5, seq=12, vocab=100, seed=sum(plan_spec))
    with torch.no_grad():
        reference = model(ids, mask)
        parts = slice_model(model, TierPlan(*plan_spec, 4))
        in_process = run_three_tiers(parts, ids, mask)
        over_bytes = _chain_through_codec(parts, ids, mask)
    assert reference.shape == (5, 4, 3)
    assert (in_process - reference).abs().max().item() <= TOL
    assert (over_bytes - reference).abs().max().item() <= TOL


def test_batch_of_one_matches_padded_batch():
    model = _model(tiny_bert_config())
    ids, mask = random_batch(batch=4, seq=10, vocab=100, seed=3)
    with torch.no_grad():
        batched = model(ids, mask)
        for row in range(4):
            n = int(mask[row].sum())
            single = model(ids[row : row + 1, :n], mask[row : row + 1, :n])
            assert (single - batched[row : row + 1]).abs().max().item() <= TOL


def test_save_and_load_single_tier_reads_only_its_weights(tmp_path):
    model = _model(tiny_bert_config(num_layers=6), num_labels=2)
    model.save_pretrained(tmp_path)
    plan = TierPlan(2, 4, 6)
    reloaded = EarlyExitModel.from_pretrained(tmp_path)
    ids, mask = random_batch(batch=3, seq=9, vocab=100)
    parts = {tier: load_tier_part(tmp_path, plan, tier) for tier in ("mobile", "edge", "cloud")}
    # default deployment: edge holds 1..4 and cloud 1..6 (both accept token ids), each with the embeddings
    assert [len(parts[t].layers) for t in ("mobile", "edge", "cloud")] == [2, 4, 6]
    assert all(parts[t].embeddings is not None for t in parts)
    chain_only = TierPlan(2, 4, 6, edge_accepts=(2,), cloud_accepts=(4,))
    lean = {tier: load_tier_part(tmp_path, chain_only, tier) for tier in ("mobile", "edge", "cloud")}
    assert lean["edge"].embeddings is None and len(lean["edge"].layers) == 2
    n_params = {tier: sum(p.numel() for p in part.parameters()) for tier, part in lean.items()}
    assert n_params["mobile"] > n_params["edge"] == n_params["cloud"]
    with torch.no_grad():
        reference = model(ids, mask)
        assert (reloaded(ids, mask) - reference).abs().max().item() <= TOL
        assert (run_three_tiers(parts, ids, mask) - reference).abs().max().item() <= TOL
        assert (run_three_tiers(lean, ids, mask) - reference).abs().max().item() <= TOL


@pytest.mark.parametrize("spec", [(0, 2), (2, 2), (3, 2), (2, 7)])
def test_bad_plans_are_refused_with_a_clear_message(spec):
    with pytest.raises(TierPlanError, match="does not fit"):
        TierPlan(spec[0], spec[1], 6)


def test_plan_for_another_depth_is_refused():
    model = _model(tiny_bert_config(num_layers=4))
    with pytest.raises(TierPlanError, match="made for 6 layers"):
        slice_model(model, TierPlan(2, 4, 6))


def test_regression_head_has_one_output():
    model = _model(tiny_bert_config(), num_labels=1)
    ids, mask = random_batch(batch=2, seq=6, vocab=100)
    assert model(ids, mask).shape == (2, 4, 1)


@pytest.mark.real_encoder
def test_sliced_equals_one_pass_on_the_real_encoder(offline_encoder_path, tmp_path):
    """The invariant on the pretrained MiniLM-L6: fp32 within 1e-5, through the byte codec, from disk."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(offline_encoder_path)
    torch.manual_seed(0)
    model = EarlyExitModel.from_encoder(offline_encoder_path, num_labels=2).eval()
    model.save_pretrained(tmp_path, tokenizer=tokenizer)
    texts = [
        "a gripping, beautifully shot film.",
        "the plot never comes together and the jokes fall flat, which is a pity given the cast",
        "ok",
        "It is neither the best nor the worst thing I have seen this year, but it is close to the worst.",
    ]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        for plan in (TierPlan(2, 4, 6), TierPlan(1, 5, 6), TierPlan(3, 6, 6)):
            parts = {tier: load_tier_part(tmp_path, plan, tier) for tier in ("mobile", "edge", "cloud")}
            chained = _chain_through_codec(parts, batch["input_ids"], batch["attention_mask"])
            assert (chained - reference).abs().max().item() <= TOL
            half = _chain_through_codec(parts, batch["input_ids"], batch["attention_mask"], encoding="fp16")
            assert 0 < (half - reference).abs().max().item() <= FP16_TOL  # fp16 handoff: small, bounded loss
