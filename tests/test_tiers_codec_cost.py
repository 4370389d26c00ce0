"""The handoff codec (exact sizes, validation, quantisation bound) and the cost model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiers import CostModel, CostModelError, HandoffFormatError, Stop, TierPlan, decode_handoff, encode_handoff, payload_size


def _batch(seed=0, batch=3, seq=7, hidden=16):
    gen = torch.Generator().manual_seed(seed)
    hidden_states = torch.randn(batch, seq, hidden, generator=gen)
    lengths = torch.tensor([seq, 3, 5][:batch])
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    return hidden_states, mask


@pytest.mark.parametrize("encoding", ["fp32", "fp16", "int8"])
def test_round_trip_keeps_real_tokens_and_mask(encoding):
    hidden, mask = _batch()
    body = encode_handoff(hidden, mask, next_layer=3, encoding=encoding)
    assert len(body) == payload_size(mask.sum(1).numpy(), 16, encoding)
    out = decode_handoff(body, hidden_size=16, expected_next_layer=3)
    assert out.next_layer == 3 and out.encoding == encoding
    assert torch.equal(out.attention_mask, mask)
    real = mask.bool()
    err = (out.hidden[real] - hidden[real]).abs()
    if encoding == "fp32":
        assert err.max().item() == 0.0
    elif encoding == "fp16":
        assert err.max().item() <= 1e-2
    else:  # per-token symmetric int8: error at most half a quantisation step of that token
        step = hidden[real].abs().amax(dim=1, keepdim=True) / 127
        assert bool((err <= step / 2 + 1e-6).all())
    assert out.hidden[~real].abs().max().item() == 0.0


def test_header_overhead_is_small():
    counts = [20]
    floor = 20 * 384 * 4
    assert (payload_size(counts, 384) - floor) / floor < 0.02


def test_padding_never_travels():
    hidden, mask = _batch()
    unpadded = payload_size(mask.sum(1).numpy(), 16)
    assert len(encode_handoff(hidden, mask, 2)) == unpadded < hidden.numel() * 4


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:10], "shorter than"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:-1], "declares"),
        (lambda b: b + b"\0", "declares"),
        (lambda b: b[:4] + bytes([9]) + b[5:], "version"),
        (lambda b: b[:5] + bytes([7]) + b[6:], "encoding code"),
    ],
)
def test_malformed_bodies_are_refused(mutate, message):
    hidden, mask = _batch()
    body = encode_handoff(hidden, mask, 2)
    with pytest.raises(HandoffFormatError, match=message):
        decode_handoff(mutate(body), hidden_size=16)


def test_wrong_hidden_size_layer_and_lengths_are_refused():
    hidden, mask = _batch()
    body = encode_handoff(hidden, mask, 2)
    with pytest.raises(HandoffFormatError, match="hidden size"):
        decode_handoff(body, hidden_size=32)
    with pytest.raises(HandoffFormatError, match="starts at layer 4"):
        decode_handoff(body, hidden_size=16, expected_next_layer=4)
    with pytest.raises(HandoffFormatError, match="token counts"):
        decode_handoff(body, hidden_size=16, max_seq_len=4)
    with pytest.raises(HandoffFormatError, match="batch size"):
        decode_handoff(body, hidden_size=16, max_batch=2)
    with pytest.raises(HandoffFormatError, match="accepts fp32"):
        decode_handoff(encode_handoff(hidden, mask, 2, "int8"), hidden_size=16, allowed_encodings=("fp32",))


def test_non_finite_values_are_refused():
    hidden, mask = _batch()
    hidden[0, 0, 0] = float("nan")
    with pytest.raises(HandoffFormatError, match="NaN"):
        decode_handoff(encode_handoff(hidden, mask, 2), hidden_size=16)


def test_exit_costs_follow_the_plan():
    cost = CostModel(mobile_layer=1, edge_layer=0.5, cloud_layer=0.25, mobile_to_edge=2, edge_to_cloud=3, mobile_to_cloud=4)
    plan = TierPlan(2, 4, 6)
    # exits 1..6 on the linear route: 1, 2, 2+.5+2, 2+1+2, 5+.25+3, 5+.5+3
    np.testing.assert_allclose(cost.exit_costs(plan), [1, 2, 4.5, 5, 8.25, 8.5])
    assert cost.reference_cost(plan) == 4 + 6 * 0.25
    stops = [Stop("mobile", 0, 2), Stop("edge", 2, 4), Stop("cloud", 4, 5)]
    breakdown = cost.route_breakdown(plan, stops, {})
    assert breakdown["layers"] == {"mobile": 2, "edge": 2, "cloud": 1}
    assert breakdown["offload_units"] == {"mobile_edge": 2.0, "edge_cloud": 3.0}
    assert breakdown["total_units"] == pytest.approx(8.25)
    assert breakdown["normalised"] == pytest.approx(8.25 / 5.5)


def test_rate_limited_links_charge_by_payload_size():
    cost = CostModel(mobile_edge_rate_bps=8e6, mobile_cloud_rate_bps=8e6, transmit_cost_per_second=10.0)
    plan = TierPlan(2, 4, 6)
    paths = [(("mobile", 0), ("edge", 2)), (("mobile", 0), ("cloud", 0))]
    table = cost.path_costs(plan, paths, token_counts=np.array([10, 100]), hidden_size=384)
    assert table.shape == (2, 2, 6)
    # hidden states after layer 2 to edge: 24 + 4 + 100*384*4 bytes -> bytes*8 / 8e6 bit/s * 10 units/s
    hidden_bytes = 16 + 4 + 4 + 100 * 384 * 4
    token_bytes = 16 + 4 + 5 * 100
    reference = 0.50 + 6 * 0.02 + token_bytes / 1e6 * 10.0
    expected = (2 * 0.10 + 0.20 + hidden_bytes / 1e6 * 10.0 + 1 * 0.05) / reference
    assert table[1, 0, 2] == pytest.approx(expected, rel=1e-12)
    assert table[1, 1, 5] == pytest.approx(1.0, rel=1e-12)  # the reference route itself
    assert np.isnan(table[0, 0, 0])  # edge entered at 2 cannot answer at exit 1


@pytest.mark.parametrize("bad", [{"mobile_layer": -1}, {"edge_to_cloud": float("nan")}, {"mobile_to_cloud": float("inf")}])
def test_invalid_costs_are_refused(bad):
    with pytest.raises(CostModelError, match="finite number >= 0"):
        CostModel(**bad)


def test_unknown_field_is_refused():
    with pytest.raises(CostModelError, match="unknown cost model field"):
        CostModel().with_values(mobile_layers=1)
    assert CostModel().with_values(mobile_layer=0.3).mobile_layer == 0.3
    assert CostModel.from_dict(CostModel.splitee(0.4).to_dict()) == CostModel.splitee(0.4)
    # run.json files written before routes named the direct hop input_to_cloud
    assert CostModel.from_dict({"input_to_cloud": 0.7}).mobile_to_cloud == 0.7


def test_route_costs_of_many_cost_models_equal_each_model_alone_bit_for_bit():
    """path_costs_many / normalised_exit_costs_many count each field's units once per plan; the result is
    what CostModel.route_units adds up for each model, to the last bit (ties between routes stay ties)."""
    from tiers import LINEAR_FIELDS, TierPlan, enumerate_paths, normalised_exit_costs_many, path_costs_many, path_stops

    rng = np.random.default_rng(3)
    for plan in (TierPlan(2, 4, 6), TierPlan(4, 8, 12), TierPlan(1, 5, 6, edge_accepts=(1,), cloud_accepts=(0, 5))):
        models = [CostModel(**dict(zip(LINEAR_FIELDS, map(float, v)))) for v in rng.uniform(0.01, 1.0, (25, 6))]
        table = path_costs_many(models, plan)
        exits = normalised_exit_costs_many(models, plan)
        for model, row, chain in zip(models, table, exits):
            for p, path in enumerate(enumerate_paths(plan)):
                for j in range(plan.num_layers):
                    if np.isnan(row[p, j]):
                        continue
                    units = model.route_units(path_stops(plan, path, j + 1), {})["total_units"]
                    assert row[p, j] == units / model.reference_cost(plan)
            assert np.array_equal(model.path_costs(plan), row, equal_nan=True)
            assert np.array_equal(model.normalised_exit_costs(plan), chain)


def test_a_cost_model_whose_reference_route_is_free_is_refused():
    from tiers import TierPlan

    free_cloud = CostModel(cloud_layer=0.0, mobile_to_cloud=0.0)
    with pytest.raises(CostModelError, match="costs 0 under this cost model"):
        free_cloud.path_costs(TierPlan(2, 4, 6))


def test_a_free_reference_route_is_refused_everywhere_and_named_for_the_final_tier():
    from tiers import TierPlan, normalised_exit_costs_many

    with pytest.raises(CostModelError, match="give cloud_layer"):
        normalised_exit_costs_many([CostModel(cloud_layer=0.0, mobile_to_cloud=0.0)], TierPlan(2, 4, 6))
    with pytest.raises(CostModelError, match="give cloud_layer"):
        CostModel(cloud_layer=0.0, mobile_to_cloud=0.0).path_costs(TierPlan(2, 4, 6), token_counts=np.array([5]), hidden_size=8)
    with pytest.raises(CostModelError, match="straight to edge.*give edge_layer \\(or mobile_to_edge\\)"):
        CostModel(edge_layer=0.0, mobile_to_edge=0.0).path_costs(TierPlan(2, 6, 6))
